"""The Hugging Face layout of Llama-family checkpoints: ``config.json`` <-> ``LlamaConfig``, and each of our
stacked parameters <-> its per-layer PyTorch tensors.

PyTorch ``nn.Linear`` stores W [out, in] and computes x W^T; our kernels are [*in, *out] with the head axes
split out (q: [D, H, E], o: [H, E, D]), so a kernel is the transpose of the PyTorch weight reshaped. Norm
scales, biases and the embedding table only change shape.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from bfpo.errors import ModelError
from bfpo.model.config import LlamaConfig, RopeScaling
from bfpo.model.execution import ExecutionConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
# Buffers some exporters save that carry nothing the model needs (recomputed from the config).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class TensorLayout:
    """One parameter of ours (``path``) and the PyTorch tensor(s) it comes from.

    ``hf_name`` has a ``{layer}`` field when the parameter is stacked over layers; ``in_rank`` is the number of
    leading input axes of a kernel (None for tensors that are not transposed); ``flat`` marks a tensor PyTorch
    stores as a vector (a bias [H * E] that we keep as [H, E]).
    """

    path: str
    hf_name: str
    shape: tuple[int, ...]  # our per-layer shape
    stacked: bool
    in_rank: int | None = None
    flat: bool = False

    @property
    def hf_shape(self) -> tuple[int, ...]:
        if self.in_rank is None:
            return (math.prod(self.shape),) if self.flat else self.shape
        return (math.prod(self.shape[self.in_rank:]), math.prod(self.shape[:self.in_rank]))

    def names(self, num_layers: int) -> list[str]:
        return [self.hf_name.format(layer=i) for i in range(num_layers)] if self.stacked else [self.hf_name]

    def to_ours(self, hf: np.ndarray) -> np.ndarray:
        """A view where possible (a transposed memory map stays lazy)."""
        return (hf.T if self.in_rank is not None else hf).reshape(self.shape)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        if self.in_rank is None:
            return ours.reshape(self.hf_shape)
        r = self.in_rank
        return ours.reshape(math.prod(self.shape[:r]), math.prod(self.shape[r:])).T


def tensor_layouts(cfg: LlamaConfig) -> list[TensorLayout]:
    d, f, h, k, e = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    layer = "model.layers.{layer}."
    out = [TensorLayout("embed_tokens/embedding", "model.embed_tokens.weight", (cfg.vocab_size, d), False)]
    out.append(TensorLayout("layers/input_layernorm/scale", layer + "input_layernorm.weight", (d,), True))
    for name, heads in (("q", h), ("k", k), ("v", k)):
        out.append(TensorLayout(f"layers/self_attn/{name}_proj/kernel", layer + f"self_attn.{name}_proj.weight",
                                (d, heads, e), True, in_rank=1))
        if cfg.attention_bias:
            out.append(TensorLayout(f"layers/self_attn/{name}_proj/bias", layer + f"self_attn.{name}_proj.bias",
                                    (heads, e), True, flat=True))
    out.append(TensorLayout("layers/self_attn/o_proj/kernel", layer + "self_attn.o_proj.weight", (h, e, d), True,
                            in_rank=2))
    out.append(TensorLayout("layers/post_attention_layernorm/scale", layer + "post_attention_layernorm.weight",
                            (d,), True))
    out.append(TensorLayout("layers/mlp/gate_proj/kernel", layer + "mlp.gate_proj.weight", (d, f), True, in_rank=1))
    out.append(TensorLayout("layers/mlp/up_proj/kernel", layer + "mlp.up_proj.weight", (d, f), True, in_rank=1))
    out.append(TensorLayout("layers/mlp/down_proj/kernel", layer + "mlp.down_proj.weight", (f, d), True, in_rank=1))
    out.append(TensorLayout("norm/scale", "model.norm.weight", (d,), False))
    if not cfg.tie_word_embeddings:
        out.append(TensorLayout("lm_head", "lm_head.weight", (d, cfg.vocab_size), False, in_rank=1))
    return out


def _rope_from_hf(raw: dict[str, Any], where: str) -> tuple[float, RopeScaling | None]:
    params = dict(raw.get("rope_parameters") or {})
    legacy = dict(raw.get("rope_scaling") or {})
    theta = params.get("rope_theta", raw.get("rope_theta", 10_000.0))
    spec = params if params.get("rope_type", params.get("type")) not in (None, "default") else legacy
    kind = spec.get("rope_type", spec.get("type", "default"))
    if kind in (None, "default"):
        return float(theta), None
    if kind not in ("linear", "llama3", "yarn"):
        raise ModelError(f"{where}: rope type {kind!r} is not supported; expected default, linear, llama3 or yarn")
    fields = {f.name for f in dataclasses.fields(RopeScaling)} - {"kind"}
    _refuse_unmodelled_rope(spec, fields, kind, where)
    kwargs = {key: spec[key] for key in fields if spec.get(key) is not None}
    return float(theta), RopeScaling(kind=kind, **kwargs)


# YaRN's ``truncate: true`` (rounding the ramp's ends to whole dimensions) is what ``bfpo.model.rope`` computes.
_MODELLED_DEFAULTS = {"truncate": True}


def _refuse_unmodelled_rope(spec: dict[str, Any], fields: set[str], kind: str, where: str) -> None:
    """A rope setting the model does not compute would load silently and give other logits: refuse it."""
    for key, value in spec.items():
        if key in fields or key in ("rope_type", "type", "rope_theta") or value is None:
            continue
        if key in _MODELLED_DEFAULTS and value == _MODELLED_DEFAULTS[key]:
            continue
        raise ModelError(f"{where}: rope scaling field {key!r} = {value!r} (rope type {kind!r}) is not modelled; "
                         f"the model computes {sorted(fields | set(_MODELLED_DEFAULTS))} only")


_REQUIRED_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim")


def _check_sizes(raw: dict[str, Any], where: str) -> None:
    """The architecture's sizes are positive integers (a "2" or 2.0 would build another model or fail later)."""
    for key in _REQUIRED_SIZES + _OPTIONAL_SIZES:
        if key not in raw or (key in _OPTIONAL_SIZES and raw[key] is None):
            if key in _REQUIRED_SIZES:
                raise ModelError(f"{where}: {key} is missing")
            continue
        value = raw[key]
        if type(value) is not int or value < 1:
            raise ModelError(f"{where}: {key}={value!r} must be a positive integer")


