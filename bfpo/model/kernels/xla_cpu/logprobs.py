"""Chunked picked log-probabilities of the head with a hand-written backward pass in XLA:CPU's product forms.

For one chunk of C positions with hidden states h [B, C, D], head W [D, V] (or its transpose, a tied embedding
used as stored) and weights w_c, the chunk's value is  sum_c w_c log softmax(h_c W)[x_c]  and, with
p = softmax(h W) and upstream gradient g_b,

    dlogits = g_b w_c (onehot(x_c) - p_c),    dh = dlogits W^T,    dW = h^T dlogits,

the gradient automatic differentiation gives; the backward pass recomputes the chunk's [B, C, V] logits rather
than keeping them, and each product has a form XLA:CPU runs natively (see ``dense``). The head is cast to the
compute dtype once for all chunks (``cast_head``), not once per chunk and again in the backward pass.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from bfpo.model.kernels.chunks import over_chunks
from bfpo.model.kernels.xla_cpu.dense import transposed
from runtime.sharding import constrain


def _logits(h_BxCxD: jax.Array, w: jax.Array, vocab_major: bool) -> jax.Array:
    b, c, d = h_BxCxD.shape
    # W [V, D] is read transposed, a form XLA:CPU runs natively (bfloat16 included).
    logits = jnp.dot(h_BxCxD.reshape(b * c, d), w.T if vocab_major else w, preferred_element_type=jnp.float32)
    return constrain(logits.reshape(b, c, -1), ("batch", "seq", "act_vocab"))


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def chunk_logprob_sums(h_BxCxD: jax.Array, w: jax.Array, targets_BxC: jax.Array, weights_BxC: jax.Array,
                       w_cast: jax.Array | None = None, vocab_major: bool = False) -> jax.Array:
    """sum_c weights_c log softmax(h_c W)[targets_c], [B] float32, for one chunk of C positions.

    W is [D, V], or with ``vocab_major`` its transpose [V, D] (a tied token embedding, used as stored). The
    backward pass recomputes the [B, C, V] logits instead of keeping them, and with p = softmax(h W) and upstream
    gradient g_b takes  dlogits = g_b w_c (onehot(targets_c) - p_c),  dh = dlogits W^T,  dW = h^T dlogits
    (vocab-major: dW^T = dlogits^T h), each product in a form XLA:CPU runs natively (see ``bfpo.model.dense``).
    ``w_cast`` (from ``cast_head``: W in h's dtype, no gradient, made once for all chunks) is what the products
    read when given; dW is accumulated and returned in W's own dtype. A vocabulary-major ``w_cast`` switches the
    chunk to vocabulary-major logits, logits^T = W h^T [V, B, C], whose products (W h^T, dW = dlogits^T h,
    dh = dlogits W) transpose only h and dlogits, never the whole embedding.
    """
    return _chunk_forward(h_BxCxD, w, targets_BxC, weights_BxC, w_cast, vocab_major)[0]


def cast_head(w: jax.Array, dtype) -> jax.Array | None:
    """W in ``dtype`` with no gradient through it, or None when W already has that dtype: the cast is made once
    per step rather than once per chunk and again in the backward pass."""
    return None if w.dtype == jnp.dtype(dtype) else jax.lax.stop_gradient(w.astype(dtype))


def _vocab_rows_forward(h, w_VxD, targets, weights):
    """The chunk's log-prob sums from vocabulary-major logits [V, B, C]."""
    b, c, d = h.shape
    logits = jnp.dot(w_VxD, transposed(h.reshape(b * c, d)), preferred_element_type=jnp.float32)
    logits = constrain(logits.reshape(-1, b, c), ("act_vocab", "batch", "seq"))
    onehot = jnp.arange(logits.shape[0])[:, None, None] == targets[None]
    lse = jax.nn.logsumexp(logits, axis=0)
    picked = jnp.sum(jnp.where(onehot, logits, 0.0), axis=0)
    return jnp.sum((picked - lse) * weights, axis=-1), (logits, onehot, lse, picked)


def _chunk_forward(h, w, targets, weights, w_cast, vocab_major):
    if w_cast is not None and vocab_major:
        total, (_, _, lse, _) = _vocab_rows_forward(h, w_cast, targets, weights)
        return total, (None, lse)
    logits = _logits(h, (w if w_cast is None else w_cast).astype(h.dtype), vocab_major)
    # One-hot contraction rather than a gather: it stays local when the vocabulary is sharded.
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.sum(logits * onehot, axis=-1)
    return jnp.sum((picked - lse) * weights, axis=-1), (logits, lse)


def _chunk_fwd(h, w, targets, weights, w_cast, vocab_major):
    total, (_, lse) = _chunk_forward(h, w, targets, weights, w_cast, vocab_major)
    # Residuals must be arrays, so W's dtype (that of dW) travels as an empty array of that dtype.
    return total, (h, w if w_cast is None else None, w_cast, targets, weights, lse, jnp.zeros((0,), w.dtype))


def _chunk_bwd(vocab_major, res, g_B):
    h, w, w_cast, targets, weights, lse, w_dtype_probe = res
    b, c, d = h.shape
    f32 = jnp.float32
    if w_cast is not None and vocab_major:
        return _vocab_rows_bwd(h, w_cast, targets, weights, w_dtype_probe.dtype, g_B)
    w = (w if w_cast is None else w_cast).astype(h.dtype)
    _, (logits, _) = _chunk_forward(h, w, targets, weights, None, vocab_major)
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=f32)
    scale = (g_B[:, None] * weights)[..., None]
    dlogits = (scale * (onehot - jnp.exp(logits - lse[..., None]))).astype(h.dtype).reshape(b * c, -1)
    h2 = h.reshape(b * c, d)
    # dh = dlogits W^T: W [V, D] as stored, or W [D, V] read transposed.
    dh = jax.lax.dot_general(dlogits, w, (((1,), (0 if vocab_major else 1,)), ((), ())), preferred_element_type=f32)
    if vocab_major:
        dw = jnp.dot(transposed(dlogits), h2, preferred_element_type=f32)
    else:
        dw = jnp.dot(transposed(h2), dlogits, preferred_element_type=f32)
    # The weights are data, but a caller may differentiate through them: d/dw_c = g (log p_c).
    dweights = g_B[:, None] * (jnp.sum(logits * onehot, axis=-1) - lse)
    return dh.astype(h.dtype).reshape(b, c, d), dw.astype(w_dtype_probe.dtype), None, dweights, None


