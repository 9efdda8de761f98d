"""A compiled chain on disk: ``chain.safetensors`` (every layer's arrays in float64) and ``chain.json`` (format,
dimensions, each layer's kind and width, the chain's summary and a free-form description of the program).

Tensor names: ``layers.{i}.weight``, ``layers.{i}.bias`` and, for a state layer, ``layers.{i}.A`` and
``layers.{i}.init``; ``readout.weight``, ``readout.bias``. The arrays are those of ``recurrent.chain.Layer``, so
the file holds the circuit exactly (float64, as compiled): layer i computes from layer i - 1 as the chain's
docstring says, and the summary names which lanes are recurrent. Any tool that reads safetensors and JSON can
rebuild the model; ``load_chain`` here checks every field and names the file and field it refuses.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from recurrent.chain import LAYER_KINDS, Chain, Layer
from recurrent.errors import CompileError

FORMAT = "lsrl-chain"
VERSION = 1
TENSORS = "chain.safetensors"
METADATA = "chain.json"


def save_chain(chain: Chain, directory: str | Path, *, program: dict | None = None, overwrite: bool = False) -> None:
    """Writes ``chain`` into ``directory`` (refused if it holds a chain already, unless ``overwrite``)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    if (directory / METADATA).exists() and not overwrite:
        raise CompileError(f"{directory / METADATA}: exists (pass overwrite=True to replace it)")
    tensors = {"readout.weight": chain.readout_weight, "readout.bias": chain.readout_bias}
    for i, layer in enumerate(chain.layers):
        tensors.update({f"layers.{i}.{k}": v for k, v in layer.arrays().items()})
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float64) for k, v in tensors.items()}, str(directory / TENSORS))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "in_dim": chain.in_dim,
        "out_dim": chain.out_dim,
        "layers": [{"kind": l.kind, "width": l.width, "recurrent": l.recurrent} for l in chain.layers],
        "summary": dataclasses.asdict(chain.summary()),
        "program": program or {},
    }
    (directory / METADATA).write_text(json.dumps(meta, indent=2) + "\n")


def _tensor(tensors: dict, name: str, path: Path, shape: tuple[int | None, ...]) -> np.ndarray:
    if name not in tensors:
        raise CompileError(f"{path}: tensor {name!r} missing")
    a = tensors[name]
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise CompileError(f"{path}: tensor {name!r} has shape {a.shape}, expected {want}")
    if not np.isfinite(a).all():
        raise CompileError(f"{path}: tensor {name!r} has non-finite entries")
    return a


def load_chain(directory: str | Path) -> tuple[Chain, dict]:
    """(the chain, its ``chain.json``) from a directory written by ``save_chain``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    meta_path, tensor_path = directory / METADATA, directory / TENSORS
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CompileError(f"{meta_path}: missing (not a directory written by save_chain)") from None
    except json.JSONDecodeError as e:
        raise CompileError(f"{meta_path}: not JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CompileError(f"{meta_path}: field 'format' must be {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise CompileError(f"{meta_path}: field 'version' is {meta.get('version')!r}; this reader knows {VERSION}")
    for field in ("in_dim", "out_dim"):
        if not isinstance(meta.get(field), int) or meta[field] < 1:
            raise CompileError(f"{meta_path}: field {field!r} must be a positive integer, got {meta.get(field)!r}")
    if not isinstance(meta.get("layers"), list):
        raise CompileError(f"{meta_path}: field 'layers' must be a list")
    try:
        tensors = load_file(str(tensor_path))
    except FileNotFoundError:
        raise CompileError(f"{tensor_path}: missing") from None
    except (SafetensorError, OSError) as e:
        raise CompileError(f"{tensor_path}: unreadable ({e})") from None
    layers, width = [], meta["in_dim"]
    for i, entry in enumerate(meta["layers"]):
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind not in LAYER_KINDS:
            raise CompileError(f"{meta_path}: layers[{i}].kind is {kind!r}, expected one of {LAYER_KINDS}")
        w, r = entry.get("width"), entry.get("recurrent")
        if not isinstance(w, int) or w < 1 or not isinstance(r, int) or not 0 <= r <= w:
            raise CompileError(f"{meta_path}: layers[{i}] width {w!r} / recurrent {r!r} invalid")
        rows = 2 * w if kind == "mul" else w
        weight = _tensor(tensors, f"layers.{i}.weight", tensor_path, (rows, width))
        bias = _tensor(tensors, f"layers.{i}.bias", tensor_path, (rows,))
        A = init = None
        if kind == "state":
            A = _tensor(tensors, f"layers.{i}.A", tensor_path, (r, r))
            init = _tensor(tensors, f"layers.{i}.init", tensor_path, (r,))
        layers.append(Layer(kind, weight, bias, A, init))
        width = w
    readout_w = _tensor(tensors, "readout.weight", tensor_path, (meta["out_dim"], width))
    readout_b = _tensor(tensors, "readout.bias", tensor_path, (meta["out_dim"],))
    expected = {f"layers.{i}.{k}" for i, l in enumerate(layers) for k in l.arrays()} | {"readout.weight",
                                                                                       "readout.bias"}
    extra = sorted(set(tensors) - expected)
    if extra:
        raise CompileError(f"{tensor_path}: tensors {extra} are not part of the chain {meta_path} describes")
    return Chain(meta["in_dim"], tuple(layers), readout_w, readout_b), meta
