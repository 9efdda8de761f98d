"""Grouped-query softmax attention with a hand-written backward pass.

With K key/value heads each shared by G query heads, for one (batch row, key/value head) and queries already
scaled by 1/sqrt(E) (Q [G T, E], keys K [S, E], values V [S, E], mask m [T, S], 0 where allowed, -inf where not):

    P = softmax_rows(Q K^T + m),        O = P V,

and for an upstream gradient dO the backward pass (Dao et al. 2022, FlashAttention, section 3.1 and appendix B.2)

    dP = dO V^T,   D = rowsum(dO * O) = rowsum(P * dP),   dS = P * (dP - D),
    dQ = dS K,     dK = dS^T Q,      dV = P^T dO.

What the hand-written backward saves over automatic differentiation is traffic over the [G T, S] score-sized
arrays, which dominate small models' attention on a CPU: D comes from the [G T, E] arrays, not from a pass over
P * dP, and dK and dV are computed transposed (dK^T = Q^T dS, dV^T = dO^T P), so that no [G T, S] array is ever
copied into transposed order, only the small [S, E] results. Scores and softmax run in float32; P is cast to the
compute dtype before it meets V, as in the forward pass of the reference implementations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from bfpo.model.kernels.xla_cpu.dense import permuted

NEG_INF = float(jnp.finfo(jnp.float32).min)


def _swap_last(a: jax.Array) -> jax.Array:
    """The last two axes exchanged, as a physical copy."""
    return permuted(a, tuple(range(a.ndim - 2)) + (a.ndim - 1, a.ndim - 2))


def _bmm(a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
    """Batched [*, M, K] x [*, K, N] over the leading axes, accumulated in float32."""
    n = a.ndim - 2
    dims = (((a.ndim - 1,), (n,)), (tuple(range(n)), tuple(range(n))))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32).astype(out_dtype)


@jax.custom_vjp
def attention_core(q_BxKxMxE: jax.Array, k_BxKxSxE: jax.Array, v_BxKxSxE: jax.Array,
                   allowed_BxKxMxS: jax.Array) -> jax.Array:
    """O [B, K, M, E] for pre-scaled queries (M = G T rows per key/value head) and a boolean mask that
    broadcasts to [B, K, M, S]. A row with no allowed key averages all values uniformly (no NaN)."""
    return _forward(q_BxKxMxE, k_BxKxSxE, v_BxKxSxE, allowed_BxKxMxS)[0]


def _forward(q, k, v, allowed):
    # No explicit transpose of K here: when decoding, K is the whole cache, and copying it per token costs more
    # than the product's own layout handling.
    scores = jnp.einsum("bkme,bkse->bkms", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(jnp.where(allowed, scores, NEG_INF), axis=-1).astype(v.dtype)
    return _bmm(probs, v, v.dtype), probs


def _fwd(q, k, v, allowed):
    out, probs = _forward(q, k, v, allowed)
    # Named so that the "save_attention_out" remat policy keeps what the backward pass reads of the forward.
    out, probs = checkpoint_name(out, "attention_out"), checkpoint_name(probs, "attention_out")
    return out, (q, k, v, probs, out, allowed)


def _bwd(res, d_out):
    q, k, v, probs, out, allowed = res
    d_out = d_out.astype(v.dtype)
    # dP = dO V^T reads V as stored: XLA:CPU runs the transposed-right form natively (see ``bfpo.model.dense``).
    d_probs = jnp.einsum("bkme,bkse->bkms", d_out, v, preferred_element_type=jnp.float32)
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    # Masked scores are constants (the fill value), so no gradient reaches them, even in a row that sees nothing.
    d_scores = jnp.where(allowed, probs.astype(jnp.float32) * (d_probs - row), 0.0).astype(q.dtype)
    d_q = _bmm(d_scores, k, q.dtype)
    d_k = _swap_last(_bmm(_swap_last(q), d_scores, k.dtype))
    d_v = _swap_last(_bmm(_swap_last(d_out), probs, v.dtype))
    return d_q, d_k, d_v, None


attention_core.defvjp(_fwd, _bwd)


def grouped_attention(q_BxTxHxE: jax.Array, k_BxSxKxE: jax.Array, v_BxSxKxE: jax.Array,
                      allowed_BxTxS: jax.Array, query_chunk: int | None = None, causal_blocks: int = 1) -> jax.Array:
    """Softmax attention with G = H / K query heads per key/value head; scores and softmax in float32.

    With ``query_chunk`` C < T the queries are processed C at a time in a rematerialised scan, so the scores
    held at once are [B, K, G, C, S] instead of [B, K, G, T, S], in the backward pass too (exact, not an
    approximation). With ``causal_blocks`` n > 1 (queries and keys on the same slots, T divisible by n) query
    block i meets only the first (i + 1) T / n keys. A query with no visible key (a padding row) gets a uniform
    average instead of NaN; its output is masked downstream.
    """
    b, t, h, e = q_BxTxHxE.shape
    if query_chunk is not None and t > query_chunk:
        pad = -t % query_chunk
        q = jnp.pad(q_BxTxHxE, ((0, 0), (0, pad), (0, 0), (0, 0)))
        allowed = jnp.pad(allowed_BxTxS, ((0, 0), (0, pad), (0, 0)))
        n = (t + pad) // query_chunk
        q_chunks = jnp.moveaxis(q.reshape(b, n, query_chunk, h, e), 1, 0)
        allowed_chunks = jnp.moveaxis(allowed.reshape(b, n, query_chunk, -1), 1, 0)
        one = jax.checkpoint(lambda qc, ac: grouped_attention(qc, k_BxSxKxE, v_BxSxKxE, ac))
        _, out = jax.lax.scan(lambda c, xs: (c, one(*xs)), None, (q_chunks, allowed_chunks))
        return jnp.moveaxis(out, 0, 1).reshape(b, t + pad, h, e)[:, :t]
    if causal_blocks > 1 and t == k_BxSxKxE.shape[1] and t % causal_blocks == 0:
        # Query slot i*C + c sees key slots <= i*C + c only, so block i needs the first (i + 1) C keys: a
        # triangle's worth of score products instead of the square. Exact for every query with a visible key.
        # Splits and joins rather than slices: their gradients are joins and slices, where the gradient of a
        # slice is a zero-padded copy that XLA:CPU sums pad by pad.
        c = t // causal_blocks
        qs = jnp.split(q_BxTxHxE, causal_blocks, axis=1)
        ks = jnp.split(k_BxSxKxE, causal_blocks, axis=1)
        vs = jnp.split(v_BxSxKxE, causal_blocks, axis=1)
        allowed = jnp.split(allowed_BxTxS, causal_blocks, axis=1)
        outs = [grouped_attention(qs[i], jnp.concatenate(ks[:i + 1], axis=1), jnp.concatenate(vs[:i + 1], axis=1),
                                  allowed[i][:, :, :(i + 1) * c])
                for i in range(causal_blocks)]
        return jnp.concatenate(outs, axis=1)
    kv = k_BxSxKxE.shape[2]
    g = h // kv
    s = k_BxSxKxE.shape[1]
    # (batch, kv head) lead every product; the G query heads of a kv head and the T queries form the M rows.
    q = (q_BxTxHxE * jnp.asarray(e ** -0.5, q_BxTxHxE.dtype)).reshape(b, t, kv, g, e)
    q = permuted(q, (0, 2, 3, 1, 4)).reshape(b, kv, g * t, e)
    k = permuted(k_BxSxKxE, (0, 2, 1, 3))
    v = permuted(v_BxSxKxE, (0, 2, 1, 3))
    allowed = jnp.broadcast_to(allowed_BxTxS[:, None, None], (b, 1, g, t, s)).reshape(b, 1, g * t, s)
    out = attention_core(q, k, v, allowed)
    return out.reshape(b, kv, g, t, e).transpose(0, 3, 1, 2, 4).reshape(b, t, h, e)