def config_from_hf(raw: dict[str, Any], where: str = "config.json",
                   execution: ExecutionConfig | None = None) -> LlamaConfig:
    """Our config from a Hugging Face ``config.json`` dict, run with ``execution`` (None: stored and computed in
    the checkpoint's own dtype, ``torch_dtype``, as transformers' ``torch_dtype="auto"`` loads it)."""
    if not isinstance(raw, dict):
        raise ModelError(f"{where}: expected a JSON object, got a {type(raw).__name__}")
    _check_sizes(raw, where)
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelError(f"{where}: model_type={model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if raw.get("hidden_act", "silu") != "silu":
        raise ModelError(f"{where}: hidden_act={raw['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
    if raw.get("mlp_bias"):
        raise ModelError(f"{where}: mlp_bias=true is not supported")
    if model_type != "qwen2" and raw.get("attention_bias"):
        # Llama's attention_bias also adds a bias to o_proj, which this model does not have.
        raise ModelError(f"{where}: attention_bias=true with model_type={model_type!r} is not supported")
    heads = raw["num_attention_heads"]
    theta, scaling = _rope_from_hf(raw, where)
    window = None
    if model_type == "mistral":
        window = raw.get("sliding_window")
    elif model_type == "qwen2" and raw.get("use_sliding_window"):
        if raw.get("max_window_layers", 0) not in (0,):
            raise ModelError(f"{where}: use_sliding_window with max_window_layers={raw.get('max_window_layers')} "
                             "mixes windowed and full layers, which is not supported")
        window = raw.get("sliding_window")
    dtype_name = {"bfloat16": "bfloat16", "float16": "float16"}.get(raw.get("dtype") or raw.get("torch_dtype"),
                                                                   "float32")
    fields = dict(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        max_position_embeddings=raw.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=model_type == "qwen2",
        sliding_window=window,
        execution=execution or ExecutionConfig(dtype=dtype_name, param_dtype=dtype_name),
    )
    try:
        return LlamaConfig(**fields)
    except ModelError as e:
        raise ModelError(f"{where}: {e}") from e


def config_to_hf(cfg: LlamaConfig) -> dict[str, Any]:
    """A ``config.json`` dict that transformers (v4 and v5) opens as the matching architecture."""
    if cfg.attention_bias:
        model_type, arch = "qwen2", "Qwen2ForCausalLM"
    elif cfg.sliding_window is not None:
        model_type, arch = "mistral", "MistralForCausalLM"
    else:
        model_type, arch = "llama", "LlamaForCausalLM"
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope.update(rope_type=s.kind, factor=s.factor)
        if s.kind == "llama3":
            rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                        original_max_position_embeddings=s.original_max_position_embeddings)
        elif s.kind == "yarn":
            rope.update(beta_fast=s.beta_fast, beta_slow=s.beta_slow)
            if s.original_max_position_embeddings is not None:
                rope["original_max_position_embeddings"] = s.original_max_position_embeddings
            if s.attention_factor is not None:
                rope["attention_factor"] = s.attention_factor
    out: dict[str, Any] = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope,
        "rope_scaling": None if cfg.rope_scaling is None else {k: v for k, v in rope.items() if k != "rope_theta"},
        "dtype": cfg.execution.param_dtype,
        "torch_dtype": cfg.execution.param_dtype,
    }
    if model_type == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    elif model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window
    else:
        out.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window,
                   max_window_layers=0)
    return out
