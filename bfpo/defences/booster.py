"""Booster (Huang et al., "Booster: Tackling Harmful Fine-tuning for Large Language Models via Attenuating
Harmful Perturbation", ICLR 2025): an alignment-stage defence that simulates one harmful fine-tuning step and
minimises how much it lowers the harmful loss.

With f the alignment loss on a safe batch and h the LM loss on a harmful batch, the objective is
f(w) + lambda [h(w) - h(w - alpha grad h(w) / ||grad h(w)||)] (the paper's alignment objective), and the update
direction is

    g = grad f(w) + lambda [grad h(w) - grad h(w')],      w' = w - alpha grad h(w) / (||grad h(w)|| + 1e-7),

with ||.|| one global L2 norm over the trainable tree and w' treated as a constant point: the second harmful
gradient is taken at w', not differentiated through the normalised step (the paper's algorithm drops that
second-order term). Followed from the official code (git-disl/Booster, ``BoosterAlignmentTrainer.training_step``): the
1e-7 added to the norm, the step w - alpha g / norm, and the sum grad f + lambda grad h - lambda grad h(w').
Three forward/backward passes per step.

In the trainer (``booster_rule``) the direction replaces the gradient of the train step: f is the step's own
loss and h the harmful stream's loss on the same batch. Under gradient accumulation the attenuation term is
taken per micro-batch and weighted by the micro-batch's count, as the official trainer computes it per
``training_step`` call (one per micro-batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bfpo.objectives.checks import non_negative, positive
from runtime.metrics import Metric
from runtime.step import GradFn, GradientRule, LossFn, WeightedLoss
from runtime.train_state import merge_by_mask

NORM_EPS = 1e-7
"""Added to ||grad h(w)|| before dividing (the official code's constant)."""

ScalarFn = Callable[[Any], jax.Array]


@dataclass(frozen=True, kw_only=True)
class BoosterConfig:
    """``lam``: lambda, the weight of the harmful-perturbation attenuation; ``alpha``: the simulated step size."""

    lam: float = 5.0
    alpha: float = 0.1

    def __post_init__(self):
        non_negative("BoosterConfig", "lam", self.lam)
        positive("BoosterConfig", "alpha", self.alpha)


def attenuation(harmful_loss: ScalarFn, params, cfg: BoosterConfig) -> tuple[Any, dict[str, Metric]]:
    """(grad h(w) - grad h(w'), metrics): the bracket of the module docstring, w' the simulated harmful step.
    Metrics: the harmful loss before and after the simulated step, its reduction, and ||grad h(w)||."""
    h_w, g_h = jax.value_and_grad(harmful_loss)(params)
    norm = optax.global_norm(g_h)
    scale = cfg.alpha / (norm + NORM_EPS)
    perturbed = jax.lax.stop_gradient(jax.tree.map(lambda w, g: w - (scale * g).astype(w.dtype), params, g_h))
    h_perturbed, g_h_perturbed = jax.value_and_grad(harmful_loss)(perturbed)
    bracket = jax.tree.map(lambda b, c: b - c, g_h, g_h_perturbed)
    metrics = {"harmful_loss": Metric.scalar(h_w), "harmful_loss_after_step": Metric.scalar(h_perturbed),
               "harmful_loss_reduction": Metric.scalar(h_w - h_perturbed), "harmful_grad_norm": Metric.scalar(norm)}
    return bracket, metrics


def booster_gradient(alignment_loss: ScalarFn, harmful_loss: ScalarFn, params, cfg: BoosterConfig
                     ) -> tuple[jax.Array, Any, dict[str, Metric]]:
    """(f(w), g, metrics): g is Booster's update direction (module docstring) for the trainable tree ``params``.

    ``alignment_loss(params)`` and ``harmful_loss(params)`` are scalar losses closed over their own batches.
    Metrics: those of ``attenuation``.
    """
    bracket, metrics = attenuation(harmful_loss, params, cfg)
    f_w, g_f = jax.value_and_grad(alignment_loss)(params)
    grads = jax.tree.map(lambda a, b: a + cfg.lam * b, g_f, bracket)
    return f_w, grads, metrics


def booster_rule(harmful_loss: LossFn, cfg: BoosterConfig) -> GradientRule:
    """The train step's gradient rule (``runtime.step.make_train_step(..., gradient=)``) with Booster's direction:
    ``harmful_loss(params, batch, rng) -> (h, metrics)`` reads the harmful stream of the step's batch. The
    attenuation term is scaled by the micro-batch's count, like the count-weighted gradient of f beside it."""

    def rule(weighted_loss: WeightedLoss) -> GradFn:
        def grad_fn(train, frozen, batch, rng):
            g_f, metrics = jax.grad(weighted_loss, has_aux=True)(train, frozen, batch, rng)
            count = jax.lax.stop_gradient(metrics["loss"].count).astype(jnp.float32)
            bracket, extra = attenuation(lambda t: harmful_loss(merge_by_mask(t, frozen), batch, rng)[0], train, cfg)
            grads = jax.tree.map(lambda a, b: a + (count * cfg.lam * b).astype(a.dtype), g_f, bracket)
            return grads, {**metrics, **extra}

        return grad_fn

    return rule
