"""KTO: Kahneman-Tversky Optimization on unpaired desirable / undesirable responses."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from bfpo.objectives.checks import positive
from bfpo.objectives.scores import REFERENCE, PreferenceScores, log_ratios, masked_loss, require, reward_metrics
from runtime.metrics import Metric

MISMATCHED = ("policy_mismatched", "reference_mismatched")


@dataclass(frozen=True, kw_only=True)
class KTOConfig:
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self):
        positive("KTOConfig", "beta", self.beta)
        positive("KTOConfig", "desirable_weight", self.desirable_weight)
        positive("KTOConfig", "undesirable_weight", self.undesirable_weight)


def kto_reference_point(scores: PreferenceScores) -> jax.Array:
    """z0 = max(0, mean_i [log pi(y'_i|x_i) - log pi_ref(y'_i|x_i)]), held constant (no gradient).

    y'_i is a response from another pair of the batch (the data pipeline shifts responses by one: pair i gets
    pair i-1's), so the mean estimates KL(pi || pi_ref) on responses unrelated to the prompt. The mean runs over
    the masked pairs of the whole (global) batch; under gradient accumulation each micro-batch has its own z0.
    """
    require(scores, MISMATCHED, "kto")
    ratio = jnp.asarray(scores.policy_mismatched, jnp.float32) - jnp.asarray(scores.reference_mismatched,
                                                                              jnp.float32)
    mask = scores.mask.astype(jnp.float32)
    mean = jnp.sum(ratio * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return jax.lax.stop_gradient(jnp.maximum(mean, 0.0))


def kto_loss(scores: PreferenceScores, cfg: KTOConfig) -> tuple[jax.Array, dict[str, Metric]]:
    """KTO with each pair split into a desirable (chosen) and an undesirable (rejected) example:

        desirable y:    lambda_D (1 - sigma(beta (Delta(y) - z0))),
        undesirable y:  lambda_U (1 - sigma(beta (z0 - Delta(y)))),

    averaged over the desirable and undesirable examples of the masked rows (2 n for n complete pairs; a row
    may hold only one side, see ``PreferenceScores.chosen_present``), with the reference point z0 of
    ``kto_reference_point``. Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization"
    (ICML 2024), the KTO loss of Sec. 4 with the biased batch estimate of z0 (arXiv 2402.01306; equation
    number not confirmed here). The constant lambda_y of the paper's form is dropped (it has no gradient).
    """
    require(scores, REFERENCE, "kto")
    z0 = kto_reference_point(scores)
    d_w, d_l = log_ratios(scores)
    desirable = cfg.desirable_weight * (1.0 - jax.nn.sigmoid(cfg.beta * (d_w - z0)))
    undesirable = cfg.undesirable_weight * (1.0 - jax.nn.sigmoid(cfg.beta * (z0 - d_l)))
    mask = scores.mask
    has_w = mask if scores.chosen_present is None else mask & jnp.asarray(scores.chosen_present).astype(bool)
    has_l = mask if scores.rejected_present is None else mask & jnp.asarray(scores.rejected_present).astype(bool)
    loss, metric = masked_loss(jnp.concatenate([desirable, undesirable]), jnp.concatenate([has_w, has_l]))
    paired = reward_metrics(cfg.beta * d_w, cfg.beta * d_l, has_w & has_l)
    r_w, r_l = jax.lax.stop_gradient(cfg.beta * d_w), jax.lax.stop_gradient(cfg.beta * d_l)
    metrics = {"loss": metric, **paired,
               "rewards/chosen": Metric.from_values(r_w, has_w), "rewards/rejected": Metric.from_values(r_l, has_l),
               "kto/reference_point": Metric.scalar(z0)}
    return loss, metrics
