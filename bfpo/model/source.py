"""Where a model comes from: a fresh tiny model, the bundled SmolLM2 GGUF, a GGUF file or a local Hugging Face
directory. ``model_config`` gives its shape without reading weights (what planning needs); ``load_model`` loads
it with its tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
from flax import nnx

from bfpo.errors import ModelError
from bfpo.model.config import PRESETS, LlamaConfig
from bfpo.model.execution import ExecutionConfig
from bfpo.model.llama import init_params
from bfpo.model.gguf_file import GGUFFile
from bfpo.model.load_gguf import config_from_gguf, load_gguf, smollm2_gguf_path, tokenizer_from_gguf
from bfpo.model.load_hf import CONFIG_FILE, load_hf, read_config
from bfpo.tokenize import Tokenizer
from runtime import sharding as sharding_lib

MODEL_KINDS = ("tiny", "smollm2", "gguf", "hf")


def _check(kind: str, path: str, architecture: str) -> None:
    if kind not in MODEL_KINDS:
        raise ModelError(f"model kind {kind!r}: expected one of {', '.join(MODEL_KINDS)}")
    if kind in ("gguf", "hf") and not path and not architecture:
        raise ModelError(f"a model of kind {kind!r} needs its path")
    if architecture and architecture not in PRESETS:
        raise ModelError(f"architecture {architecture!r}: not a LlamaConfig preset; one of {', '.join(PRESETS)}")


def at_hand(kind: str, path: str) -> bool:
    """Whether the model's own description can be read here (a tiny model and the bundled GGUF always can)."""
    if kind == "gguf":
        return bool(path) and Path(path).is_file()
    if kind == "hf":
        return bool(path) and (Path(path) / CONFIG_FILE).is_file()
    return True


def model_config(kind: str, path: str = "", architecture: str = "",
                 execution: ExecutionConfig | None = None) -> LlamaConfig:
    """The model's config without reading its weights: ``LlamaConfig.tiny``, the GGUF header, the directory's
    ``config.json``, or (a directory that is not at hand, e.g. when planning on another machine) the named
    ``architecture`` preset. ``execution`` None: the checkpoint's own dtype (float32 for tiny and GGUF)."""
    _check(kind, path, architecture)
    if kind == "tiny":
        return LlamaConfig.tiny(execution=execution or ExecutionConfig())
    if at_hand(kind, path) and kind in ("smollm2", "gguf"):
        return config_from_gguf(GGUFFile(smollm2_gguf_path() if kind == "smollm2" else path), execution)
    if at_hand(kind, path):
        return read_config(Path(path), execution)
    if architecture:
        return getattr(LlamaConfig, architecture)(execution=execution or ExecutionConfig())
    where = "GGUF file" if kind == "gguf" else f"directory with a {CONFIG_FILE}"
    raise ModelError(f"{path!r} is not a local {where}: point the model's path at one, or name its shape with an "
                     f"architecture preset ({', '.join(PRESETS[2:])}, ...)")


def tokenizer_of(kind: str, path: str = "") -> Tokenizer:
    """The model's tokenizer with its stop tokens: bytes for tiny, the GGUF's own, or the directory's files."""
    _check(kind, path, "")
    if kind == "tiny":
        return Tokenizer.byte_level()
    if kind == "hf":
        return Tokenizer.from_directory(path)
    return tokenizer_from_gguf(smollm2_gguf_path() if kind == "smollm2" else path)


def load_model(kind: str, path: str = "", mesh: jax.sharding.Mesh | None = None,
               execution: ExecutionConfig | None = None) -> tuple[LlamaConfig, Any | None, Tokenizer]:
    """(config, parameter state placed on ``mesh``, tokenizer); the state is None for ``tiny``, which is
    initialised fresh by its user (under jit, straight into its shardings)."""
    _check(kind, path, "")
    tokenizer = tokenizer_of(kind, path)
    if kind == "tiny":
        return LlamaConfig.tiny(execution=execution or ExecutionConfig()), None, tokenizer
    if kind == "hf":
        model = load_hf(path, mesh, execution=execution)
    else:
        model = load_gguf(smollm2_gguf_path() if kind == "smollm2" else path, mesh, execution=execution)
    return model.config, nnx.state(model, nnx.Param), tokenizer


def fresh_params(cfg: LlamaConfig, seed: int, mesh: jax.sharding.Mesh) -> Any:
    """A freshly initialised parameter state, built under jit straight into its shardings on ``mesh``."""
    fresh = lambda: init_params(cfg, seed)  # noqa: E731
    with sharding_lib.activate(mesh):
        return jax.jit(fresh, out_shardings=sharding_lib.state_shardings(jax.eval_shape(fresh), mesh))()


def load_or_init(kind: str, path: str, mesh: jax.sharding.Mesh, execution: ExecutionConfig | None = None,
                 seed: int = 0) -> tuple[LlamaConfig, Any, Tokenizer]:
    """``load_model``, with a tiny model initialised from ``seed`` (``fresh_params``) rather than None."""
    cfg, params, tokenizer = load_model(kind, path, mesh, execution)
    return cfg, fresh_params(cfg, seed, mesh) if params is None else params, tokenizer
