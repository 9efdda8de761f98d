"""Vaccine (Huang et al., "Vaccine: Perturbation-aware Alignment for Large Language Models against Harmful
Fine-tuning Attack", NeurIPS 2024): an alignment-stage defence that trains the model to keep its alignment loss
low under the worst small perturbation of its hidden representations.

With e_l the output of layer l's attention block and L(w, eps) the alignment loss when eps_l is added to every
e_l, one step takes g_l = dL/de_l at eps = 0, the perturbation

    eps_l = rho g_l / (||g|| + 1e-7),      ||g|| = sqrt(sum_l ||g_l||^2)   (one norm over all layers),

and the update direction grad_w L(w, eps) at that fixed eps (the paper's min-max objective with its inner
maximisation solved to first order). Followed from the official code (git-disl/Vaccine, ``VaccineTrainer``):
the gradients taken at the attention modules' outputs, the one global norm and its 1e-7, and the step on the
perturbed forward's gradient. Two forward/backward passes per step; the first needs no weight gradients.

In the trainer (``vaccine_rule``) the perturbation is computed per micro-batch from its mean loss, and the update
direction is the count-weighted gradient at the perturbed forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from bfpo.objectives.checks import positive
from runtime.metrics import Metric
from runtime.step import GradFn, GradientRule, WeightedLoss
from runtime.train_state import merge_by_mask

OffsetLoss = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, dict[str, Metric]]]
"""``loss(params, batch, rng, offsets) -> (loss, metrics)``: a train-step loss with the attention offsets."""

NORM_EPS = 1e-7


@dataclass(frozen=True, kw_only=True)
class VaccineConfig:
    """``rho``: the norm of the perturbation over all layers together."""

    rho: float = 2.0

    def __post_init__(self):
        positive("VaccineConfig", "rho", self.rho)


def vaccine_gradient(loss_fn: Callable[[Any, jax.Array], jax.Array], params, offsets_shape: tuple[int, ...],
                     cfg: VaccineConfig) -> tuple[jax.Array, Any, dict[str, Metric]]:
    """(L(w, eps), grad_w L(w, eps), metrics) for ``loss_fn(params, offsets)``, offsets [L, B, T, D] added to
    the attention blocks' outputs (``LlamaForCausalLM(..., attention_offsets_LxBxTxD=offsets)``)."""
    zeros = jnp.zeros(offsets_shape, jnp.float32)
    clean, g = jax.value_and_grad(loss_fn, argnums=1)(params, zeros)
    norm = jnp.sqrt(jnp.sum(jnp.square(g)))
    eps = jax.lax.stop_gradient(cfg.rho * g / (norm + NORM_EPS))
    perturbed, grads = jax.value_and_grad(loss_fn)(params, eps)
    metrics = {"clean_loss": Metric.scalar(clean), "perturbed_loss": Metric.scalar(perturbed),
               "representation_grad_norm": Metric.scalar(norm)}
    return perturbed, grads, metrics


def vaccine_rule(loss_with_offsets: OffsetLoss, offsets_shape: Callable[[Any], tuple[int, ...]],
                 cfg: VaccineConfig) -> GradientRule:
    """The train step's gradient rule with Vaccine's direction. ``loss_with_offsets`` is the step's loss with the
    attention offsets as a fourth argument (zeros: the plain loss); ``offsets_shape(batch)`` their shape
    [layers, rows, tokens, hidden] for a micro-batch. The step's own loss is not evaluated separately: the
    perturbed forward is the one the update follows."""

    def rule(weighted_loss: WeightedLoss) -> GradFn:
        del weighted_loss

        def grad_fn(train, frozen, batch, rng):
            def mean_loss(offsets):
                return loss_with_offsets(merge_by_mask(train, frozen), batch, rng, offsets)[0]

            def weighted(t, offsets):
                value, metrics = loss_with_offsets(merge_by_mask(t, frozen), batch, rng, offsets)
                return value * jax.lax.stop_gradient(metrics["loss"].count), (value, metrics)

            clean, g = jax.value_and_grad(mean_loss)(jnp.zeros(offsets_shape(batch), jnp.float32))
            norm = jnp.sqrt(jnp.sum(jnp.square(g)))
            eps = jax.lax.stop_gradient(cfg.rho * g / (norm + NORM_EPS))
            grads, (perturbed, metrics) = jax.grad(weighted, has_aux=True)(train, eps)
            return grads, {**metrics, "clean_loss": Metric.scalar(clean), "perturbed_loss": Metric.scalar(perturbed),
                           "representation_grad_norm": Metric.scalar(norm)}

        return grad_fn

    return rule
