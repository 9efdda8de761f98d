"""The preference trainer's optimizer: global-norm clipping, then AdamW on a warm-up + cosine schedule.

Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019), Algorithm 2 (AdamW), with the
learning rate at update t (counting from 0, W warm-up updates, T in all)

    lr_t = lr * t / W                                         for t < W,
    lr_t = lr * (1 + cos(pi * (t - W) / (T - W))) / 2         for W <= t <= T,

the Hugging Face ``cosine`` schedule with ``warmup_ratio`` that the official BFPO recipe uses (W = ceil(ratio T),
decay to 0). Gradients are clipped to global norm ``clip_norm`` first (Pascanu et al. 2013), as
``max_grad_norm`` does there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import optax

from bfpo.errors import BFPOError
from bfpo.objectives.checks import in_range, non_negative, positive


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """``clip_norm`` 0 disables clipping; ``schedule`` "cosine" (with ``warmup_ratio``) or "constant"."""

    learning_rate: float = 5e-7
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0

    def __post_init__(self):
        positive("OptimizerConfig", "learning_rate", self.learning_rate)
        if self.schedule not in ("cosine", "constant"):
            raise BFPOError(f"OptimizerConfig.schedule={self.schedule!r}: expected 'cosine' or 'constant'")
        in_range("OptimizerConfig", "warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_open=True)
        non_negative("OptimizerConfig", "weight_decay", self.weight_decay)
        in_range("OptimizerConfig", "b1", self.b1, 0.0, 1.0, high_open=True)
        in_range("OptimizerConfig", "b2", self.b2, 0.0, 1.0, high_open=True)
        positive("OptimizerConfig", "eps", self.eps)
        non_negative("OptimizerConfig", "clip_norm", self.clip_norm)


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    if total_steps < 1:
        raise BFPOError(f"total_steps={total_steps}: the schedule needs at least one step")
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.learning_rate)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    if warmup == 0:
        return optax.cosine_decay_schedule(cfg.learning_rate, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, max(total_steps, warmup + 1), 0.0)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    adamw = optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay)
    if cfg.clip_norm == 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
