"""A Llama-family causal LM in ``flax.nnx`` (Llama 2/3, Mistral, Qwen2, SmolLM2), stacked over layers.

One decoder layer (pre-norm, Touvron et al. 2023) maps the residual stream x [B, T, D] to

    a = x + Attn(RMSNorm(x)),        out = a + W_down (silu(W_gate n) * (W_up n)),   n = RMSNorm(a),

with RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019), rotary grouped-query attention
(Ainslie et al. 2023: K key/value heads each shared by G = H / K query heads)

    Attn(h)_t = sum_s softmax_s(q_t . k_s / sqrt(E) + m_ts) v_s,  m_ts = 0 if s may be seen from t else -inf,

where s may be seen from t when it is a real (non-padding) token, s <= t, and t - s < window for a
sliding-window model (Mistral). Qwen2 adds a bias to q, k and v. Logits are RMSNorm(x_L) W_out with W_out the
transposed embedding when the embeddings are tied.

The weights of all layers are stacked along a leading ``layers`` axis and applied by ``lax.scan`` (or a Python
loop over the same arrays), so compile time does not grow with depth and checkpoints do not depend on that
choice. Every parameter carries logical axis names (``runtime.sharding``); the parameter paths mirror the
Hugging Face names (``layers/mlp/down_proj/kernel``), so path regexes such as ``down_proj`` select the same
weights as in PyTorch code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.ad_checkpoint import checkpoint_name

from bfpo.errors import ModelError
from bfpo.model import kernels as kernels_lib
from bfpo.model.config import LlamaConfig
from bfpo.model.kernels import AttentionMask
from bfpo.model.rope import apply_rotary, rotary_tables
from runtime.sharding import constrain, logical

def _param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str, ...], dtype) -> nnx.Param:
    return nnx.Param(logical(init, *axes)(rngs.params(), shape, dtype))


class RMSNorm(nnx.Module):
    """Root-mean-square norm scale g [*(L,), D]."""

    def __init__(self, cfg: LlamaConfig, *, stacked: bool, rngs: nnx.Rngs):
        lead, lead_axes = ((cfg.num_layers,), ("layers",)) if stacked else ((), ())
        self.scale = _param(rngs, nnx.initializers.ones_init(), lead + (cfg.hidden_size,), lead_axes + ("norm",),
                            cfg.execution.weight_dtype)


class Projection(nnx.Module):
    """A stacked linear map: kernel [L, *in, *out] and an optional bias [L, *out]."""

    def __init__(self, cfg: LlamaConfig, shape: tuple[int, ...], axes: tuple[str, ...], *, out_rank: int,
                 bias: bool, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.initializer_range)
        self.kernel = _param(rngs, init, (cfg.num_layers,) + shape, ("layers",) + axes, cfg.execution.weight_dtype)
        self.bias = (
            _param(rngs, nnx.initializers.zeros_init(), (cfg.num_layers,) + shape[-out_rank:],
                   ("layers",) + axes[-out_rank:], cfg.execution.weight_dtype)
            if bias else None
        )


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, h, k, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        b = cfg.attention_bias
        self.q_proj = Projection(cfg, (d, h, e), ("embed", "heads", "head_dim"), out_rank=2, bias=b, rngs=rngs)
        self.k_proj = Projection(cfg, (d, k, e), ("embed", "kv_heads", "head_dim"), out_rank=2, bias=b, rngs=rngs)
        self.v_proj = Projection(cfg, (d, k, e), ("embed", "kv_heads", "head_dim"), out_rank=2, bias=b, rngs=rngs)
        self.o_proj = Projection(cfg, (h, e, d), ("heads", "head_dim", "embed"), out_rank=1, bias=False, rngs=rngs)


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Projection(cfg, (d, f), ("embed", "mlp"), out_rank=1, bias=False, rngs=rngs)
        self.up_proj = Projection(cfg, (d, f), ("embed", "mlp"), out_rank=1, bias=False, rngs=rngs)
        self.down_proj = Projection(cfg, (f, d), ("mlp", "embed"), out_rank=1, bias=False, rngs=rngs)


class DecoderLayers(nnx.Module):
    """The weights of all decoder layers, stacked along the leading ``layers`` axis."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg, stacked=True, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg, stacked=True, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def weights(self) -> dict[str, jax.Array | None]:
        """The stacked arrays as a flat dict (the scan's per-layer inputs)."""
        a, m = self.self_attn, self.mlp
        get = lambda p: None if p is None else p[...]  # noqa: E731
        return {
            "input_norm": self.input_layernorm.scale[...],
            "q": a.q_proj.kernel[...], "q_bias": get(a.q_proj.bias),
            "k": a.k_proj.kernel[...], "k_bias": get(a.k_proj.bias),
            "v": a.v_proj.kernel[...], "v_bias": get(a.v_proj.bias),
            "o": a.o_proj.kernel[...],
            "post_norm": self.post_attention_layernorm.scale[...],
            "gate": m.gate_proj.kernel[...], "up": m.up_proj.kernel[...], "down": m.down_proj.kernel[...],
        }


