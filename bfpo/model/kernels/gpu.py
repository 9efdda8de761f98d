"""GPU kernels: cuDNN flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``) for full-sequence
passes; the linear maps and the log-probs are the reference formulas, which XLA:GPU fuses and runs on cuBLAS.

cuDNN takes padding as per-row sequence lengths counted from the start of the row, with a causal mask over
them. A row here is [left padding | real tokens | right padding] (prompts left-padded, responses right-padded),
so each row is rotated to put its first real token at slot 0, attended with causal masking over its ``n`` real
tokens (query and key lengths n, a sliding window when the model has one), and rotated back. Queries outside the
real span see no key in the definition; their outputs are zero here (downstream they are padding). A row whose
real tokens are not one contiguous span cannot be expressed this way: its outputs are NaN, which the training
loop's non-finite guard reports, rather than a silently different attention. KV-cache decoding (queries and keys
on different slots) uses the reference kernel, and so does a shape cuDNN's fused kernel does not take
(float32 operands, a head dimension that is not a multiple of 8 or above 128).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bfpo.model.kernels import reference
from bfpo.model.kernels.mask import AttentionMask

dense = reference.dense
logprob_sums = reference.logprob_sums


def _rotate(x_BxTx: jax.Array, shift_B: jax.Array) -> jax.Array:
    """y[b, j] = x[b, (j + shift[b]) mod T]."""
    t = x_BxTx.shape[1]
    idx = (jnp.arange(t)[None, :] + shift_B[:, None]) % t
    return jnp.take_along_axis(x_BxTx, idx.reshape(idx.shape + (1,) * (x_BxTx.ndim - 2)), axis=1)


def attention(q_BxTxHxE: jax.Array, k_BxSxKxE: jax.Array, v_BxSxKxE: jax.Array, mask: AttentionMask, execution, *,
              implementation: str = "cudnn") -> jax.Array:
    e = q_BxTxHxE.shape[-1]
    fused = q_BxTxHxE.dtype in (jnp.bfloat16, jnp.float16) and e % 8 == 0 and e <= 128
    if not mask.self_attention or (implementation == "cudnn" and not fused):
        return reference.attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, mask, execution)
    valid = mask.valid
    t = valid.shape[1]
    n = jnp.sum(valid, axis=1, dtype=jnp.int32)
    start = jnp.where(n > 0, jnp.argmax(valid, axis=1), 0).astype(jnp.int32)
    last = t - 1 - jnp.argmax(valid[:, ::-1], axis=1).astype(jnp.int32)
    holes = (n > 0) & (last - start + 1 != n)
    q, k, v = (_rotate(a, start) for a in (q_BxTxHxE, k_BxSxKxE, v_BxSxKxE))
    lengths = jnp.maximum(n, 1)
    window = None if mask.window is None else (mask.window - 1, 0)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=lengths,
                                       key_value_seq_lengths=lengths, local_window_size=window,
                                       implementation=implementation)
    out = _rotate(out, -start)
    out = jnp.where(valid[:, :, None, None], out, jnp.zeros((), out.dtype))
    return jnp.where(holes[:, None, None, None], jnp.asarray(jnp.nan, out.dtype), out)
