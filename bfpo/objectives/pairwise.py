"""Paired objectives on the log-ratio margin h with a reference model: DPO, cDPO, robust DPO, IPO, hinge.

Symbols as in ``bfpo.objectives.scores``. Each loss is the mean over the masked pairs of the per-pair term.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from bfpo.objectives.checks import boolean, in_range, positive
from bfpo.objectives.scores import REFERENCE, PreferenceScores, log_ratios, masked_loss, require, reward_metrics
from runtime.metrics import Metric


@dataclass(frozen=True, kw_only=True)
class DPOConfig:
    beta: float = 0.1

    def __post_init__(self):
        positive("DPOConfig", "beta", self.beta)


@dataclass(frozen=True, kw_only=True)
class CDPOConfig:
    beta: float = 0.1
    label_smoothing: float = 0.1

    def __post_init__(self):
        positive("CDPOConfig", "beta", self.beta)
        in_range("CDPOConfig", "label_smoothing", self.label_smoothing, 0.0, 0.5, high_open=False)


@dataclass(frozen=True, kw_only=True)
class RobustDPOConfig:
    beta: float = 0.1
    label_smoothing: float = 0.1

    def __post_init__(self):
        positive("RobustDPOConfig", "beta", self.beta)
        # The correction divides by 1 - 2 eps.
        in_range("RobustDPOConfig", "label_smoothing", self.label_smoothing, 0.0, 0.5, high_open=True)


@dataclass(frozen=True, kw_only=True)
class IPOConfig:
    tau: float = 0.1
    average_log_probs: bool = False

    def __post_init__(self):
        positive("IPOConfig", "tau", self.tau)
        boolean("IPOConfig", "average_log_probs", self.average_log_probs)


@dataclass(frozen=True, kw_only=True)
class HingeConfig:
    beta: float = 0.1

    def __post_init__(self):
        positive("HingeConfig", "beta", self.beta)


def _with_rewards(per_pair, d_w, d_l, scale, scores):
    mask = scores.mask
    loss, metric = masked_loss(per_pair, mask)
    return loss, {"loss": metric, **reward_metrics(scale * d_w, scale * d_l, mask)}


def dpo_loss(scores: PreferenceScores, cfg: DPOConfig) -> tuple[jax.Array, dict[str, Metric]]:
    """DPO: l = -log sigma(beta h).

    Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
    (NeurIPS 2023), eq. 7. Implicit rewards beta Delta(y).
    """
    require(scores, REFERENCE, "dpo")
    d_w, d_l = log_ratios(scores)
    return _with_rewards(-jax.nn.log_sigmoid(cfg.beta * (d_w - d_l)), d_w, d_l, cfg.beta, scores)


def cdpo_loss(scores: PreferenceScores, cfg: CDPOConfig) -> tuple[jax.Array, dict[str, Metric]]:
    """Conservative DPO (label smoothing eps): l = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h).

    Mitchell, "A note on DPO with noisy preferences and relationship to IPO" (2023): the DPO loss under labels
    flipped with probability eps (the expectation of eq. 7 of Rafailov et al. over the flip). eps = 0 is DPO.
    """
    require(scores, REFERENCE, "cdpo")
    d_w, d_l = log_ratios(scores)
    z, eps = cfg.beta * (d_w - d_l), cfg.label_smoothing
    per_pair = -(1.0 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)
    return _with_rewards(per_pair, d_w, d_l, cfg.beta, scores)


def robust_dpo_loss(scores: PreferenceScores, cfg: RobustDPOConfig) -> tuple[jax.Array, dict[str, Metric]]:
    """Robust DPO: l = [-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps).

    Chowdhury et al., "Provably Robust DPO: Aligning Language Models with Noisy Feedback" (ICML 2024), their
    de-biased rDPO loss (equation number not confirmed here): an unbiased estimate of the clean-label DPO
    loss when labels flip with probability eps < 1/2.
    """
    require(scores, REFERENCE, "robust_dpo")
    d_w, d_l = log_ratios(scores)
    z, eps = cfg.beta * (d_w - d_l), cfg.label_smoothing
    per_pair = (-(1.0 - eps) * jax.nn.log_sigmoid(z) + eps * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * eps)
    return _with_rewards(per_pair, d_w, d_l, cfg.beta, scores)


def ipo_loss(scores: PreferenceScores, cfg: IPOConfig) -> tuple[jax.Array, dict[str, Metric]]:
    """IPO: l = (h - 1 / (2 tau))^2.

    Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences" (AISTATS 2024),
    eq. 17 (the empirical IPO loss). The paper does not fix the length convention: with ``average_log_probs``
    each Delta(y) is divided by |y| (as in current TRL, agreed with the IPO authors); without it Delta is
    summed (TRL 0.7 and BFPO's official code), the form BFPO reduces to on safe/safe pairs.
    """
    require(scores, REFERENCE, "ipo")
    d_w, d_l = log_ratios(scores, average=cfg.average_log_probs)
    per_pair = jnp.square(d_w - d_l - 1.0 / (2.0 * cfg.tau))
    return _with_rewards(per_pair, d_w, d_l, cfg.tau, scores)


def hinge_loss(scores: PreferenceScores, cfg: HingeConfig) -> tuple[jax.Array, dict[str, Metric]]:
    """Hinge (SLiC calibration with a reference): l = max(0, 1 - beta h).

    Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback" (2023), the rank-calibration
    loss max(0, delta - log pi(y_w|x) + log pi(y_l|x)) with delta = 1 / beta, applied to reference-normalised
    log-likelihoods as in the hinge loss of Liu et al., "Statistical Rejection Sampling Improves Preference
    Optimization" (ICLR 2024) (equation numbers not confirmed here). SLiC's SFT regulariser is not included.
    """
    require(scores, REFERENCE, "hinge")
    d_w, d_l = log_ratios(scores)
    per_pair = jax.nn.relu(1.0 - cfg.beta * (d_w - d_l))
    return _with_rewards(per_pair, d_w, d_l, cfg.beta, scores)
