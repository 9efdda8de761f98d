"""Kernels tuned for XLA:CPU: hand-written backward passes whose products take the forms XLA:CPU's (AMX,
bfloat16) kernels run natively, physical transposes where a strided operand would be read slowly or upcast,
exact causal query blocks, and query chunks that bound the [T, S] scores held at once. They are plain XLA, so
they run on any backend, but they are chosen for the CPU: on accelerators they block the fused attention paths.
"""

from __future__ import annotations

import jax

from bfpo.model.kernels.mask import AttentionMask
from bfpo.model.kernels.xla_cpu.attention import grouped_attention
from bfpo.model.kernels.xla_cpu.dense import dense
from bfpo.model.kernels.xla_cpu.logprobs import logprob_sums

__all__ = ["attention", "dense", "logprob_sums"]


def attention(q_BxTxHxE: jax.Array, k_BxSxKxE: jax.Array, v_BxSxKxE: jax.Array, mask: AttentionMask,
              execution) -> jax.Array:
    blocks = execution.causal_blocks if mask.self_attention else 1
    return grouped_attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, mask.allowed(), execution.attention_query_chunk,
                             blocks)
