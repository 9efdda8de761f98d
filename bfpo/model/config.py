"""The frozen configuration of a Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) and its presets."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

from bfpo.errors import ModelError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_MODES = ("none", "full", "dots", "dots_saveable", "save_attention_out")


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

    ``dtype`` is the compute dtype of matmuls (norms, softmax and log-probs always run in float32);
    ``param_dtype`` the storage dtype of the weights. ``remat`` recomputes each layer's activations in the
    backward pass ("full"), or keeps the linear maps' outputs ("dots"), every product's output ("dots_saveable")
    or the attention's output ("save_attention_out", so a fused attention kernel does not run again);
    ``scan_layers`` compiles one layer and scans it over the stacked weights, which keeps compile time
    independent of depth (decoding with a KV cache always scans); unrolled layers (False) compile longer and
    give the compiler the whole step to schedule (faster on a CPU);
    ``attention_query_chunk`` bounds the attention scores held at once to that many queries (long sequences);
    ``causal_blocks`` n > 1 splits a full-sequence pass's queries into n blocks, block i attending to the first
    (i + 1) T / n keys only (exact: the rest are in its future), which saves up to half the score products
    (both are options of the ``xla_cpu`` attention kernel). ``kernels`` picks the implementation of the linear
    maps, the attention and the head's log-probs (``bfpo.model.kernels``: ``auto`` by platform, ``reference``,
    ``xla_cpu``, ``gpu``, ``tpu``); ``attention_block`` is the fused TPU attention's block length.
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
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    param_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    remat: Literal["none", "full", "dots", "dots_saveable", "save_attention_out"] = "none"
    scan_layers: bool = True
    attention_query_chunk: int | None = None
    causal_blocks: int = 1
    kernels: Literal["auto", "reference", "xla_cpu", "gpu", "tpu"] = "auto"
    attention_block: int = 512
    initializer_range: float = 0.02

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
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ModelError(f"LlamaConfig.{name}={getattr(self, name)!r}: expected one of {sorted(DTYPES)}")
        if self.attention_query_chunk is not None and self.attention_query_chunk < 1:
            raise ModelError(f"LlamaConfig.attention_query_chunk={self.attention_query_chunk}: must be None or >= 1")
        if self.causal_blocks < 1:
            raise ModelError(f"LlamaConfig.causal_blocks={self.causal_blocks}: must be at least 1")
        if self.kernels not in ("auto", "reference", "xla_cpu", "gpu", "tpu"):
            raise ModelError(f"LlamaConfig.kernels={self.kernels!r}: expected 'auto', 'reference', 'xla_cpu', 'gpu' "
                             "or 'tpu'")
        if self.attention_block < 128 or self.attention_block % 128:
            raise ModelError(f"LlamaConfig.attention_block={self.attention_block}: must be a multiple of 128")
        if self.remat not in REMAT_MODES:
            raise ModelError(f"LlamaConfig.remat={self.remat!r}: expected one of {', '.join(REMAT_MODES)}")

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

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
    def mistral_7b(cls, **overrides) -> "LlamaConfig":
        """mistralai/Mistral-7B-v0.1 (and Zephyr-7b-beta): 32 layers, d=4096, 32/8 heads, window 4096."""
        base = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                    num_kv_heads=8, head_dim=128, rope_theta=10_000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=32768, sliding_window=4096, dtype="bfloat16", param_dtype="bfloat16")
        return cls(**{**base, **overrides})

    @classmethod
    def llama3_8b(cls, **overrides) -> "LlamaConfig":
        """meta-llama/Llama-3.1-8B: 32 layers, d=4096, 32/8 heads, llama3 rope scaling (factor 8 from 8192)."""
        base = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                    num_kv_heads=8, head_dim=128, rope_theta=500_000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=131072, dtype="bfloat16", param_dtype="bfloat16",
                    rope_scaling=RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                             original_max_position_embeddings=8192))
        return cls(**{**base, **overrides})

    @classmethod
    def llama3_2_1b(cls, **overrides) -> "LlamaConfig":
        """meta-llama/Llama-3.2-1B: 16 layers, d=2048, 32/8 heads of 64, tied embeddings, llama3 rope scaling
        (factor 32 from 8192)."""
        base = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                    num_kv_heads=8, head_dim=64, rope_theta=500_000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=131072, tie_word_embeddings=True, dtype="bfloat16",
                    param_dtype="bfloat16",
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
