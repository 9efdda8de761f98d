"""Successive gradient reconciliation (SGR): the gradient-distance regulariser between neighbouring modules.

Yang et al., "Towards Interpretable Deep Local Learning with Successive Gradient Reconciliation", ICML 2024.
With L_k the sum-reduced local loss of module k and h_{k-1} its (stop-gradient) input, the two gradients at the
boundary are

    g_in^(k)    = dL_k / dh_{k-1}        (through f_k and a_k; a function of theta_k, phi_k)
    g_out^(k-1) = dL_{k-1} / dh_{k-1}    (through a_{k-1} only; handed forward by module k-1 as a constant)

and module k >= 2 minimises (``placement="input_side"``)

    J_k = L_k / B + lambda * D(g_in^(k), sg[g_out^(k-1)]).

With ``placement="output_side"`` the term sits on module k-1 instead: D(g_out^(k-1), sg[g_in^(k)]) is added to
J_{k-1}. Gradients of *sum*-reduced losses make the per-example gradients, and so D (a mean over examples),
independent of the batch size.

Distances D(g, t) over examples i (each g_i, t_i flattened):
    sq_l2:  mean_i ||g_i - t_i||^2
    l2:     mean_i ||g_i - t_i||
    cosine: mean_i (1 - <g_i, t_i> / (||g_i|| ||t_i||))

Two exact ways to get dJ_k/dtheta for the regulariser:
* ``direct``: reverse over reverse, the gradient of a function that itself takes ``jax.grad`` w.r.t. h.
* ``jvp``: with u = sg[dD/dg] at g = g_in,  d/dtheta D(g_in(theta), t) = d/dtheta <g_in(theta), u>, and
  <dL/dh, u> is the directional derivative of L along u, a ``jax.jvp``; so the term's gradient is reverse
  over forward of one scalar, after an ordinary backward pass has produced g_in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from local_learning import network
from local_learning.errors import ConfigError
from local_learning.ordering import after

Distance = Callable[[jax.Array, jax.Array], jax.Array]

_TINY = 1e-30


def per_example(x):
    """[B, ...] -> float32 [B, F]: one row per example."""
    return x.reshape(x.shape[0], -1).astype(jnp.float32)


def _safe_norm(x_BxF):
    """||x|| with a zero (not NaN) derivative at x = 0."""
    sq = jnp.sum(jnp.square(x_BxF), axis=-1)
    positive = sq > _TINY
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def squared_l2(g, t):
    """mean_i ||g_i - t_i||^2."""
    return jnp.mean(jnp.sum(jnp.square(per_example(g) - per_example(t)), axis=-1))


def l2(g, t):
    """mean_i ||g_i - t_i||."""
    return jnp.mean(_safe_norm(per_example(g) - per_example(t)))


def cosine_similarity(g, t):
    """Per-example cosine <g_i, t_i> / (||g_i|| ||t_i||), 0 where either vector is 0."""
    g, t = per_example(g), per_example(t)
    denom = _safe_norm(g) * _safe_norm(t)
    return jnp.where(denom > 0, jnp.sum(g * t, axis=-1) / jnp.where(denom > 0, denom, 1.0), 0.0)


def cosine(g, t):
    """mean_i (1 - cos(g_i, t_i))."""
    return jnp.mean(1.0 - cosine_similarity(g, t))


DISTANCES: dict[str, Distance] = {"sq_l2": squared_l2, "l2": l2, "cosine": cosine}


def get_distance(name: str) -> Distance:
    if name not in DISTANCES:
        raise ConfigError(f"SGR distance {name!r}: expected one of {sorted(DISTANCES)}")
    return DISTANCES[name]


def input_gradient(scalar_fn: Callable[[Any, jax.Array], jax.Array], params, x) -> jax.Array:
    """d scalar_fn(params, x) / dx."""
    return jax.grad(scalar_fn, argnums=1)(params, x)


def term_direct(scalar_fn, params, x, target, distance: Distance) -> tuple[jax.Array, Any]:
    """(D(dF/dx, t), dD/dparams) by reverse over reverse; ``scalar_fn(params, x)`` is the sum-reduced loss F."""

    def term(p):
        return distance(input_gradient(scalar_fn, p, x), target)

    return jax.value_and_grad(term)(params)


def term_jvp(scalar_fn, params, x, g, target, distance: Distance, directional=None,
             first_pass: Any = ()) -> tuple[jax.Array, Any]:
    """(D(g, t), dD/dparams) by reverse over forward, given g = dF/dx at (params, x) from a previous pass.

    Exact: dD/dtheta = (dg/dtheta)^T u with u = dD/dg, and (dg/dtheta)^T u = d/dtheta <dF/dx, u>, where
    <dF/dx, u> = jvp of F along u in x. ``directional(params, x, u)`` may supply that jvp (e.g. computed
    block by block under gradient checkpointing, network.directional_loss); by default it is ``jax.jvp`` of F.
    ``first_pass`` holds the other results of the pass that produced g (e.g. its parameter gradients): the
    second pass waits for them too, so that pass's activations are dead before this one starts.
    """
    value, u = jax.value_and_grad(distance)(g, target)
    u = jax.lax.stop_gradient(u)
    # Make the second pass's input depend on u and on every other result of the first pass, so that it neither
    # starts before the first backward has finished nor shares its forward with the first pass (either would
    # keep both passes' activations alive). u alone is not enough: a scheduler may finish the chain to g first
    # and leave the first pass's weight gradients, and with them its activations, until after this pass.
    x = after(x, u, first_pass)

    u = u.astype(x.dtype)
    if directional is None:
        def directional(p, x, u):
            return jax.jvp(lambda xx: scalar_fn(p, xx), (x,), (u,))[1]

    return value, jax.grad(directional)(params, x, u)


SGR_IMPLS = ("jvp", "direct")
PLACEMENTS = ("input_side", "output_side")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReconcileConfig:
    weight: float = 0.0
    """lambda: the weight of the SGR term (0 turns it off)."""
    distance: str = "sq_l2"
    """D: ``sq_l2``, ``l2`` or ``cosine``."""
    impl: str = "jvp"
    """``jvp`` (reverse over forward) or ``direct`` (reverse over reverse); both exact."""
    placement: str = "input_side"
    """``input_side``: module k pulls g_in^(k) toward g_out^(k-1); ``output_side``: the reverse, on module k-1."""
    remat: bool = False
    """``jvp`` form only: run the term's reverse-over-forward pass block by block under gradient checkpointing,
    so that the module's peak memory is that of its plain backward pass (at the cost of recomputation)."""

    def __post_init__(self):
        if not self.weight >= 0:
            raise ConfigError(f"ReconcileConfig.weight={self.weight}: must be >= 0")
        if self.distance not in DISTANCES:
            raise ConfigError(f"ReconcileConfig.distance={self.distance!r}: expected one of {sorted(DISTANCES)}")
        if self.impl not in SGR_IMPLS:
            raise ConfigError(f"ReconcileConfig.impl={self.impl!r}: expected one of {SGR_IMPLS}")
        if self.remat and self.impl != "jvp":
            raise ConfigError("ReconcileConfig.remat=True needs impl='jvp'")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"ReconcileConfig.placement={self.placement!r}: expected one of {PLACEMENTS}")

    @property
    def active(self) -> bool:
        return self.weight > 0


