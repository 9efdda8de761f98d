"""Hugging Face checkpoints from local files: load onto a mesh, save back in the same layout.

Loading never holds a whole model, nor even a whole tensor, on one device: each parameter is created with
``jax.make_array_from_callback`` at its target sharding, and the callback reads only that device's slice of
each layer's tensor from a memory-mapped safetensors file (single file or sharded with an index), converting
the dtype on the host. Every tensor name and shape is checked against the config before any data is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bfpo.errors import ModelError
from bfpo.model import hf_layout, safetensors_io
from bfpo.model.config import LlamaConfig
from bfpo.model.execution import ExecutionConfig
from bfpo.model.llama import LlamaForCausalLM
from runtime import sharding as sharding_lib
from runtime.mesh import make_mesh
from runtime.train_state import leaf_paths

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"


def resolve_local_dir(name_or_path: str | os.PathLike) -> Path:
    """A local model directory. A hub id resolves only through the local Hugging Face cache: nothing is
    downloaded at run time."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"{path}: expected a model directory holding {CONFIG_FILE} and safetensors files")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception as e:  # noqa: BLE001 - any failure means "not available offline"
        raise ModelError(
            f"{name_or_path!r} is not a local directory and is not in the local Hugging Face cache ({type(e).__name__}). "
            "Models are loaded from local files only: download it on a machine with network access "
            "(e.g. `huggingface-cli download ORG/NAME --local-dir DIR`) and pass that directory."
        ) from None


def read_config(directory: Path, execution: ExecutionConfig | None = None) -> LlamaConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; a Hugging Face model directory needs its config.json")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from e
    return hf_layout.config_from_hf(raw, where=str(path), execution=execution)


class CheckpointFiles:
    """Where each tensor of a (possibly sharded) checkpoint lives."""

    def __init__(self, directory: Path):
        index = directory / INDEX_FILE
        if index.is_file():
            try:
                raw = json.loads(index.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ModelError(f"{index}: not valid JSON ({e})") from e
            weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ModelError(f"{index}: expected a 'weight_map' object from tensor name to file")
            files = {rel: directory / rel for rel in sorted(set(weight_map.values()))}
            missing = [str(p) for p in files.values() if not p.is_file()]
            if missing:
                raise ModelError(f"{index}: lists shard files that do not exist: {missing}")
            self.files = {rel: safetensors_io.SafetensorsFile(p) for rel, p in files.items()}
            self.where = dict(weight_map)
            for name, rel in self.where.items():
                if name not in self.files[rel].header:
                    raise ModelError(f"{files[rel]}: tensor {name!r} listed in {index.name} is not in the file")
        elif (directory / SINGLE_FILE).is_file():
            self.files = {SINGLE_FILE: safetensors_io.SafetensorsFile(directory / SINGLE_FILE)}
            self.where = {name: SINGLE_FILE for name in self.files[SINGLE_FILE].keys()}
        else:
            raise ModelError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}")
        self.directory = directory

    def file_of(self, name: str) -> safetensors_io.SafetensorsFile:
        return self.files[self.where[name]]

    def describe(self) -> str:
        return ", ".join(str(f.path) for f in self.files.values())


