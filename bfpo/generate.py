"""Batched sampling from the causal LM with a KV cache.

Prompts are left-padded to a common bucket length P so that every row writes its next token into the same cache
slot; the cache holds P + N slots for N new tokens. After one prefill pass over the prompts, each step samples
x_{t+1} ~ softmax(z_t / temperature) restricted to the top-p nucleus (Holtzman et al. 2020: the smallest set
of most likely tokens whose probability reaches p), or takes argmax z_t when temperature = 0, and feeds it
back. A row stops after emitting any stop token; the loop ends when every row has stopped or N tokens exist.
The whole loop is one jitted function per (batch, prompt length, config), so a bucket compiles once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from bfpo.errors import DataError
from bfpo.model.llama import KVCache, LlamaForCausalLM, positions_from_mask
from runtime.sharding import constrain


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0
    """Written after a row has stopped."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise DataError(f"SamplingConfig.max_new_tokens={self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise DataError(f"SamplingConfig.temperature={self.temperature}: must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise DataError(f"SamplingConfig.top_p={self.top_p}: must be in (0, 1]")


@struct.dataclass
class Generation:
    tokens: jax.Array  # [B, N] generated ids, pad_id after a row's stop token
    lengths: jax.Array  # [B] tokens generated per row, the stop token included


def top_p_filter(logits_BxV: jax.Array, top_p: float) -> jax.Array:
    """Logits with every token outside the top-p nucleus set to -inf (the most likely token always stays)."""
    if top_p >= 1.0:
        return logits_BxV
    order = jnp.argsort(-logits_BxV, axis=-1)
    sorted_logits = jnp.take_along_axis(logits_BxV, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits_BxV.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits_BxV, -jnp.inf)


def sample_token(logits_BxV: jax.Array, rng: jax.Array, cfg: SamplingConfig) -> jax.Array:
    logits_BxV = logits_BxV.astype(jnp.float32)
    if cfg.temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits = top_p_filter(logits_BxV / cfg.temperature, cfg.top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate_tokens(graphdef: nnx.GraphDef, params: Any, prompt_BxP: jax.Array, mask_BxP: jax.Array, rng: jax.Array,
                    cfg: SamplingConfig) -> Generation:
    """The jittable loop: prefill, then at most ``cfg.max_new_tokens`` sampling steps (``generate`` runs it)."""
    model: LlamaForCausalLM = nnx.merge(graphdef, params)
    b, p = prompt_BxP.shape
    n = cfg.max_new_tokens
    cache = KVCache.empty(model.config, b, p + n)
    cache_axes = ("layers", "batch", "kv_seq", "act_kv_heads", None)
    cache = cache.replace(k=constrain(cache.k, cache_axes), v=constrain(cache.v, cache_axes))
    mask = mask_BxP.astype(bool)
    # Only the last prompt position's logits are sampled from: [B, V] rather than [B, P, V] float32.
    logits, cache = model.decode(prompt_BxP, mask, positions_from_mask(mask), cache, last_only=True)
    next_pos = jnp.sum(mask, axis=1).astype(jnp.int32)
    stops = jnp.asarray(cfg.stop_tokens or (-1,), jnp.int32)

    def cond(carry):
        i, _, _, done, *_ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, logits_BxV, cache, done, out, lengths, pos = carry
        token = sample_token(logits_BxV, jax.random.fold_in(rng, i), cfg)
        token = jnp.where(done, cfg.pad_id, token)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(token, stops)
        step_logits, cache = model.decode(token[:, None], jnp.ones((b, 1), bool), pos[:, None], cache)
        return i + 1, step_logits[:, 0], cache, done, out, lengths, pos + 1

    init = (jnp.zeros((), jnp.int32), logits[:, -1], cache, jnp.zeros((b,), bool),
            jnp.full((b, n), cfg.pad_id, jnp.int32), jnp.zeros((b,), jnp.int32), next_pos)
    _, _, _, _, out, lengths, _ = jax.lax.while_loop(cond, body, init)
    return Generation(tokens=out, lengths=lengths)


_generate_jit = jax.jit(generate_tokens, static_argnames=("graphdef", "cfg"))


def generate(model: LlamaForCausalLM, prompt_BxP: jax.Array, mask_BxP: jax.Array, cfg: SamplingConfig,
             rng: jax.Array | None = None) -> Generation:
    """Samples up to ``cfg.max_new_tokens`` tokens after each left-padded prompt (every row needs one real
    token). Compiles once per prompt shape and config."""
    mask = np.asarray(mask_BxP, bool)
    if mask.ndim != 2 or not mask[:, -1].all():
        raise DataError("generate: prompts must be left-padded, with a real token in the last column of every row")
    graphdef, params = nnx.split(model)
    rng = jax.random.key(0) if rng is None else rng
    return _generate_jit(graphdef, params, jnp.asarray(prompt_BxP, jnp.int32), jnp.asarray(mask), rng, cfg=cfg)


def bucket(length: int, minimum: int = 16) -> int:
    """The next power of two at least ``length`` (and ``minimum``): few shapes, so few compilations."""
    size = minimum
    while size < length:
        size *= 2
    return size


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None,
             rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [R, L], mask [R, L]) with each sequence right-aligned; extra rows hold a single pad token."""
    length = max(len(s) for s in sequences) if length is None else length
    rows = len(sequences) if rows is None else rows
    tokens = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), bool)
    mask[len(sequences):, -1] = True  # filler rows: one token so that every row has a query
    for i, seq in enumerate(sequences):
        if len(seq) > length:
            raise DataError(f"sequence {i} has {len(seq)} tokens, more than the bucket length {length}")
        if len(seq) == 0:
            raise DataError(f"sequence {i} is empty; a prompt needs at least one token")
        tokens[i, length - len(seq):] = seq
        mask[i, length - len(seq):] = True
    return tokens, mask


def generate_chat(model: LlamaForCausalLM, tokenizer, conversations: Sequence[Sequence[dict[str, str]]],
                  cfg: SamplingConfig, rng: jax.Array | None = None, *, batch_bucket: int = 1) -> list[str]:
    """Replies to each conversation, rendered with the tokenizer's chat template. Prompt lengths and the batch
    are padded to buckets (powers of two; the batch to a multiple of ``batch_bucket``)."""
    prompts = [tokenizer.encode_chat(c) for c in conversations]
    rows = -(-len(prompts) // batch_bucket) * batch_bucket
    tokens, mask = left_pad(prompts, tokenizer.pad_id, bucket(max(len(p) for p in prompts)), rows)
    stops = tuple(sorted(set(cfg.stop_tokens) | set(tokenizer.stop_ids)))
    cfg = dataclasses.replace(cfg, stop_tokens=stops, pad_id=tokenizer.pad_id)
    out = jax.device_get(generate(model, tokens, mask, cfg, rng))
    return [tokenizer.decode(out.tokens[i, :out.lengths[i]]) for i in range(len(prompts))]
