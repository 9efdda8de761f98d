"""Per-sequence response log-probabilities without materialising the [B, T, V] float32 logits.

For a row of tokens x_0..x_{T-1} with hidden states h_t (after the final norm) and output embedding W [D, V],

    log p(x_{t+1} | x_<=t) = (h_t W)[x_{t+1}] - logsumexp_v (h_t W)[v],

and a sequence's score is  S = sum_t m_{t+1} log p(x_{t+1} | x_<=t)  with count N = sum_t m_{t+1}, where m marks
the tokens that are scored (response tokens: prompt and padding tokens have m = 0). DPO-style objectives
(Rafailov et al. 2023, eq. 7) and BFPO's margin h_theta (the official code sums, it does not average) take
log pi(y|x) = S. The vocabulary projection runs over chunks of C positions inside a ``lax.scan`` whose body is
rematerialised, so the forward and the backward pass each hold [B, C, V] float32 logits at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from runtime.sharding import constrain


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

    @jax.checkpoint
    def one_chunk(h_BxCxD, tgt_BxC, wt_BxC):
        logits = jnp.einsum("bcd,dv->bcv", h_BxCxD, w, preferred_element_type=jnp.float32)
        logits = constrain(logits, ("batch", "seq", "act_vocab"))
        # One-hot contraction rather than a gather: it stays local when the vocabulary is sharded.
        picked = jnp.sum(logits * jax.nn.one_hot(tgt_BxC, logits.shape[-1], dtype=jnp.float32), axis=-1)
        logp = picked - jax.nn.logsumexp(logits, axis=-1)
        return jnp.sum(logp * wt_BxC, axis=-1)

    def body(total_B, xs):
        return total_B + one_chunk(*xs), None

    weights = weights_BxT.astype(jnp.float32)
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