@struct.dataclass
class KVCache:
    """Keys and values of every layer at ``slots`` positions, and which slots hold real tokens.

    ``index`` is the next slot to write; all rows write at the same slot, which is why prompts are left-padded.
    """

    k: jax.Array  # [L, B, S, K, E]
    v: jax.Array  # [L, B, S, K, E]
    valid: jax.Array  # [B, S] bool
    index: jax.Array  # int32 scalar

    @classmethod
    def empty(cls, cfg: LlamaConfig, batch: int, slots: int) -> "KVCache":
        shape = (cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim)
        return cls(k=jnp.zeros(shape, cfg.execution.compute_dtype), v=jnp.zeros(shape, cfg.execution.compute_dtype),
                   valid=jnp.zeros((batch, slots), bool), index=jnp.zeros((), jnp.int32))


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) in float32, cast back to x's dtype, times the scale (the Hugging Face order),
    the product taken in the scale's dtype as PyTorch's type promotion does (float32 scale, bfloat16 compute:
    float32); the scale's gradient is then a float32 sum over the tokens."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (normed.astype(x.dtype) * scale.reshape((1,) * (x.ndim - 1) + scale.shape)).astype(x.dtype)


def decoder_layer(cfg: LlamaConfig, w: dict[str, jax.Array], x_BxTxD: jax.Array, cos: jax.Array, sin: jax.Array,
                  mask: AttentionMask, kv: tuple[jax.Array, jax.Array, jax.Array] | None, index: jax.Array | None,
                  attention_offset_BxTxD: jax.Array | None = None, with_mlp_output: bool = False):
    """One pre-norm layer. With the whole cache ``kv = (k, v, layer)`` (k, v [L, B, S, K, E]) it writes this
    step's keys and values at (layer, index) and attends over that layer's slots; returns the updated (k, v).
    ``attention_offset_BxTxD`` is added to the attention block's output (after o_proj, before the residual sum):
    the perturbation some defences train against; None adds nothing to the program. ``with_mlp_output``: also
    return the MLP block's output (before the residual sum) as a third value."""
    ex = cfg.execution
    dt = ex.compute_dtype
    ops = kernels_lib.select(ex.kernels)
    act = ("batch", "seq", "act_embed")
    h = rms_norm(x_BxTxD, w["input_norm"], cfg.rms_norm_eps)

    def project(name, heads_axis):
        y = ops.dense(h, w[name], 1, dt)
        if w[name + "_bias"] is not None:
            y = y + w[name + "_bias"].astype(dt)[None, None]
        return constrain(y, ("batch", "seq", heads_axis, None))

    q = apply_rotary(project("q", "act_heads"), cos, sin)
    k = apply_rotary(project("k", "act_kv_heads"), cos, sin)
    v = project("v", "act_kv_heads")
    if kv is not None:
        # Only the T new entries are written, into the cache carried through the layers (updated in place);
        # the layer's slots are then read for attention.
        k_all, v_all, layer = kv
        k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), (layer, 0, index, 0, 0))
        v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), (layer, 0, index, 0, 0))
        k, v = k_all[layer], v_all[layer]
    attn = checkpoint_name(ops.attention(q, k.astype(dt), v.astype(dt), mask, ex), "attention_out")
    attn_out = ops.dense(attn, w["o"], 2, dt)
    if attention_offset_BxTxD is not None:
        attn_out = attn_out + attention_offset_BxTxD.astype(attn_out.dtype)
    x = x_BxTxD + constrain(attn_out, act)
    h = rms_norm(x, w["post_norm"], cfg.rms_norm_eps)
    gate = constrain(ops.dense(h, w["gate"], 1, dt), ("batch", "seq", "act_mlp"))
    up = constrain(ops.dense(h, w["up"], 1, dt), ("batch", "seq", "act_mlp"))
    mlp_out = constrain(ops.dense(jax.nn.silu(gate) * up, w["down"], 1, dt), act)
    kv_out = None if kv is None else (k_all, v_all)
    if with_mlp_output:
        return x + mlp_out, kv_out, mlp_out
    return x + mlp_out, kv_out


