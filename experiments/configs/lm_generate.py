"""Config of the chat-generation launcher."""

from __future__ import annotations

import dataclasses

from runtime.mesh import MeshConfig

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Give me three short tips for staying healthy.",
    "Write a haiku about the sea.",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMGenerateConfig:
    """Answers chat prompts with a local model: a Hugging Face directory, a GGUF file, or the bundled SmolLM2."""

    out_dir: str = "runs/lm_generate"
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
    param_dtype: str = "float32"
    mesh: MeshConfig = MeshConfig(data=1, fsdp=-1)

    def __post_init__(self):
        if self.hf_dir and self.gguf:
            raise ValueError("LMGenerateConfig: give hf_dir or gguf, not both")
        if not self.prompts:
            raise ValueError("LMGenerateConfig.prompts: at least one prompt is needed")
