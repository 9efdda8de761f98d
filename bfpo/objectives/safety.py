"""Safety-aware objectives that read the pairs' safety labels: BFPO and SafeDPO."""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from bfpo.errors import BFPOError
from bfpo.labeling import LabelingConfig, target_margin
from bfpo.objectives.checks import boolean, non_negative, positive
from bfpo.objectives.scores import (REFERENCE, PreferenceScores, log_ratios, masked_loss, require, reward_metrics,
                                    safety_metrics)
from runtime.metrics import Metric


@dataclass(frozen=True, kw_only=True)
class BFPOConfig:
    """``labeling`` holds B1, alpha and tau; ``average_log_probs`` divides each Delta by its response length
    (the paper and its official code sum)."""

    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    average_log_probs: bool = False

    def __post_init__(self):
        if not isinstance(self.labeling, LabelingConfig):
            raise BFPOError(f"BFPOConfig.labeling={self.labeling!r}: expected a LabelingConfig")
        boolean("BFPOConfig", "average_log_probs", self.average_log_probs)


@dataclass(frozen=True, kw_only=True)
class SafeDPOConfig:
    """``beta`` as in DPO; ``safety_margin`` is the extra margin Delta a safe response needs over an unsafe one."""

    beta: float = 0.1
    safety_margin: float = 1.0

    def __post_init__(self):
        positive("SafeDPOConfig", "beta", self.beta)
        non_negative("SafeDPOConfig", "safety_margin", self.safety_margin)


def bfpo_loss(scores: PreferenceScores, cfg: BFPOConfig) -> tuple[jax.Array, dict[str, Metric]]:
    """BFPO: l = (h - g(s_w, s_l) / tau)^2,  g(s_w, s_l) = B3 (B1 s_w - s_l) - alpha,  B3 = 1 / (B1 - 1).

    Zhang et al., "Bi-Factorial Preference Optimization: Balancing Safety-Helpfulness in Language Models"
    (ICLR 2025, arXiv 2408.15313): the supervised objective with the squared loss (the authors' README,
    ``assets/bfpo.png``, and ``src/alignment/trainer/bfpo.py``; the paper's equation number is not confirmed
    here). The pair is ordered by helpfulness, h is regressed onto g / tau of ``bfpo.labeling``, which is
    negative for unsafe-chosen pairs, so there the gradient pushes the more helpful response down. On safe/safe
    pairs g / tau = 1 / (2 tau): summed-log-prob IPO. h is regressed directly (not tau h onto g, which scales
    gradients by tau^2). Rewards are tau Delta(y).
    """
    require(scores, REFERENCE, "bfpo")
    d_w, d_l = log_ratios(scores, average=cfg.average_log_probs)
    h = d_w - d_l
    s_w, s_l = scores.safety
    target = target_margin(s_w, s_l, cfg.labeling)
    mask = scores.mask
    loss, metric = masked_loss(jnp.square(h - target), mask)
    return loss, {"loss": metric, **reward_metrics(cfg.labeling.tau * d_w, cfg.labeling.tau * d_l, mask),
                  **safety_metrics(h, jnp.sign(target), scores, mask)}


def safedpo_transform(chosen_safe: jax.Array, rejected_safe: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SafeDPO's data transform of a helpfulness-ordered pair, as arrays: (orientation, keep, rejected_unsafe).

    orientation = -1 swaps an unsafe-chosen / safe-rejected pair (the safe response becomes the preferred one),
    keep = 0 drops unsafe/unsafe pairs, and rejected_unsafe is the unsafe flag of the response that is rejected
    after the swap. Every kept pair then has a safe preferred response.
    """
    s_w = jnp.asarray(chosen_safe).astype(bool)
    s_l = jnp.asarray(rejected_safe).astype(bool)
    swap = ~s_w & s_l
    keep = s_w | s_l
    orientation = jnp.where(swap, -1.0, 1.0)
    rejected_unsafe = jnp.where(swap, ~s_w, ~s_l).astype(jnp.float32)
    return orientation, keep, rejected_unsafe


def safedpo_loss(scores: PreferenceScores, cfg: SafeDPOConfig) -> tuple[jax.Array, dict[str, Metric]]:
    """SafeDPO: after ``safedpo_transform``, l = -log sigma(beta h' - Delta (u_l' - u_w')) over the kept pairs,

    with h' = orientation * h the margin of the transformed pair and u' its unsafe flags (u_w' = 0 for every
    kept pair). Kim et al., "SafeDPO: A Simple Approach to Direct Preference Optimization with Enhanced
    Safety" (2025), the SafeDPO objective with its safety margin Delta (equation number not confirmed here).
    Rewards are beta Delta(y) in the transformed order; the safety metrics use the original order, with
    unsafe/unsafe pairs (no stated preference) left out of the accuracy.
    """
    require(scores, REFERENCE, "safedpo")
    d_w, d_l = log_ratios(scores)
    h = d_w - d_l
    s_w, s_l = scores.safety
    orientation, keep, rejected_unsafe = safedpo_transform(s_w, s_l)
    per_pair = -jax.nn.log_sigmoid(cfg.beta * orientation * h - cfg.safety_margin * rejected_unsafe)
    mask = scores.mask
    kept = mask & keep
    loss, metric = masked_loss(per_pair, kept)
    preferred = jnp.where(orientation > 0, d_w, d_l)
    other = jnp.where(orientation > 0, d_l, d_w)
    return loss, {"loss": metric, **reward_metrics(cfg.beta * preferred, cfg.beta * other, kept),
                  "safedpo/kept": Metric.from_values(keep.astype(jnp.float32), mask),
                  **safety_metrics(h, jnp.where(keep, orientation, 0.0), scores, mask)}
