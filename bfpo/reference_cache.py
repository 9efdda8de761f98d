"""Reference log-probs computed once per (model, dataset), cached on disk, and added to batches by example id.

DPO-style objectives need log pi_ref(y|x) of both responses of every pair; pi_ref never changes during training,
so one pass over the dataset replaces a reference forward in every step and lets the reference model leave
memory. The pass runs over fixed batches that hold every example once (the last one padded with
``pair_mask`` False and ``example_id`` -1), jitted once per bucket shape.

The cache is ``<directory>/<key>.npz`` (``chosen``, ``rejected``: float32 [N], indexed by example id) and
``<key>.json`` (a header naming both fingerprints and N), written atomically. The key hashes the fingerprint
of the model (its config and the bytes of every parameter, ``params_fingerprint``) and of the data
(``TokenizedPairs.fingerprint()`` of ``bfpo.data``), so a second run with the same model and data reuses the
file and any change to either computes a new one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from bfpo.errors import DataError
from bfpo.model.config import LlamaConfig
from bfpo.logprobs import SIDES, concatenated_rows, model_graphdef, row_logprobs
from runtime import sharding as sharding_lib
from runtime.batches import batch_axes, batch_shardings, put_batch
from runtime.train_state import leaf_paths

FORMAT_VERSION = 1


def _host(array: jax.Array) -> np.ndarray:
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        array = multihost_utils.process_allgather(array, tiled=True)
    return np.asarray(jax.device_get(array))


def params_fingerprint(model_cfg: LlamaConfig, params: Any) -> str:
    """SHA-256 of the model config and of every parameter's path, dtype, shape and bytes (one leaf on the host
    at a time)."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(model_cfg), sort_keys=True, default=repr).encode())
    values = jax.tree.leaves(params)
    for path, value in zip(leaf_paths(params), values):
        host = np.ascontiguousarray(_host(value))
        digest.update(f"{path}|{host.dtype}|{host.shape}|".encode())
        digest.update(host.tobytes())
    return digest.hexdigest()


