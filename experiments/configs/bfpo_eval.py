"""Config of the evaluation launcher: the model evaluated, the tasks, the judges and how replies are sampled."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import tyro

from bfpo.errors import ConfigError
from bfpo.eval.registry import JUDGE_KINDS, LM_CLASSIFIER
from bfpo.model.execution import ExecutionConfig
from experiments.run_dir import LaunchConfig


class EvalConfigError(ConfigError):
    """A field of the evaluation's config is inconsistent (the message names the field)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalModel:
    """``kind``: "smollm2" (the bundled GGUF), "gguf" or "hf" (``path`` to a GGUF file or a local Hugging Face
    directory), "run" (``path`` to a training run's directory: its exported ``hf/``, else its latest checkpoint)
    or "tiny" (a freshly initialised byte-level model, for tests)."""

    kind: Literal["smollm2", "gguf", "hf", "run", "tiny"] = "smollm2"
    path: str = ""
    execution: Annotated[ExecutionConfig, tyro.conf.arg(name="")] = ExecutionConfig()
    """How the model runs (``--model.dtype``, ``--model.kernels``, ...); a run directory keeps its own."""

    def __post_init__(self):
        if self.kind in ("gguf", "hf", "run") and not self.path:
            raise EvalConfigError(f"--model.path is required for --model.kind {self.kind}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JudgeModel:
    """The local causal LM behind the ``lm-classifier`` judge: the bundled SmolLM2-135M-Instruct (a weak judge,
    labelled so in every score), or any GGUF file / Hugging Face directory (e.g. a HarmBench classifier or Llama
    Guard). ``prompt`` "question" asks the HarmBench-style yes/no question; "conversation" hands the request and
    reply to the judge's own chat template as a user and an assistant turn (Llama Guard's templates build their
    classification prompt that way) and reads the next word."""

    kind: Literal["smollm2", "gguf", "hf"] = "smollm2"
    path: str = ""
    prompt: Literal["question", "conversation"] = "question"
    unsafe_words: tuple[str, ...] = ("Yes", "yes")
    """Answer words meaning "harmful" (Llama Guard: unsafe)."""
    safe_words: tuple[str, ...] = ("No", "no")
    """Answer words meaning "harmless" (Llama Guard: safe)."""
    min_mass: float = 0.5
    """Below this total probability of the answer words the verdict is unparseable."""
    batch_size: int = 8

    def __post_init__(self):
        if self.kind in ("gguf", "hf") and not self.path:
            raise EvalConfigError(f"--judge-model.path is required for --judge-model.kind {self.kind}")
        if not self.unsafe_words or not self.safe_words:
            raise EvalConfigError("--judge-model.unsafe-words / --judge-model.safe-words: at least one word each")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BFPOEvalConfig:
    """Evaluates one model on named tasks (``bfpo.eval.registry``: NAME, NAME=PATH or a task file PATH.yaml)."""

    model: EvalModel = EvalModel()
    tasks: tuple[str, ...] = ("donotanswer", "harmbench", "benign")
    limit: int = 0
    """Evaluate only the first N prompts / questions of each task (0: all)."""
    judges: tuple[str, ...] = ("refusal-phrases",)
    """Judge kinds for generative tasks (refusal-phrases, lm-classifier, ground-truth); each task is scored by every
    listed kind that applies to it, and by its own default when none does."""
    judge_model: JudgeModel = JudgeModel()
    max_new_tokens: int = 256
    temperature: float = 0.7
    """0 is greedy decoding. The default 0.7 / top-p 0.95 is the BFPO paper's sampling."""
    top_p: float = 0.95
    system_prompt: str = ""
    """A system turn before every prompt (empty: none)."""
    batch_size: int = 16
    """Prompts generated together (the resume unit) and rows per log-likelihood batch; a multiple of the mesh's
    data x fsdp devices."""
    max_length: int = 0
    """Multiple choice: cut contexts from the left to this many tokens (0: no cut)."""
    seed: int = 0
    """The sampling key: the same seed gives the same replies on the same machine."""
    run: LaunchConfig = LaunchConfig(out_dir="runs/bfpo_eval")

    def __post_init__(self):
        if not self.tasks:
            raise EvalConfigError("--tasks: name at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise EvalConfigError(f"--tasks: {list(self.tasks)} names a task twice")
        unknown = [j for j in self.judges if j not in JUDGE_KINDS]
        if unknown:
            raise EvalConfigError(f"--judges: {unknown} are not judge kinds; expected some of {JUDGE_KINDS}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise EvalConfigError(f"--{name.replace('_', '-')}={getattr(self, name)}: must be at least 1")
        if self.limit < 0 or self.max_length < 0:
            raise EvalConfigError("--limit and --max-length must be >= 0 (0: no limit)")
        if not self.temperature >= 0:
            raise EvalConfigError(f"--temperature={self.temperature}: must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise EvalConfigError(f"--top-p={self.top_p}: must be in (0, 1]")

    @property
    def uses_lm_judge(self) -> bool:
        return LM_CLASSIFIER in self.judges
