"""The reference kernels: each operation written as its formula in plain ``jnp``, differentiated automatically.
Every other kernel is tested against these.

* ``dense``: y = x W over the last ``n`` axes of x and the first ``n`` of W, operands in the compute dtype,
  products accumulated in float32, y in the compute dtype.
* ``attention``: O_t = sum_s softmax_s(q_t . k_s / sqrt(E) + m_ts) v_s with grouped-query heads (G = H / K query
  heads per key/value head) and m from ``AttentionMask``; ``jax.nn.dot_product_attention(implementation="xla")``,
  logits and softmax in float32. A query that sees no key averages the values uniformly.
* ``logprob_sums``: sum_t w_t log softmax(h_t W)[x_t] per row, over chunks of C positions, each chunk's
  [B, C, V] float32 logits recomputed in the backward pass rather than kept (``jax.checkpoint``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bfpo.model.kernels.chunks import over_chunks
from bfpo.model.kernels.mask import AttentionMask
from runtime.sharding import constrain


def dense(x: jax.Array, w: jax.Array, n: int, dtype) -> jax.Array:
    # As one [M, K] x [K, N] product of the flattened operands: the form every backend's matmul units take
    # directly (a contraction over several minor axes lets the compiler pick padded layouts for them).
    lead, k_shape, out_shape = x.shape[:x.ndim - n], w.shape[:n], w.shape[n:]
    k = math.prod(k_shape)
    y = jnp.dot(x.reshape(-1, k).astype(dtype), w.reshape(k, -1).astype(dtype), preferred_element_type=jnp.float32)
    return y.astype(dtype).reshape(*lead, *out_shape)


def attention(q_BxTxHxE: jax.Array, k_BxSxKxE: jax.Array, v_BxSxKxE: jax.Array, mask: AttentionMask,
              execution) -> jax.Array:
    return jax.nn.dot_product_attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, mask=mask.allowed()[:, None],
                                        implementation="xla")


def _chunk_sums(h_BxCxD, w, targets_BxC, weights_BxC, vocab_major: bool):
    spec = "bcd,vd->bcv" if vocab_major else "bcd,dv->bcv"
    logits = jnp.einsum(spec, h_BxCxD, w.astype(h_BxCxD.dtype), preferred_element_type=jnp.float32)
    logits = constrain(logits, ("batch", "seq", "act_vocab"))
    # One-hot contraction rather than a gather: it stays local when the vocabulary is sharded.
    picked = jnp.sum(jax.nn.one_hot(targets_BxC, logits.shape[-1], dtype=jnp.float32) * logits, axis=-1)
    return jnp.sum((picked - jax.nn.logsumexp(logits, axis=-1)) * weights_BxC, axis=-1)


def logprob_sums(h_BxTxD: jax.Array, w: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array, chunk: int,
                 vocab_major: bool) -> jax.Array:
    one = jax.checkpoint(lambda h, t, m: _chunk_sums(h, w, t, m, vocab_major))
    return over_chunks(one, h_BxTxD, targets_BxT, weights_BxT, chunk)
