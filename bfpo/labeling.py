"""BFPO's labeling function: binary safety labels of a helpfulness-ordered pair -> the target margin.

Zhang et al., "Bi-Factorial Preference Optimization: Balancing Safety-Helpfulness in Language Models"
(ICLR 2025, arXiv 2408.15313), the supervised objective of the authors' README (``assets/bfpo.png``) and
their trainer (``src/alignment/trainer/bfpo.py``). For a pair ordered by helpfulness, y_hw more helpful than
y_hl, with safety labels s_w = I_safe(y_hw), s_l = I_safe(y_hl) in {0, 1}:

    g(s_w, s_l) = B3 (B1 s_w - s_l) - alpha,    B3 = 1 / (B1 - 1),

and the log-ratio margin h is regressed onto g / tau. With the defaults B1 = 3, alpha = 1/2 the four pair
types get (in units of 1/tau)

    safe/safe +0.5 (exactly IPO's 1/(2 tau)),   safe/unsafe +1,
    unsafe/safe -1 (reversed),                  unsafe/unsafe -0.5 (reversed).

These are differences of one latent score per (helpfulness, safety) category,
g(s_w, s_l) = u(helpful, s_w) - u(unhelpful, s_l), which gives the paper's global ranking
helpful-safe > unhelpful-safe > unhelpful-unsafe > helpful-unsafe whenever 0 < alpha < 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from bfpo.errors import BFPOError

# Order of the pair types everywhere in the package: index = 2 * (1 - s_w) + (1 - s_l).
PAIR_TYPES = ("safe_safe", "safe_unsafe", "unsafe_safe", "unsafe_unsafe")
# The four (helpfulness, safety) categories of a single response.
CATEGORIES = ("helpful_safe", "unhelpful_safe", "unhelpful_unsafe", "helpful_unsafe")


@dataclass(frozen=True, kw_only=True)
class LabelingConfig:
    """Constants of the labeling function. ``tau`` is the paper's tau (the official code calls it beta)."""

    b1: float = 3.0
    alpha: float = 0.5
    tau: float = 0.01

    def __post_init__(self):
        if not (isinstance(self.b1, (int, float)) and math.isfinite(self.b1) and self.b1 > 1):
            raise BFPOError(f"LabelingConfig.b1={self.b1!r}: expected a finite number greater than 1 "
                            "(B3 = 1 / (b1 - 1) must be positive)")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)):
            raise BFPOError(f"LabelingConfig.alpha={self.alpha!r}: expected a finite number")
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau > 0):
            raise BFPOError(f"LabelingConfig.tau={self.tau!r}: expected a finite number greater than 0")

    @property
    def b3(self) -> float:
        return 1.0 / (self.b1 - 1.0)


def labeling_value(chosen_safe: jax.Array, rejected_safe: jax.Array, cfg: LabelingConfig) -> jax.Array:
    """g(s_w, s_l) = B3 (B1 s_w - s_l) - alpha, elementwise, in float32."""
    s_w = jnp.asarray(chosen_safe, jnp.float32)
    s_l = jnp.asarray(rejected_safe, jnp.float32)
    return cfg.b3 * (cfg.b1 * s_w - s_l) - cfg.alpha


def target_margin(chosen_safe: jax.Array, rejected_safe: jax.Array, cfg: LabelingConfig) -> jax.Array:
    """g(s_w, s_l) / tau: the value BFPO regresses the log-ratio margin h onto."""
    return labeling_value(chosen_safe, rejected_safe, cfg) / cfg.tau


def pair_type_index(chosen_safe: jax.Array, rejected_safe: jax.Array) -> jax.Array:
    """Index into ``PAIR_TYPES`` of each pair (int32)."""
    s_w = jnp.asarray(chosen_safe).astype(bool)
    s_l = jnp.asarray(rejected_safe).astype(bool)
    return (2 * (~s_w).astype(jnp.int32) + (~s_l).astype(jnp.int32))


def pair_type_values(cfg: LabelingConfig) -> dict[str, float]:
    """g of each pair type, i.e. its target margin in units of 1/tau."""
    b1, b3, alpha = cfg.b1, cfg.b3, cfg.alpha
    labels = {"safe_safe": (1, 1), "safe_unsafe": (1, 0), "unsafe_safe": (0, 1), "unsafe_unsafe": (0, 0)}
    return {name: b3 * (b1 * s_w - s_l) - alpha for name, (s_w, s_l) in labels.items()}


def category_scores(cfg: LabelingConfig) -> dict[str, float]:
    """The latent score u of each response category, with u(helpful_safe) = 0, such that every pair's target
    is g(s_w, s_l) = u(helpful, s_w) - u(unhelpful, s_l)."""
    # Solving the four pair equations: u(unhelpful, 1) = -g(1, 1), u(unhelpful, 0) = -g(1, 0),
    # u(helpful, 0) = g(0, 1) + u(unhelpful, 1); the fourth, g(0, 0), then holds because B3 (B1 - 1) = 1.
    g = pair_type_values(cfg)
    unhelpful_safe = -g["safe_safe"]
    return {
        "helpful_safe": 0.0,
        "unhelpful_safe": unhelpful_safe,
        "unhelpful_unsafe": -g["safe_unsafe"],
        "helpful_unsafe": g["unsafe_safe"] + unhelpful_safe,
    }


def global_ranking(cfg: LabelingConfig) -> tuple[str, ...]:
    """Response categories from most to least preferred under the labeling function."""
    scores = category_scores(cfg)
    return tuple(sorted(scores, key=lambda name: -scores[name]))
