"""Preference objectives as pure functions ``loss(scores, config) -> (loss, metrics)`` over one shared input,
``PreferenceScores`` (summed log-probs, token counts, safety labels, a pair mask), in one registry by name.

Metrics are ``runtime.metrics.Metric`` (sum, count) pairs; ``metrics["loss"]`` has ``loss == total / count`` as
``runtime.step.make_train_step`` expects.
"""

from bfpo.objectives.kto import KTOConfig, kto_loss, kto_reference_point
from bfpo.objectives.pairwise import (CDPOConfig, DPOConfig, HingeConfig, IPOConfig, RobustDPOConfig, cdpo_loss,
                                      dpo_loss, hinge_loss, ipo_loss, robust_dpo_loss)
from bfpo.objectives.reference_free import ORPOConfig, SimPOConfig, log_odds, orpo_loss, simpo_loss
from bfpo.objectives.registry import OBJECTIVES, Objective, get_objective
from bfpo.objectives.safety import BFPOConfig, SafeDPOConfig, bfpo_loss, safedpo_loss, safedpo_transform
from bfpo.objectives.scores import PreferenceScores
from bfpo.objectives.table import ObjectiveConfigs, describe, with_labeling

__all__ = [
    "OBJECTIVES", "Objective", "get_objective", "PreferenceScores", "ObjectiveConfigs", "describe", "with_labeling",
    "BFPOConfig", "bfpo_loss", "SafeDPOConfig", "safedpo_loss", "safedpo_transform",
    "DPOConfig", "dpo_loss", "CDPOConfig", "cdpo_loss", "RobustDPOConfig", "robust_dpo_loss",
    "IPOConfig", "ipo_loss", "HingeConfig", "hinge_loss", "KTOConfig", "kto_loss", "kto_reference_point",
    "ORPOConfig", "orpo_loss", "SimPOConfig", "simpo_loss", "log_odds",
]