def cache_key(model_fingerprint: str, data_fingerprint: str) -> str:
    return hashlib.sha256(f"model={model_fingerprint};data={data_fingerprint}".encode()).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class ReferenceCache:
    """Summed reference log-probs of every pair's chosen and rejected response, indexed by example id."""

    chosen: np.ndarray  # float32 [N]
    rejected: np.ndarray  # float32 [N]
    header: Mapping[str, Any]

    def __len__(self) -> int:
        return int(self.chosen.shape[0])

    def lookup(self, example_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected) float32 for each id; padding rows (id -1) get 0 (their pairs are masked out)."""
        ids = np.asarray(example_id)
        bad = ids[(ids < -1) | (ids >= len(self))]
        if bad.size:
            raise DataError(f"reference cache {self.header.get('key')}: example_id {int(bad[0])} is outside "
                            f"[0, {len(self)}) (the cache was computed for another dataset?)")
        safe = np.maximum(ids, 0)
        real = ids >= 0
        return (np.where(real, self.chosen[safe], 0.0).astype(np.float32),
                np.where(real, self.rejected[safe], 0.0).astype(np.float32))


@functools.lru_cache(maxsize=8)
def reference_logprob_fn(model_cfg: LlamaConfig, chunk: int = 128) -> Callable:
    """``fn(params, stream_batch) -> [2B]`` summed reference log-probs of [chosen; rejected], jitted (one
    compilation per bucket shape, shared by every pass with the same model config)."""
    graphdef = model_graphdef(model_cfg)

    def fn(params, stream):
        return row_logprobs(graphdef, params, concatenated_rows(stream, SIDES, "reference batch"), chunk)[0]

    return jax.jit(fn)


def compute_reference_logprobs(model_cfg: LlamaConfig, params: Any, batches: Iterable[Mapping[str, Any]],
                               num_examples: int, *, mesh: jax.sharding.Mesh | None = None, chunk: int = 128,
                               desc: str = "reference log-probs") -> tuple[np.ndarray, np.ndarray]:
    """One pass over ``batches`` (every example id in [0, num_examples) exactly once, padding rows -1):
    (chosen [N], rejected [N]) float32. Only the sides, ``pair_mask`` and ``example_id`` of a batch are read."""
    fn = reference_logprob_fn(model_cfg, chunk)
    chosen = np.full(num_examples, np.nan, np.float32)
    rejected = np.full(num_examples, np.nan, np.float32)
    seen = np.zeros(num_examples, bool)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=jax.process_index() != 0):
        host = {side: {f: np.asarray(batch[side][f]) for f in ("tokens", "mask", "score_mask")} for side in SIDES}
        ids = np.asarray(batch["example_id"])
        real = np.asarray(batch["pair_mask"]).astype(bool) & (ids >= 0)
        if mesh is not None:
            shardings = batch_shardings(host, batch_axes(host), mesh)
            with sharding_lib.activate(mesh):
                logps = fn(params, put_batch(host, shardings))
        else:
            logps = fn(params, host)
        logps = _host(logps)
        b = ids.shape[0]
        rows = ids[real]
        if rows.size and (rows.max() >= num_examples or seen[rows].any() or len(set(rows.tolist())) != rows.size):
            raise DataError(f"{desc}: example ids {sorted(rows.tolist())[:8]}... repeat or exceed "
                            f"num_examples={num_examples}; the pass must visit every example once")
        chosen[rows], rejected[rows] = logps[:b][real], logps[b:][real]
        seen[rows] = True
    if not seen.all():
        raise DataError(f"{desc}: {int((~seen).sum())} of {num_examples} examples never appeared "
                        f"(first missing id {int(np.argmin(seen))})")
    return chosen, rejected


def _write_atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, mode) as f:
        write(f)
    os.replace(tmp, path)


def load_or_compute(directory: str | os.PathLike, *, model_fingerprint: str, data_fingerprint: str,
                    compute: Callable[[], tuple[np.ndarray, np.ndarray]], name: str = "") -> ReferenceCache:
    """The cache for (model, data) from ``directory``, or ``compute()`` it and write it there.

    ``compute`` returns (chosen, rejected) float32 [N]. A header that disagrees with the fingerprints (a hash
    collision or an edited file) or an unreadable file counts as a miss. Process 0 writes.
    """
    directory = Path(directory)
    key = cache_key(model_fingerprint, data_fingerprint)
    header_path, arrays_path = directory / f"{key}.json", directory / f"{key}.npz"
    expected = {"version": FORMAT_VERSION, "key": key, "model_fingerprint": model_fingerprint,
                "data_fingerprint": data_fingerprint}
    if header_path.exists() and arrays_path.exists():
        try:
            header = json.loads(header_path.read_text())
            with np.load(arrays_path) as arrays:
                chosen, rejected = arrays["chosen"], arrays["rejected"]
        except (OSError, ValueError, KeyError):
            header = None
        if header is not None and all(header.get(k) == v for k, v in expected.items()) \
                and header.get("num_examples") == chosen.shape[0] == rejected.shape[0]:
            return ReferenceCache(chosen.astype(np.float32), rejected.astype(np.float32), header)
    chosen, rejected = compute()
    chosen, rejected = np.asarray(chosen, np.float32), np.asarray(rejected, np.float32)
    if chosen.shape != rejected.shape or chosen.ndim != 1:
        raise DataError(f"reference cache {key}: chosen {chosen.shape} and rejected {rejected.shape} must both be [N]")
    header = {**expected, "num_examples": int(chosen.shape[0]), "name": name}
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(arrays_path, lambda f: np.savez(f, chosen=chosen, rejected=rejected), "wb")
        _write_atomic(header_path, lambda f: f.write(json.dumps(header, indent=2) + "\n"), "w")
    return ReferenceCache(chosen, rejected, header)


class WithReference:
    """Wraps a ``BatchIterator`` of training batches ``{stream: stream batch}``: adds "reference_chosen" and
    "reference_rejected" to each stream that has a cache, looked up by "example_id". The position is the
    wrapped iterator's (``get_state`` / ``set_state`` delegate)."""

    def __init__(self, inner, caches: Mapping[str, ReferenceCache]):
        self.inner = inner
        self.caches = dict(caches)

    def __iter__(self) -> "WithReference":
        return self

    def __next__(self) -> dict:
        batch = dict(next(self.inner))
        for stream, cache in self.caches.items():
            if stream not in batch:
                raise DataError(f"reference cache for stream {stream!r}, but the batch has streams {sorted(batch)}")
            chosen, rejected = cache.lookup(batch[stream]["example_id"])
            batch[stream] = {**batch[stream], "reference_chosen": chosen, "reference_rejected": rejected}
        return batch

    def get_state(self) -> dict[str, Any]:
        return self.inner.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.inner.set_state(state)


def model_params_fingerprint(model: nnx.Module) -> str:
    """``params_fingerprint`` of an ``nnx`` causal LM (its config and ``nnx.Param`` state)."""
    return params_fingerprint(model.config, nnx.state(model, nnx.Param))
