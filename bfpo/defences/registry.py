"""Every defence against harmful fine-tuning by name, beside ``bfpo.objectives``' registry: the stage it acts in,
where it enters the train step, its default config, its pure objective (what the tests check against an
independent computation) and the form the step takes.

A defence is not a preference loss over ``PreferenceScores``, so it has a table of its own. It enters the one
train step at one of four places (the step itself is unchanged):

* ``gradient rule``: a ``runtime.step`` gradient rule replaces the loss's gradient (Booster, Vaccine);
* ``loss``: a loss function of the step (RepNoise, on the LM's layer taps);
* ``optimizer transform``: an optax transformation chained before the optimizer, its state checkpointed with the
  optimizer's (Lisa's proximal gradient), with its data schedule from ``phase_name``;
* ``data transform``: what the batches hold (format-matched safety data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bfpo.data.format_matched import mix
from bfpo.defences.booster import BoosterConfig, booster_gradient, booster_rule
from bfpo.defences.lisa import LisaConfig, lisa_objective, proximal_gradient
from bfpo.defences.repnoise import RepNoiseConfig, repnoise_lm_loss, repnoise_loss
from bfpo.defences.vaccine import VaccineConfig, vaccine_gradient, vaccine_rule
from bfpo.errors import BFPOError

STAGES = ("alignment", "fine-tuning")


@dataclass(frozen=True)
class Defence:
    name: str
    stage: Literal["alignment", "fine-tuning"]
    enters: Literal["gradient rule", "loss", "optimizer transform", "data transform"]
    config: Any
    """The default config (the official code's defaults); None when the caller gives the one parameter."""
    objective: Callable
    """The pure definition: the update direction or the loss."""
    step_form: Callable
    """What the train step takes, built from the config."""
    source: str
    """Where the formulas come from."""


DEFENCES: dict[str, Defence] = {d.name: d for d in (
    Defence("booster", "alignment", "gradient rule", BoosterConfig(), booster_gradient, booster_rule,
            "git-disl/Booster, BoosterAlignmentTrainer"),
    Defence("vaccine", "alignment", "gradient rule", VaccineConfig(), vaccine_gradient, vaccine_rule,
            "git-disl/Vaccine, VaccineTrainer"),
    Defence("repnoise", "alignment", "loss", RepNoiseConfig(), repnoise_loss, repnoise_lm_loss,
            "domenicrosati/representation-noising, representation_noising/loss.py"),
    Defence("lisa", "fine-tuning", "optimizer transform", LisaConfig(), lisa_objective, proximal_gradient,
            "git-disl/Lisa, LisaTrainer"),
    Defence("format_matched", "fine-tuning", "data transform", None, mix, mix,
            "Eiras et al., ICLR 2025 (no official code)"),
)}


def get_defence(name: str) -> Defence:
    if name not in DEFENCES:
        raise BFPOError(f"defence={name!r}: expected one of {sorted(DEFENCES)}")
    return DEFENCES[name]


def defences_of(stage: str) -> tuple[str, ...]:
    """The registered defences of one stage, in registry order."""
    if stage not in STAGES:
        raise BFPOError(f"stage={stage!r}: expected one of {STAGES}")
    return tuple(name for name, d in DEFENCES.items() if d.stage == stage)
