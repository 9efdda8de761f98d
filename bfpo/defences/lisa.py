"""Lisa (Huang et al., "Lisa: Lazy Safety Alignment for Large Language Models against Harmful Fine-tuning
Attack", NeurIPS 2024): a fine-tuning-stage defence that alternates between the provider's alignment data and
the user's data, each phase pulled towards where the other phase last stopped.

Steps run in cycles of K_a alignment steps then K_f user steps. Phase p minimises its own loss plus the proximal
term

    L_p(w) + rho / 2 ||w - w_other||^2,

where w_other is the trainable tree as it was when the other phase last ended (both anchors start at the initial
weights), and the term is on only once the step index exceeds ``warmup_fraction`` of the run's total steps.
Followed from the official code (git-disl/Lisa, ``LisaTrainer``): the switch at every K_a-th alignment step and
every K_f-th user step, the anchor of the phase that ends set to the weights at the switch, rho/2 times the squared
L2 distance over the trainable parameters, and "on" for step > 0.1 x the total steps.

The anchors are part of the train state (``LisaState``), so a resumed run continues exactly.

In the trainer the two parts live where they act: which data a step trains on is a data schedule
(``bfpo.data.ScheduledStreams`` with ``phase_name``), and the proximal term enters as its gradient
rho (w - w_other), added by ``proximal_gradient``, an optax transformation placed before the optimizer whose state
holds the anchors (checkpointed with the optimizer state, in the optimizer moments' dtype).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bfpo.errors import ConfigError
from bfpo.objectives.checks import in_range, non_negative

ALIGNMENT, FINETUNE = 0, 1


@dataclass(frozen=True, kw_only=True)
class LisaConfig:
    """``alignment_steps`` K_a and ``finetune_steps`` K_f per cycle, the proximal weight ``rho``, and the share
    of the run's steps before the proximal term switches on."""

    alignment_steps: int = 100
    finetune_steps: int = 900
    rho: float = 1.0
    warmup_fraction: float = 0.1

    def __post_init__(self):
        for name in ("alignment_steps", "finetune_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"LisaConfig.{name}={value!r}: expected an integer at least 0")
        if self.alignment_steps + self.finetune_steps == 0:
            raise ConfigError("LisaConfig: alignment_steps and finetune_steps are both 0; one phase must run")
        non_negative("LisaConfig", "rho", self.rho)
        in_range("LisaConfig", "warmup_fraction", self.warmup_fraction, 0.0, 1.0, high_open=False)


@dataclass(frozen=True)
class LisaState:
    """The two anchors: the trainable tree where the alignment phase and the user phase last ended."""

    alignment_anchor: Any
    finetune_anchor: Any


jax.tree_util.register_dataclass(LisaState, data_fields=["alignment_anchor", "finetune_anchor"], meta_fields=[])


def init_state(params) -> LisaState:
    """Both anchors at the initial weights."""
    return LisaState(alignment_anchor=params, finetune_anchor=params)


def phase(step, cfg: LisaConfig) -> jax.Array:
    """ALIGNMENT or FINETUNE for 0-based ``step`` (an int or a traced scalar)."""
    cycle = cfg.alignment_steps + cfg.finetune_steps
    return jnp.where(jnp.asarray(step) % cycle < cfg.alignment_steps, ALIGNMENT, FINETUNE)


PHASE_NAMES = ("alignment", "finetune")


def phase_name(step: int, cfg: LisaConfig) -> str:
    """The phase of 0-based ``step`` on the host: "alignment" or "finetune" (the data stream it trains on)."""
    return PHASE_NAMES[int(step % (cfg.alignment_steps + cfg.finetune_steps) >= cfg.alignment_steps)]


def proximal_on(step, cfg: LisaConfig, total_steps: int) -> jax.Array:
    return jnp.asarray(step) > cfg.warmup_fraction * total_steps


def record_switch(state: LisaState, params, step, cfg: LisaConfig) -> LisaState:
    """The state before step ``step`` runs: where the phase changes, the phase that just ended anchors at
    ``params`` (the weights it stopped at)."""
    now, before = phase(step, cfg), phase(jnp.asarray(step) - 1, cfg)
    switched = (jnp.asarray(step) > 0) & (now != before)
    ended_alignment = switched & (before == ALIGNMENT)
    ended_finetune = switched & (before == FINETUNE)

    def pick(flag, new, old):
        return jax.tree.map(lambda n, o: jnp.where(flag, n, o), new, old)

    return LisaState(alignment_anchor=pick(ended_alignment, params, state.alignment_anchor),
                     finetune_anchor=pick(ended_finetune, params, state.finetune_anchor))


def proximal_term(params, anchor, rho: float) -> jax.Array:
    """rho / 2 ||params - anchor||^2 over every leaf (anchor constant)."""
    anchor = jax.lax.stop_gradient(anchor)
    sq = sum(jnp.sum(jnp.square(p.astype(jnp.float32) - a.astype(jnp.float32)))
             for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor)))
    return 0.5 * rho * sq


def lisa_objective(alignment_loss: Callable[[Any], jax.Array], finetune_loss: Callable[[Any], jax.Array], params,
                   state: LisaState, step, cfg: LisaConfig, total_steps: int) -> jax.Array:
    """The loss of step ``step`` given the state after ``record_switch``: the phase's own loss, plus the proximal
    term towards the other phase's anchor once it is on. Only the phase's own loss runs (a conditional)."""
    p = phase(step, cfg)
    own = jax.lax.cond(p == ALIGNMENT, alignment_loss, finetune_loss, params)
    anchor = jax.tree.map(lambda a, f: jnp.where(p == ALIGNMENT, f, a), state.alignment_anchor, state.finetune_anchor)
    return own + jnp.where(proximal_on(step, cfg, total_steps), proximal_term(params, anchor, cfg.rho), 0.0)


class ProximalState(NamedTuple):
    """``proximal_gradient``'s state: the steps taken and the anchors."""

    count: jax.Array
    anchors: LisaState


def proximal_gradient(cfg: LisaConfig, total_steps: int) -> optax.GradientTransformation:
    """Adds the proximal term's gradient rho (w - w_other) to the incoming gradient at step ``count`` once the term
    is on, w_other the anchor of the phase not running; before that, records the switch (``record_switch``) at
    the weights the step starts from. Chain it before the optimizer (and before any clipping), so that the
    optimizer sees the gradient of L_p + rho/2 ||w - w_other||^2, as in the official trainer."""

    def init(params):
        return ProximalState(count=jnp.zeros((), jnp.int32), anchors=init_state(params))

    def update(updates, state, params=None):
        if params is None:
            raise ConfigError("Lisa's proximal_gradient needs the parameters: call tx.update(grads, state, params)")
        step = state.count
        anchors = record_switch(state.anchors, params, step, cfg)
        align = phase(step, cfg) == ALIGNMENT
        on = proximal_on(step, cfg, total_steps)
        other = jax.tree.map(lambda a, f: jnp.where(align, f, a), anchors.alignment_anchor, anchors.finetune_anchor)
        updates = jax.tree.map(
            lambda u, w, a: u + jnp.where(on, cfg.rho * (w.astype(jnp.float32) - a.astype(jnp.float32)),
                                          0.0).astype(u.dtype), updates, params, other)
        return updates, ProximalState(count=step + 1, anchors=anchors)

    return optax.GradientTransformation(init, update)
