"""How a model runs, as opposed to what it is: dtypes, rematerialisation, layer scan, attention chunking and the
kernel family. None of it is read from or written to a checkpoint, and none of it changes the function the model
computes beyond rounding (``dtype``, ``param_dtype``) or the order of the same sums."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

from bfpo.errors import ModelError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_MODES = ("none", "full", "dots", "dots_saveable", "save_attention_out")
KERNEL_FAMILIES = ("auto", "reference", "xla_cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
    """The execution side of a ``LlamaConfig`` (its ``execution`` field).

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

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    param_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    remat: Literal["none", "full", "dots", "dots_saveable", "save_attention_out"] = "none"
    scan_layers: bool = True
    attention_query_chunk: int | None = None
    """Queries per attention chunk (None: all at once)."""
    causal_blocks: int = 1
    """Query blocks per full-sequence attention pass, each skipping its future keys (exact; 4 saves about a
    third of the score work, and on a CPU makes small models' steps about 25% faster)."""
    kernels: Literal["auto", "reference", "xla_cpu", "gpu", "tpu"] = "auto"
    """The model's kernels (``bfpo.model.kernels``): auto picks by the platform the step is compiled for."""
    attention_block: int = 512
    """Block length of the TPU's fused attention (a multiple of 128)."""

    def __post_init__(self):
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ModelError(f"ExecutionConfig.{name}={getattr(self, name)!r}: expected one of {sorted(DTYPES)}")
        if self.attention_query_chunk is not None and self.attention_query_chunk < 1:
            raise ModelError(f"ExecutionConfig.attention_query_chunk={self.attention_query_chunk}: must be None or "
                             ">= 1")
        if self.causal_blocks < 1:
            raise ModelError(f"ExecutionConfig.causal_blocks={self.causal_blocks}: must be at least 1")
        if self.kernels not in KERNEL_FAMILIES:
            raise ModelError(f"ExecutionConfig.kernels={self.kernels!r}: expected one of {', '.join(KERNEL_FAMILIES)}")
        if self.attention_block < 128 or self.attention_block % 128:
            raise ModelError(f"ExecutionConfig.attention_block={self.attention_block}: must be a multiple of 128")
        if self.remat not in REMAT_MODES:
            raise ModelError(f"ExecutionConfig.remat={self.remat!r}: expected one of {', '.join(REMAT_MODES)}")

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]