def check_tensors(cfg: LlamaConfig, files: CheckpointFiles) -> list[hf_layout.TensorLayout]:
    """Raises on a missing, unexpected or wrongly shaped tensor, naming it and its file."""
    if cfg.num_layers > len(files.where):  # before naming every layer's tensors, however many it claims
        raise ModelError(f"{files.directory / CONFIG_FILE}: num_hidden_layers={cfg.num_layers}, but "
                         f"{files.describe()} hold only {len(files.where)} tensors")
    layouts = hf_layout.tensor_layouts(cfg)
    expected = {}
    for layout in layouts:
        for name in layout.names(cfg.num_layers):
            expected[name] = layout
    for name, layout in expected.items():
        if name not in files.where:
            raise ModelError(f"tensor {name!r} (for {layout.path}) is missing from {files.describe()}")
        found = files.file_of(name).shape(name)
        if found != layout.hf_shape:
            raise ModelError(f"{files.file_of(name).path}: tensor {name!r} has shape {found}, the config expects "
                             f"{layout.hf_shape}")
        files.file_of(name).dtype(name)
    for name in files.where:
        if name in expected or name.endswith(hf_layout.IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # some exporters write the tied head out; it equals the embedding and is not read
        raise ModelError(f"{files.file_of(name).path}: unexpected tensor {name!r} for this config "
                         f"({cfg.num_layers} layers, tie_word_embeddings={cfg.tie_word_embeddings}, "
                         f"attention_bias={cfg.attention_bias})")
    return layouts


def _index_key(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    return tuple(part.indices(size) for part, size in zip(index, shape))


def _host_shards(layout: hf_layout.TensorLayout, read, num_layers: int, dtype, shape: tuple[int, ...],
                 indices: list[tuple[slice, ...]]) -> dict[tuple, np.ndarray]:
    """Every distinct device slice of one parameter (keyed by ``_index_key``), each source tensor read once: a
    stacked parameter is read layer by layer, and each layer is copied into every slice that holds it. (Reading
    per device instead would dequantise a GGUF tensor once per device holding it.)"""
    distinct = {_index_key(index, shape): index for index in indices}
    if not layout.stacked:
        full = layout.to_ours(read(layout.hf_name))
        return {key: np.asarray(full[index], dtype=dtype) for key, index in distinct.items()}
    shards = {}
    for key, index in distinct.items():
        rows = range(num_layers)[index[0]]
        inner = tuple(len(range(size)[part]) for part, size in zip(index[1:], shape[1:]))
        shards[key] = (rows, np.empty((len(rows), *inner), dtype))
    for layer in range(num_layers):
        holders = [(rows, out, distinct[key]) for key, (rows, out) in shards.items() if layer in rows]
        if not holders:
            continue
        tensor = layout.to_ours(read(layout.hf_name.format(layer=layer)))
        for rows, out, index in holders:
            out[rows.index(layer)] = tensor[index[1:]]
    return {key: out for key, (_, out) in shards.items()}


def place_params(cfg: LlamaConfig, read, mesh: jax.sharding.Mesh | None = None, rules=None) -> LlamaForCausalLM:
    """A model whose parameters are read through ``read(hf_name) -> array`` straight onto their shardings."""
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1]) if mesh is None else mesh
    abstract = nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    shardings = sharding_lib.state_shardings(state, mesh, rules)
    by_path = {layout.path: layout for layout in hf_layout.tensor_layouts(cfg)}
    paths = leaf_paths(state)
    variables, treedef = jax.tree.flatten(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    sharding_leaves = treedef.flatten_up_to(shardings)
    placed = []
    for path, variable, sharding in zip(paths, variables, sharding_leaves):
        layout = by_path[path]
        sharding = sharding.get_value() if isinstance(sharding, nnx.Variable) else sharding
        dtype = np.dtype(cfg.execution.weight_dtype)
        shape = tuple(variable.shape)
        shards = _host_shards(layout, read, cfg.num_layers, dtype, shape,
                              list(sharding.addressable_devices_indices_map(shape).values()))
        array = jax.make_array_from_callback(shape, sharding, lambda index: shards[_index_key(index, shape)])
        placed.append(variable.replace(array))
    return nnx.merge(graphdef, treedef.unflatten(placed))


def load_hf(name_or_path: str | os.PathLike, mesh: jax.sharding.Mesh | None = None, *, rules=None,
            execution: ExecutionConfig | None = None) -> LlamaForCausalLM:
    """Loads a local Hugging Face Llama/Mistral/Qwen2 directory onto ``mesh`` (default: the first device).

    ``execution`` says how to run it, e.g. ``ExecutionConfig(param_dtype="bfloat16")`` converts the weights while
    loading; None keeps the checkpoint's dtype for storage and compute.
    """
    directory = resolve_local_dir(name_or_path)
    cfg = read_config(directory, execution)
    files = CheckpointFiles(directory)
    check_tensors(cfg, files)
    return place_params(cfg, lambda name: files.file_of(name).get(name), mesh, rules)


def _host_layer(array: jax.Array, layer: int | None) -> np.ndarray:
    part = array if layer is None else array[layer]
    if not part.is_fully_addressable:
        from jax.experimental import multihost_utils

        part = multihost_utils.process_allgather(part, tiled=True)
    return np.asarray(jax.device_get(part))


def save_hf(model: LlamaForCausalLM, directory: str | os.PathLike, *, dtype: str | None = None,
            max_shard_bytes: int = 5 * 2**30, tokenizer=None) -> Path:
    """Writes ``config.json`` and safetensors (sharded with an index above ``max_shard_bytes``) in the Hugging
    Face layout, one layer's tensor in host memory at a time, plus the tokenizer files when a
    ``bfpo.tokenize.Tokenizer`` is given (its stop ids in ``generation_config.json``), so that other tools open
    the directory as a complete model.
    ``dtype`` ("bfloat16", "float32", ...) converts on the way out; by default the parameters keep their dtype.
    Every process takes part; process 0 writes."""
    cfg: LlamaConfig = model.config
    directory = Path(directory)
    out_dtype = np.dtype(jnp.dtype(dtype or cfg.execution.param_dtype))
    state = nnx.state(model, nnx.Param)
    arrays = dict(zip(leaf_paths(state), (v.get_value() for v in jax.tree.leaves(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable)))))
    entries: list[tuple[str, tuple[int, ...], np.dtype]] = []
    source: dict[str, tuple[hf_layout.TensorLayout, int | None]] = {}
    for layout in hf_layout.tensor_layouts(cfg):
        for i, name in enumerate(layout.names(cfg.num_layers)):
            entries.append((name, layout.hf_shape, out_dtype))
            source[name] = (layout, i if layout.stacked else None)

    def produce(name: str) -> np.ndarray:
        layout, layer = source[name]
        return layout.to_hf(_host_layer(arrays[layout.path], layer)).astype(out_dtype)

    shards: list[list[tuple[str, tuple[int, ...], np.dtype]]] = [[]]
    size = 0
    for entry in entries:
        nbytes = int(np.prod(entry[1])) * out_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    writer = jax.process_index() == 0
    if writer:
        directory.mkdir(parents=True, exist_ok=True)
        config = hf_layout.config_to_hf(cfg)
        config["dtype"] = config["torch_dtype"] = str(jnp.dtype(out_dtype).name)
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    for file_name, shard in zip(names, shards):
        if writer:
            total += safetensors_io.write(directory / file_name, shard, produce)
        else:
            for name, _, _ in shard:
                produce(name)  # collective gathers must run on every process
        weight_map.update({name: file_name for name, _, _ in shard})
    if writer and len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    if writer and tokenizer is not None:
        tokenizer.save(directory)
    return directory