def local_objectives(netdef: network.NetworkDef, cfg: ReconcileConfig, params: list, stats: list,
                     batch: dict) -> list[jax.Array]:
    """[J_1, ..., J_K] as functions of *all* modules' parameters, every module input and target behind
    ``stop_gradient`` (``input_side`` placement).

    A correctness reference: the gradient of sum_k J_k w.r.t. module k's parameters is module k's local
    gradient, and dJ_k/dtheta_j = 0 for j != k. Not a memory-faithful way to train: one ``jax.grad`` of the sum
    keeps every module's residuals alive.
    """
    labels = batch["label"]
    b = labels.shape[0]
    distance = get_distance(cfg.distance)
    h, target, out = batch["image"], None, []
    for k, gdef in enumerate(netdef.graphdefs):
        h_in = jax.lax.stop_gradient(h)
        probe = network.head_probe(gdef, params[k], stats[k], h_in)

        def loss_fn(p, x, z, gdef=gdef, k=k):
            return network.local_loss(gdef, p, stats[k], x, z, labels, train=True)

        (loss, aux), (g_in, g_out) = jax.value_and_grad(loss_fn, argnums=(1, 2), has_aux=True)(params[k], h_in, probe)
        objective = loss / b
        if cfg.active and target is not None and cfg.placement == "input_side":
            objective = objective + cfg.weight * distance(g_in, target)
        out.append(objective)
        h, target = aux.h_out, jax.lax.stop_gradient(g_out)
    return out