def _vocab_rows_bwd(h, w_VxD, targets, weights, w_dtype, g_B):
    b, c, d = h.shape
    f32 = jnp.float32
    _, (logits, onehot, lse, picked) = _vocab_rows_forward(h, w_VxD, targets, weights)
    scale = (g_B[:, None] * weights)[None]
    dlogits = (scale * (onehot.astype(f32) - jnp.exp(logits - lse[None]))).astype(h.dtype).reshape(-1, b * c)
    dw = jnp.dot(dlogits, h.reshape(b * c, d), preferred_element_type=f32)
    dh = jnp.dot(transposed(dlogits), w_VxD, preferred_element_type=f32)
    dweights = g_B[:, None] * (picked - lse)
    return dh.astype(h.dtype).reshape(b, c, d), dw.astype(w_dtype), None, dweights, None


chunk_logprob_sums.defvjp(_chunk_fwd, _chunk_bwd)


def logprob_sums(h_BxTxD: jax.Array, w: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array, chunk: int,
                 vocab_major: bool) -> jax.Array:
    w_cast = cast_head(w, h_BxTxD.dtype)
    return over_chunks(lambda h, t, m: chunk_logprob_sums(h, w, t, m, w_cast, vocab_major),
                       h_BxTxD, targets_BxT, weights_BxT, chunk)
