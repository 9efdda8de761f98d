"""Config of the chat-generation launcher."""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Annotated

import tyro

from bfpo.errors import ConfigError
from bfpo.model.execution import ExecutionConfig
from experiments.run_dir import LaunchConfig

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Give me three short tips for staying healthy.",
    "Write a haiku about the sea.",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMGenerateConfig:
    """Answers chat prompts with a local model: a Hugging Face directory, a GGUF file, or the bundled SmolLM2."""

    hf_dir: str = ""
    """A local Hugging Face model directory (config.json, safetensors, tokenizer files)."""
    gguf: str = ""
    """A local GGUF file (weights, tokenizer and chat template); used when hf_dir is empty."""
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    max_new_tokens: int = 48
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    seed: int = 0
    execution: Annotated[ExecutionConfig, tyro.conf.arg(name="")] = ExecutionConfig()
    """How the model runs (``--param-dtype``, ``--dtype``, ``--kernels``, ...)."""
    run: LaunchConfig = LaunchConfig(out_dir="runs/lm_generate")
    """``--run.out-dir`` (replies.md, replies.jsonl, config.json) and ``--run.mesh.*``, as every launcher takes
    them."""

    @property
    def model_kind(self) -> str:
        return "hf" if self.hf_dir else "gguf" if self.gguf else "smollm2"

    def __post_init__(self):
        if self.hf_dir and self.gguf:
            raise ConfigError("LMGenerateConfig: give hf_dir or gguf, not both")
        if not self.prompts:
            raise ConfigError("LMGenerateConfig.prompts: at least one prompt is needed")


_OLD_FLAG = re.compile(r"^--(out-dir|out_dir|mesh\.)")  # --out-dir is upgraded by every launcher (cli)


def upgrade_flags(args: list[str]) -> list[str]:
    """``--out-dir`` and ``--mesh.*`` of earlier versions as ``--run.out-dir`` and ``--run.mesh.*``, with a
    deprecation line each."""
    out = []
    for arg in args:
        if _OLD_FLAG.match(arg):
            new = "--run." + arg[2:]
            print(f"warning: {arg.split('=')[0]} is deprecated: use {new.split('=')[0]}", file=sys.stderr, flush=True)
            arg = new
        out.append(arg)
    return out


# Presets of the planner (``python -m experiments.plan --launcher lm_generate --preset NAME``): the launcher's own
# default (the bundled SmolLM2 GGUF) and model shapes named by their ``LlamaConfig`` preset, stored in bfloat16.
PLAN_PRESETS = ("smollm2", "llama3_2_1b", "llama3_8b", "mistral_7b", "qwen2_0_5b")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMGeneratePlanConfig:
    """What planning a generation needs besides the launcher's config: the model's shape (when neither
    ``--hf-dir`` nor ``--gguf`` names a model) and the batch's, which the launcher takes from its prompts."""

    generate: Annotated[LMGenerateConfig, tyro.conf.arg(name="")] = LMGenerateConfig()
    architecture: str = ""
    """A ``LlamaConfig`` preset (llama3_2_1b, llama3_8b, mistral_7b, qwen2_0_5b); empty: the launcher's model."""
    batch: int = 0
    """Rows generated together (0: one per prompt, as the launcher runs)."""
    prompt_length: int = 256
    """The left-padded prompt bucket P (the KV cache holds P + max_new_tokens slots)."""

    def __post_init__(self):
        if self.batch < 0 or self.prompt_length < 1:
            raise ConfigError(f"LMGeneratePlanConfig: batch={self.batch} must be >= 0 and prompt_length="
                             f"{self.prompt_length} >= 1")

    @property
    def rows(self) -> int:
        return self.batch or len(self.generate.prompts)

    @classmethod
    def preset(cls, name: str) -> "LMGeneratePlanConfig":
        if name == "smollm2":
            return cls()
        bf16 = ExecutionConfig(dtype="bfloat16", param_dtype="bfloat16")
        return cls(architecture=name, generate=LMGenerateConfig(execution=bf16))
