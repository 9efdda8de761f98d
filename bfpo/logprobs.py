"""Per-sequence response log-probabilities without materialising the [B, T, V] float32 logits.

For a row of tokens x_0..x_{T-1} with hidden states h_t (after the final norm) and output embedding W [D, V],

    log p(x_{t+1} | x_<=t) = (h_t W)[x_{t+1}] - logsumexp_v (h_t W)[v],

and a sequence's score is  S = sum_t m_{t+1} log p(x_{t+1} | x_<=t)  with count N = sum_t m_{t+1}, where m marks
the tokens that are scored (response tokens: prompt and padding tokens have m = 0). DPO-style objectives
(Rafailov et al. 2023, eq. 7) and BFPO's margin h_theta (the official code sums, it does not average) take
log pi(y|x) = S. The vocabulary projection runs over chunks of C positions inside a ``lax.scan``; the backward pass
recomputes a chunk's logits (``chunk_logprob_sums``), so the forward and the backward pass each hold [B, C, V]
float32 logits at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bfpo.model.dense import transposed
from runtime.sharding import constrain


def _logits(h_BxCxD: jax.Array, w_DxV: jax.Array) -> jax.Array:
    b, c, d = h_BxCxD.shape
    logits = jnp.dot(h_BxCxD.reshape(b * c, d), w_DxV, preferred_element_type=jnp.float32)
    return constrain(logits.reshape(b, c, -1), ("batch", "seq", "act_vocab"))


@jax.custom_vjp
def chunk_logprob_sums(h_BxCxD: jax.Array, w_DxV: jax.Array, targets_BxC: jax.Array,
                       weights_BxC: jax.Array) -> jax.Array:
    """sum_c weights_c log softmax(h_c W)[targets_c], [B] float32, for one chunk of C positions.

    The backward pass recomputes the [B, C, V] logits instead of keeping them, and with p = softmax(h W) and
    upstream gradient g_b takes  dlogits = g_b w_c (onehot(targets_c) - p_c),  dh = dlogits W^T,
    dW = h^T dlogits, each product in the row-major form (see ``bfpo.model.dense``).
    """
    return _chunk_forward(h_BxCxD, w_DxV, targets_BxC, weights_BxC)[0]


def _chunk_forward(h, w, targets, weights):
    logits = _logits(h, w)
    # One-hot contraction rather than a gather: it stays local when the vocabulary is sharded.
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.sum(logits * onehot, axis=-1)
    return jnp.sum((picked - lse) * weights, axis=-1), lse


def _chunk_fwd(h, w, targets, weights):
    total, lse = _chunk_forward(h, w, targets, weights)
    return total, (h, w, targets, weights, lse)


def _chunk_bwd(res, g_B):
    h, w, targets, weights, lse = res
    b, c, d = h.shape
    logits = _logits(h, w)
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
    scale = (g_B[:, None] * weights)[..., None]
    dlogits = (scale * (onehot - jnp.exp(logits - lse[..., None]))).astype(h.dtype).reshape(b * c, -1)
    dh = jnp.dot(dlogits, transposed(w), preferred_element_type=jnp.float32).astype(h.dtype).reshape(b, c, d)
    dw = jnp.dot(transposed(h.reshape(b * c, d)), dlogits, preferred_element_type=jnp.float32).astype(w.dtype)
    # The weights are data, but a caller may differentiate through them: d/dw_c = g (log p_c).
    dweights = g_B[:, None] * (jnp.sum(logits * onehot, axis=-1) - lse)
    return dh, dw, None, dweights


chunk_logprob_sums.defvjp(_chunk_fwd, _chunk_bwd)


def chunked_logprob_sums(h_BxTxD: jax.Array, w_DxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                         chunk: int = 128) -> tuple[jax.Array, jax.Array]:
    """(sum_t weights_t log softmax(h_t W)[targets_t], sum_t weights_t), each [B], in float32.

    Position t of ``h`` predicts ``targets[t]``; the caller shifts. T is padded up to a multiple of ``chunk``
    with zero-weight positions.
    """
    b, t, d = h_BxTxD.shape
    chunk = max(1, min(chunk, t))
    pad = -t % chunk
    if pad:
        h_BxTxD = jnp.pad(h_BxTxD, ((0, 0), (0, pad), (0, 0)))
        targets_BxT = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
        weights_BxT = jnp.pad(weights_BxT, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    to_chunks = lambda x: jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)  # noqa: E731
    w = w_DxV.astype(h_BxTxD.dtype)

    def body(total_B, xs):
        return total_B + chunk_logprob_sums(xs[0], w, xs[1], xs[2]), None

    weights = weights_BxT.astype(jnp.float32)
    if n == 1:  # one chunk: no loop to pay for
        return chunk_logprob_sums(h_BxTxD, w, targets_BxT, weights), jnp.sum(weights, axis=-1)
    total, _ = jax.lax.scan(body, jnp.zeros((b,), jnp.float32),
                            (to_chunks(h_BxTxD), to_chunks(targets_BxT), to_chunks(weights)))
    return total, jnp.sum(weights, axis=-1)


def sequence_logprobs(model, tokens_BxT: jax.Array, mask_BxT: jax.Array, score_mask_BxT: jax.Array,
                      chunk: int = 128) -> tuple[jax.Array, jax.Array]:
    """(S [B], N [B]): summed log-probs of the tokens where ``score_mask`` is set, and how many there are.

    ``mask`` marks real tokens (prompts may be left-padded and responses right-padded in the same row);
    ``score_mask`` marks the tokens to score, typically the response; it is intersected with ``mask``. Positions
    come from ``mask``, so the result does not depend on how much padding surrounds a row.
    """
    h = model.hidden_states(tokens_BxT, mask_BxT)
    weights = (score_mask_BxT.astype(bool) & mask_BxT.astype(bool))[:, 1:]
    return chunked_logprob_sums(h[:, :-1], model.output_embedding(), tokens_BxT[:, 1:], weights, chunk)
