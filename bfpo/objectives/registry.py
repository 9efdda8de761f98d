"""Every objective by name: its loss function, its config and what it needs from ``PreferenceScores``.

A trainer looks an objective up here once, outside jit, and calls ``objective.loss(scores, config)``; no loss
branches on a name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

from bfpo.errors import BFPOError
from bfpo.objectives.kto import KTOConfig, kto_loss
from bfpo.objectives.pairwise import (CDPOConfig, DPOConfig, HingeConfig, IPOConfig, RobustDPOConfig, cdpo_loss,
                                      dpo_loss, hinge_loss, ipo_loss, robust_dpo_loss)
from bfpo.objectives.reference_free import ORPOConfig, SimPOConfig, orpo_loss, simpo_loss
from bfpo.objectives.safety import BFPOConfig, SafeDPOConfig, bfpo_loss, safedpo_loss
from runtime.metrics import Metric

LossFn = Callable[[Any, Any], tuple[jax.Array, dict[str, Metric]]]


@dataclass(frozen=True)
class Objective:
    """``needs_reference``: reads reference log-probs; ``needs_mismatched``: reads log-probs of prompts paired
    with another pair's response (KTO); ``safety_aware``: reads the safety labels."""

    name: str
    loss: LossFn
    config: Any
    needs_reference: bool = True
    needs_mismatched: bool = False
    safety_aware: bool = False


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("bfpo", bfpo_loss, BFPOConfig(), safety_aware=True),
    Objective("bfpo_avg", bfpo_loss, BFPOConfig(average_log_probs=True), safety_aware=True),
    Objective("dpo", dpo_loss, DPOConfig()),
    Objective("cdpo", cdpo_loss, CDPOConfig()),
    Objective("robust_dpo", robust_dpo_loss, RobustDPOConfig()),
    Objective("ipo", ipo_loss, IPOConfig()),
    Objective("ipo_avg", ipo_loss, IPOConfig(average_log_probs=True)),
    Objective("hinge", hinge_loss, HingeConfig()),
    Objective("kto", kto_loss, KTOConfig(), needs_mismatched=True),
    Objective("orpo", orpo_loss, ORPOConfig(), needs_reference=False),
    Objective("simpo", simpo_loss, SimPOConfig(), needs_reference=False),
    Objective("safedpo", safedpo_loss, SafeDPOConfig(), safety_aware=True),
)}


def get_objective(name: str) -> Objective:
    """The registered objective called ``name``; ``Objective.config`` is its default config."""
    if name not in OBJECTIVES:
        raise BFPOError(f"objective={name!r}: expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