# What each remat policy keeps of a layer's forward pass for the backward pass (the rest is recomputed).
REMAT_POLICIES = {
    "full": None,  # nothing: the layer is recomputed from its input
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # the linear maps' outputs
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # every product's output, attention's included
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def remat(fn, mode: str):
    """``fn`` under ``jax.checkpoint`` with the named policy ("none": no rematerialisation)."""
    if mode == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[mode])


class LlamaForCausalLM(nnx.Module):
    """The decoder with its token embedding, final norm and (untied) output projection."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        init = nnx.initializers.normal(cfg.initializer_range)
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size, cfg.hidden_size, embedding_init=logical(init, "vocab", "embed"),
            param_dtype=cfg.execution.weight_dtype, dtype=cfg.execution.compute_dtype, rngs=rngs,
        )
        self.layers = DecoderLayers(cfg, rngs=rngs)
        self.norm = RMSNorm(cfg, stacked=False, rngs=rngs)
        self.lm_head = (
            None if cfg.tie_word_embeddings
            else _param(rngs, init, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg.execution.weight_dtype)
        )

    def head_weight(self) -> tuple[jax.Array, bool]:
        """(W, vocab_major): the untied head [D, V], or the tied token embedding as stored, [V, D]."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...], True
        return self.lm_head[...], False

    def output_embedding(self) -> jax.Array:
        """W_out [D, V]: the untied head, or the transposed token embedding."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...].T
        return self.lm_head[...]

    def _embed(self, tokens_BxT: jax.Array) -> jax.Array:
        # Rows are gathered from the table in its own dtype and then cast: casting the whole [V, D] table first
        # (what ``nnx.Embed`` does) costs a pass over it per step.
        rows = jnp.take(self.embed_tokens.embedding[...], tokens_BxT, axis=0)
        return constrain(rows.astype(self.config.execution.compute_dtype), ("batch", "seq", "act_embed"))

    def backbone(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, mask: AttentionMask,
                 cache: KVCache | None = None, attention_offsets_LxBxTxD: jax.Array | None = None
                 ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states [B, T, D] (compute dtype) and the updated cache. ``attention_offsets_LxBxTxD``
        (full-sequence passes only): one additive offset per layer on its attention block's output."""
        cfg = self.config
        x = self._embed(tokens_BxT)
        cos, sin = rotary_tables(cfg, positions_BxT)
        weights = self.layers.weights()
        index = None if cache is None else cache.index

        if cache is not None and attention_offsets_LxBxTxD is not None:
            raise ModelError("attention offsets apply to full-sequence passes only, not to decoding with a cache")
        if cache is not None:
            # Decoding scans the layers with the whole cache in the carry, so each step writes its new entries
            # in place rather than rebuilding the stacked cache from per-layer outputs.
            def cached(carry, xs):
                x, k_all, v_all = carry
                w, layer = xs
                x, kv = decoder_layer(cfg, w, x, cos, sin, mask, (k_all, v_all, layer), index)
                return (x, *kv), None

            layers = jnp.arange(cfg.num_layers, dtype=jnp.int32)
            (x, k_all, v_all), _ = jax.lax.scan(cached, (x, cache.k, cache.v), (weights, layers))
            h = rms_norm(x, self.norm.scale[...], cfg.rms_norm_eps)
            t = tokens_BxT.shape[1]
            return h, KVCache(k=k_all, v=v_all, valid=cache.valid, index=cache.index + t)

        x, _ = self._full_sequence_layers(x, cos, sin, mask, weights, attention_offsets_LxBxTxD, taps=False)
        return rms_norm(x, self.norm.scale[...], cfg.rms_norm_eps), None

    def _full_sequence_layers(self, x, cos, sin, mask, weights, offsets, *, taps: bool):
        """The layers over a full sequence: (last layer's output, None), or with ``taps`` (last output,
        {"mlp": [L, B, T, D] each MLP block's output, "residual": [L, B, T, D] each layer's output})."""
        cfg = self.config

        def body(x, xs):
            w, offset = xs
            if taps:
                x, _, mlp = decoder_layer(cfg, w, x, cos, sin, mask, None, None, offset, with_mlp_output=True)
                return x, (mlp, x)
            return decoder_layer(cfg, w, x, cos, sin, mask, None, None, offset)[0], None

        body = remat(body, cfg.execution.remat)
        if offsets is not None and offsets.shape != (cfg.num_layers, *x.shape):
            raise ModelError(f"attention offsets of shape {offsets.shape}: expected (layers, batch, tokens, hidden) = "
                             f"{(cfg.num_layers, *x.shape)}")
        if cfg.execution.scan_layers:
            x, ys = jax.lax.scan(body, x, (weights, offsets))
        else:
            # Unstacking once (its transpose is one stack) rather than indexing layer by layer: the gradient of
            # L indexed slices is L zero-padded copies of the stack, summed.
            per_layer = {k: [None] * cfg.num_layers if a is None else list(jnp.unstack(a)) for k, a in weights.items()}
            per_offset = [None] * cfg.num_layers if offsets is None else list(jnp.unstack(offsets))
            outs = []
            for layer in range(cfg.num_layers):
                x, y = body(x, ({k: a[layer] for k, a in per_layer.items()}, per_offset[layer]))
                outs.append(y)
            ys = None if not taps else tuple(jnp.stack(parts) for parts in zip(*outs))
        return x, (None if not taps else {"mlp": ys[0], "residual": ys[1]})

    def layer_taps(self, tokens_BxT: jax.Array, mask_BxT: jax.Array | None = None) -> dict[str, jax.Array]:
        """A full-sequence pass that keeps every layer's intermediate values (what representation-level
        defences read): {"embeddings": [B, T, D] the layers' input, "mlp": [L, B, T, D] each MLP block's output
        before its residual sum, "residual": [L, B, T, D] each layer's output, "final": [B, T, D] the final-norm
        hidden states}. Positions as in ``hidden_states``."""
        cfg = self.config
        b, t = tokens_BxT.shape
        mask = jnp.ones((b, t), bool) if mask_BxT is None else mask_BxT.astype(bool)
        attend = AttentionMask.full_sequence(mask, cfg.sliding_window)
        x0 = self._embed(tokens_BxT)
        cos, sin = rotary_tables(cfg, positions_from_mask(mask))
        x, taps = self._full_sequence_layers(x0, cos, sin, attend, self.layers.weights(), None, taps=True)
        return {"embeddings": x0, **taps, "final": rms_norm(x, self.norm.scale[...], cfg.rms_norm_eps)}

    def project(self, h_BxTxD: jax.Array) -> jax.Array:
        """Logits [B, T, V] in float32 from final hidden states."""
        w = self.output_embedding().astype(self.config.execution.compute_dtype)
        logits = jnp.einsum("btd,dv->btv", h_BxTxD, w, preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "seq", "act_vocab"))

    def hidden_states(self, tokens_BxT: jax.Array, mask_BxT: jax.Array | None = None,
                      positions_BxT: jax.Array | None = None, *,
                      attention_offsets_LxBxTxD: jax.Array | None = None) -> jax.Array:
        """Full-sequence final hidden states. Positions default to (number of real tokens before) - 1, so any
        amount of left or right padding gives the real tokens the same positions. ``attention_offsets_LxBxTxD``:
        see ``backbone``."""
        b, t = tokens_BxT.shape
        mask = jnp.ones((b, t), bool) if mask_BxT is None else mask_BxT.astype(bool)
        if positions_BxT is None:
            positions_BxT = positions_from_mask(mask)
        attend = AttentionMask.full_sequence(mask, self.config.sliding_window)
        return self.backbone(tokens_BxT, positions_BxT, attend,
                             attention_offsets_LxBxTxD=attention_offsets_LxBxTxD)[0]

    def __call__(self, tokens_BxT: jax.Array, mask_BxT: jax.Array | None = None,
                 positions_BxT: jax.Array | None = None, *,
                 attention_offsets_LxBxTxD: jax.Array | None = None) -> jax.Array:
        """Logits [B, T, V] (float32) of the next token at every position."""
        return self.project(self.hidden_states(tokens_BxT, mask_BxT, positions_BxT,
                                               attention_offsets_LxBxTxD=attention_offsets_LxBxTxD))

    def decode(self, tokens_BxT: jax.Array, mask_BxT: jax.Array, positions_BxT: jax.Array,
               cache: KVCache, *, last_only: bool = False) -> tuple[jax.Array, KVCache]:
        """Runs T new tokens against the cache (a prefill when T > 1), returning their logits and the cache;
        ``last_only``: the logits of the last position only, [B, 1, V] (a prefill needs no others)."""
        t = tokens_BxT.shape[1]
        valid = jax.lax.dynamic_update_slice(cache.valid, mask_BxT.astype(bool), (0, cache.index))
        cache = cache.replace(valid=valid)
        q_slots = cache.index + jnp.arange(t)
        attend = AttentionMask(q_slots=q_slots.astype(jnp.int32), k_slots=jnp.arange(valid.shape[1], dtype=jnp.int32),
                               valid=valid, window=self.config.sliding_window)
        h, cache = self.backbone(tokens_BxT, positions_BxT, attend, cache)
        return self.project(h[:, -1:] if last_only else h), cache


def positions_from_mask(mask_BxT: jax.Array) -> jax.Array:
    """Position of each token among the real tokens of its row (0 at the first real token)."""
    return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=1) - 1, 0)


def init_params(cfg: LlamaConfig, seed: int = 0) -> Any:
    """The ``nnx.Param`` state of a freshly initialised model (trace it under jit to build it sharded)."""
    return nnx.state(LlamaForCausalLM(cfg, rngs=nnx.Rngs(seed)), nnx.Param)


def model_from_params(cfg: LlamaConfig, params: Any) -> LlamaForCausalLM:
    """The model around a parameter state (e.g. ``TrainState.params``) without copying it."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, params)


def shard_model(model: LlamaForCausalLM, mesh: jax.sharding.Mesh, rules=None) -> LlamaForCausalLM:
    """The same model with every parameter moved to the sharding its logical axes give on ``mesh``."""
    from runtime.sharding import state_shardings

    graphdef, params = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(params, state_shardings(params, mesh, rules)))
