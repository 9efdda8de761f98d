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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from bfpo.objectives.checks import positive
from runtime.metrics import Metric

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
