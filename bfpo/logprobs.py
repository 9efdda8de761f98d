"""Per-sequence response log-probabilities without materialising the [B, T, V] float32 logits.

For a row of tokens x_0..x_{T-1} with hidden states h_t (after the final norm) and output embedding W [D, V],

    log p(x_{t+1} | x_<=t) = (h_t W)[x_{t+1}] - logsumexp_v (h_t W)[v],

and a sequence's score is  S = sum_t m_{t+1} log p(x_{t+1} | x_<=t)  with count N = sum_t m_{t+1}, where m marks
the tokens that are scored (response tokens: prompt and padding tokens have m = 0). DPO-style objectives
(Rafailov et al. 2023, eq. 7) and BFPO's margin h_theta (the official code sums, it does not average) take
log pi(y|x) = S. The vocabulary projection runs over chunks of C positions inside a ``lax.scan``; the backward pass
recomputes a chunk's logits, so the forward and the backward pass each hold [B, C, V] float32 logits at a time
(the model's kernels, ``bfpo.model.kernels``, implement the chunk).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bfpo.errors import DataError
from bfpo.model import kernels as kernels_lib
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import LlamaForCausalLM

# The two responses of a preference batch, and the fields of each side's rows.
SIDES = ("chosen", "rejected")
SIDE_FIELDS = ("tokens", "mask", "score_mask")


def chunked_logprob_sums(h_BxTxD: jax.Array, w: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                         chunk: int = 128, vocab_major: bool = False,
                         kernels: str = "auto") -> tuple[jax.Array, jax.Array]:
    """(sum_t weights_t log softmax(h_t W)[targets_t], sum_t weights_t), each [B], in float32.

    W is [D, V], or [V, D] with ``vocab_major`` (a tied token embedding). Position t of ``h`` predicts
    ``targets[t]``; the caller shifts. T is padded up to a multiple of ``chunk`` with zero-weight positions.
    ``kernels`` is the model's ``ExecutionConfig.kernels``.
    """
    total = kernels_lib.select(kernels).logprob_sums(h_BxTxD, w, targets_BxT, weights_BxT, chunk, vocab_major)
    return total, jnp.sum(weights_BxT.astype(jnp.float32), axis=-1)


def sequence_logprobs(model, tokens_BxT: jax.Array, mask_BxT: jax.Array, score_mask_BxT: jax.Array,
                      chunk: int = 128, attention_offsets_LxBxTxD: jax.Array | None = None
                      ) -> tuple[jax.Array, jax.Array]:
    """(S [B], N [B]): summed log-probs of the tokens where ``score_mask`` is set, and how many there are.

    ``mask`` marks real tokens (prompts may be left-padded and responses right-padded in the same row);
    ``score_mask`` marks the tokens to score, typically the response; it is intersected with ``mask``. Positions
    come from ``mask``, so the result does not depend on how much padding surrounds a row.
    ``attention_offsets_LxBxTxD``: added to each layer's attention output (``LlamaForCausalLM``).
    """
    h = model.hidden_states(tokens_BxT, mask_BxT, attention_offsets_LxBxTxD=attention_offsets_LxBxTxD)
    weights = (score_mask_BxT.astype(bool) & mask_BxT.astype(bool))[:, 1:]
    w, vocab_major = model.head_weight()
    return chunked_logprob_sums(h[:, :-1], w, tokens_BxT[:, 1:], weights, chunk, vocab_major,
                                model.config.execution.kernels)


def model_graphdef(model_cfg: LlamaConfig) -> nnx.GraphDef:
    """The structure of the model ``model_cfg`` describes, without arrays (merge it with a parameter state)."""
    return nnx.graphdef(nnx.eval_shape(lambda: LlamaForCausalLM(model_cfg, rngs=nnx.Rngs(0))))


def _side(stream: Mapping[str, Any], side: str, where: str) -> Mapping[str, Any]:
    if side not in stream:
        raise DataError(f"{where}: stream batch has no {side!r} side; keys are {sorted(stream)}")
    missing = [f for f in SIDE_FIELDS if f not in stream[side]]
    if missing:
        raise DataError(f"{where}/{side}: missing {missing}; expected {list(SIDE_FIELDS)}")
    return stream[side]


def concatenated_rows(stream: Mapping[str, Any], sides: tuple[str, ...], where: str = "batch") -> dict:
    """{"tokens", "mask", "score_mask"} of the sides stacked along the batch: [len(sides) B, L]."""
    parts = [_side(stream, side, where) for side in sides]
    lengths = {p["tokens"].shape for p in parts}
    if len(lengths) != 1:
        raise DataError(f"{where}: sides {sides} have token shapes {sorted(lengths)}; they must share [B, L]")
    return {f: jnp.concatenate([jnp.asarray(p[f]) for p in parts], axis=0) for f in SIDE_FIELDS}


def row_logprobs(graphdef: nnx.GraphDef, params: Any, rows: Mapping[str, jax.Array],
                 chunk: int, attention_offsets_LxBxTxD: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(summed response log-probs, response token counts), each [rows], of the model ``params`` describe."""
    model = nnx.merge(graphdef, params)
    return sequence_logprobs(model, rows["tokens"], rows["mask"], rows["score_mask"], chunk,
                             attention_offsets_LxBxTxD)
