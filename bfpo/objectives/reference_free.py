"""Objectives without a reference model: ORPO and SimPO. Both use length-averaged log-probs."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from bfpo.objectives.checks import non_negative, positive
from bfpo.objectives.scores import PreferenceScores, length, masked_loss, reward_metrics
from runtime.metrics import Metric

# Keeps the average log-prob strictly below 0 so that log(1 - p) stays finite (p = 1 has infinite odds).
MAX_AVERAGE_LOGP = -1e-7


@dataclass(frozen=True, kw_only=True)
class ORPOConfig:
    lam: float = 0.1

    def __post_init__(self):
        positive("ORPOConfig", "lam", self.lam)


@dataclass(frozen=True, kw_only=True)
class SimPOConfig:
    beta: float = 2.0
    gamma: float = 1.0

    def __post_init__(self):
        positive("SimPOConfig", "beta", self.beta)
        non_negative("SimPOConfig", "gamma", self.gamma)


def average_logps(scores: PreferenceScores) -> tuple[jax.Array, jax.Array]:
    """(log pi(y_w|x) / |y_w|, log pi(y_l|x) / |y_l|): per-token averaged policy log-probs."""
    return (jnp.asarray(scores.policy_chosen, jnp.float32) / length(scores.chosen_tokens),
            jnp.asarray(scores.policy_rejected, jnp.float32) / length(scores.rejected_tokens))


def log_one_minus_exp(a: jax.Array) -> jax.Array:
    """log(1 - exp(a)) for a < 0, accurate at both ends (Maechler's split at -log 2)."""
    return jnp.where(a > -jnp.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def log_odds(average_logp: jax.Array) -> jax.Array:
    """log(p / (1 - p)) with log p the average log-prob, clipped to at most ``MAX_AVERAGE_LOGP``."""
    a = jnp.minimum(average_logp, MAX_AVERAGE_LOGP)
    return a - log_one_minus_exp(a)


def orpo_loss(scores: PreferenceScores, cfg: ORPOConfig) -> tuple[jax.Array, dict[str, Metric]]:
    """ORPO: l = -log pi(y_w|x) / |y_w|  -  lambda log sigma(log odds(y_w|x) - log odds(y_l|x)),

    odds(y|x) = P(y|x) / (1 - P(y|x)) with P(y|x) = exp(log pi(y|x) / |y|). No reference model.
    Hong et al., "ORPO: Monolithic Preference Optimization without Reference Model" (EMNLP 2024), eqs. 6-7
    (L_ORPO = L_SFT + lambda L_OR), with L_SFT the per-token averaged NLL of the chosen response. Rewards are
    lambda times the averaged log-probs.
    """
    a_w, a_l = average_logps(scores)
    ratio = log_odds(a_w) - log_odds(a_l)
    nll = -a_w
    per_pair = nll - cfg.lam * jax.nn.log_sigmoid(ratio)
    mask = scores.mask
    loss, metric = masked_loss(per_pair, mask)
    return loss, {"loss": metric, **reward_metrics(cfg.lam * a_w, cfg.lam * a_l, mask),
                  "orpo/nll": Metric.from_values(jax.lax.stop_gradient(nll), mask),
                  "orpo/log_odds_ratio": Metric.from_values(jax.lax.stop_gradient(ratio), mask)}


def simpo_loss(scores: PreferenceScores, cfg: SimPOConfig) -> tuple[jax.Array, dict[str, Metric]]:
    """SimPO: l = -log sigma( (beta / |y_w|) log pi(y_w|x) - (beta / |y_l|) log pi(y_l|x) - gamma ).

    Meng et al., "SimPO: Simple Preference Optimization with a Reference-Free Reward" (NeurIPS 2024), eq. 6.
    No reference model; the reward of a response is beta times its averaged log-prob. gamma is the target
    reward margin itself (TRL's ``simpo_gamma`` is gamma / beta).
    """
    a_w, a_l = average_logps(scores)
    r_w, r_l = cfg.beta * a_w, cfg.beta * a_l
    mask = scores.mask
    loss, metric = masked_loss(-jax.nn.log_sigmoid(r_w - r_l - cfg.gamma), mask)
    return loss, {"loss": metric, **reward_metrics(r_w, r_l, mask)}
