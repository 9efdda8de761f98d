"""The frozen configuration of a Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) and its presets."""

from __future__ import annotations

import dataclasses
from typing import Literal

from bfpo.errors import ModelError
from bfpo.model.execution import ExecutionConfig

# The presets by name (``LlamaConfig.<name>()``): model shapes that planning and tests use without a checkpoint.
PRESETS = ("tiny", "smollm2_135m", "llama2_7b", "mistral_7b", "llama3_8b", "llama3_2_1b", "qwen2_0_5b")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """How rotary frequencies are rescaled for contexts longer than pretraining.

    * ``linear``: every inverse frequency divided by ``factor`` (position interpolation).
    * ``llama3``: wavelengths longer than ``original_max_position_embeddings / low_freq_factor`` are divided by
      ``factor``, those shorter than ``original_max_position_embeddings / high_freq_factor`` are kept, and the
      band between is interpolated linearly in ``original / wavelength``.
    * ``yarn``: NTK-by-parts interpolation between the extrapolated and interpolated frequencies with a ramp
      over the dimensions whose rotation count over the original context lies in [beta_slow, beta_fast], and
      cos/sin scaled by ``attention_factor`` (default 0.1 ln(factor) + 1).
    """

    kind: Literal["linear", "llama3", "yarn"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None

    def __post_init__(self):
        if self.kind not in ("linear", "llama3", "yarn"):
            raise ModelError(f"RopeScaling.kind={self.kind!r}: expected 'linear', 'llama3' or 'yarn'")
        if self.factor <= 0:
            raise ModelError(f"RopeScaling.factor={self.factor}: must be positive")
        if self.kind == "llama3":
            if self.original_max_position_embeddings is None:
                raise ModelError("RopeScaling.original_max_position_embeddings is required for kind='llama3'")
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                raise ModelError(
                    f"RopeScaling.low_freq_factor={self.low_freq_factor}, high_freq_factor={self.high_freq_factor}: "
                    "need 0 < low_freq_factor < high_freq_factor"
                )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """A pre-norm decoder: RMSNorm, rotary GQA attention, SwiGLU MLP, optional q/k/v bias and sliding window.

    Its own fields are the architecture, what a checkpoint's ``config.json`` or GGUF header says (and
    ``initializer_range``, the scale of a fresh initialisation); ``execution`` says how this process runs it
    (dtypes, remat, kernels: ``ExecutionConfig``), which no checkpoint reads or writes.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    initializer_range: float = 0.02
    execution: ExecutionConfig = ExecutionConfig()

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ModelError(f"LlamaConfig.{name}={getattr(self, name)}: must be at least 1")
        if self.num_heads % self.num_kv_heads:
            raise ModelError(
                f"LlamaConfig.num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ModelError(f"LlamaConfig.head_dim={self.head_dim}: rotary embeddings need an even head_dim")
        if self.rope_theta <= 0:
            raise ModelError(f"LlamaConfig.rope_theta={self.rope_theta}: must be positive")
        if self.rms_norm_eps <= 0:
            raise ModelError(f"LlamaConfig.rms_norm_eps={self.rms_norm_eps}: must be positive")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ModelError(f"LlamaConfig.sliding_window={self.sliding_window}: must be None or at least 1")
        if not isinstance(self.execution, ExecutionConfig):
            raise ModelError(f"LlamaConfig.execution={self.execution!r}: expected an ExecutionConfig")

    def with_execution(self, **changes) -> "LlamaConfig":
        """The same architecture run differently: ``changes`` replace fields of ``execution``."""
        return dataclasses.replace(self, execution=dataclasses.replace(self.execution, **changes))

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @property
    def num_params(self) -> int:
        d, f, e = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * e * (self.num_heads * 2 + self.num_kv_heads * 2)
        if self.attention_bias:
            attn += e * (self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * per_layer + d + head

    # --- presets -----------------------------------------------------------------------------------------

    @classmethod
    def tiny(cls, **overrides) -> "LlamaConfig":
        """Two layers, width 64, 8 query / 4 key-value heads, the byte tokenizer's vocabulary (264): every
        dimension divides the (8,1) and (2,4) test meshes."""
        base = dict(vocab_size=264, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=8,
                    num_kv_heads=4, head_dim=8, rope_theta=10_000.0, rms_norm_eps=1e-6,
                    max_position_embeddings=512, tie_word_embeddings=True)
        return cls(**{**base, **overrides})

    @classmethod
    def smollm2_135m(cls, **overrides) -> "LlamaConfig":
        """HuggingFaceTB/SmolLM2-135M(-Instruct): 30 layers, d=576, 9/3 heads, tied embeddings."""
        base = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                    num_kv_heads=3, head_dim=64, rope_theta=100_000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=8192, tie_word_embeddings=True)
        return cls(**{**base, **overrides})

    @classmethod
    def llama2_7b(cls, **overrides) -> "LlamaConfig":
        """meta-llama/Llama-2-7b-hf (and -chat-hf): 32 layers, d=4096, 32 heads with no grouping, 4096 positions."""
        base = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                    num_kv_heads=32, head_dim=128, rope_theta=10_000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=4096)
        return cls(**{**base, **overrides})

    @classmethod
    def mistral_7b(cls, **overrides) -> "LlamaConfig":
        """mistralai/Mistral-7B-v0.1 (and Zephyr-7b-beta): 32 layers, d=4096, 32/8 heads, window 4096."""
        base = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                    num_kv_heads=8, head_dim=128, rope_theta=10_000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=32768, sliding_window=4096)
        return cls(**{**base, **overrides})

    @classmethod
    def llama3_8b(cls, **overrides) -> "LlamaConfig":
        """meta-llama/Llama-3.1-8B: 32 layers, d=4096, 32/8 heads, llama3 rope scaling (factor 8 from 8192)."""
        base = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                    num_kv_heads=8, head_dim=128, rope_theta=500_000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=131072,
                    rope_scaling=RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                             original_max_position_embeddings=8192))
        return cls(**{**base, **overrides})

    @classmethod
    def llama3_2_1b(cls, **overrides) -> "LlamaConfig":
        """meta-llama/Llama-3.2-1B: 16 layers, d=2048, 32/8 heads of 64, tied embeddings, llama3 rope scaling
        (factor 32 from 8192)."""
        base = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                    num_kv_heads=8, head_dim=64, rope_theta=500_000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=131072, tie_word_embeddings=True,
                    rope_scaling=RopeScaling(kind="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                             original_max_position_embeddings=8192))
        return cls(**{**base, **overrides})

    @classmethod
    def qwen2_0_5b(cls, **overrides) -> "LlamaConfig":
        """Qwen/Qwen2.5-0.5B: 24 layers, d=896, 14/2 heads, q/k/v bias, tied embeddings, theta 1e6."""
        base = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                    num_kv_heads=2, head_dim=64, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                    max_position_embeddings=32768, tie_word_embeddings=True, attention_bias=True)
        return cls(**{**base, **overrides})
