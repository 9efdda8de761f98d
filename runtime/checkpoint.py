"""Orbax checkpoints of the sharded train state, the data position and the run config.

Layout: ``<directory>/<step>/state`` (the arrays, written by every process for its own shards) and
``<directory>/<step>/meta`` (JSON: config, data iterator position, anything else the loop needs).

With ``frozen_params=False`` a checkpoint holds only the trainable parameters (with the optimizer state, step
and rng): a model fine-tuned in a few of its weights, or through LoRA adapters, then checkpoints megabytes, not
its whole base. The frozen leaves are restored from their source (``restore(..., frozen=params)``) and checked
against the content hash of each leaf's bits (``runtime.content_hash``, computed on the devices) that the
checkpoint's metadata records, so any change to a frozen weight since the run started is refused.

Every checkpoint's metadata records the content hash of each array it holds (``runtime.content_hash``); a
restore compares them, so a data file truncated or altered on disk is an ``UnreadableCheckpointError`` naming the
first leaf that differs, never a silently different state. ``quarantine(step)`` moves such a checkpoint aside
(``<directory>.unreadable/<step>``, nothing deleted), so the run can resume from the one before it.

Atomicity comes from orbax: a step is written into a temporary directory and renamed into place only once
every array and the metadata are complete (and, with several processes, once all of them finished), so a
crash mid-save leaves a temporary directory that is never listed as a step. Restoring takes an abstract
target whose leaves carry the *target* shardings, which is how a checkpoint written on one mesh restores onto
another.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from runtime.content_hash import content_hashes
from runtime.errors import CheckpointError, UnreadableCheckpointError
from runtime.train_state import TrainState, leaf_paths
from runtime.tree_paths import path_str


def _first_line(error: BaseException, most: int = 300) -> str:
    """The first line of the innermost cause (tensorstore's own message, not orbax's wrapper around it)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(error).__name__}: {line[:most]}{'...' if len(line) > most else ''}"


FROZEN_META = "frozen_params"
STATE_HASHES = "state_hashes"


def _trainable_only(params: Any, trainable: tuple[bool, ...]) -> dict[str, Any]:
    """The trainable leaves keyed by their index among all leaves (paths may hold characters orbax splits on)."""
    return {f"{i:05d}": x for i, (x, m) in enumerate(zip(jax.tree.leaves(params), trainable)) if m}


def _arrays(state: TrainState, frozen: bool = True) -> dict[str, Any]:
    params = state.params if frozen else _trainable_only(state.params, state.trainable)
    return {"step": state.step, "params": params, "opt_state": state.opt_state, "rng": state.rng}


def abstract_target(like: TrainState, shardings: TrainState, frozen: bool = True) -> dict[str, Any]:
    """Shape/dtype/sharding description of a train state, from an (abstract or concrete) state and its shardings."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), _arrays(like, frozen),
        _arrays(shardings.replace(trainable=like.trainable), frozen),
    )


def frozen_hashes(params: Any, trainable: tuple[bool, ...]) -> list[str]:
    """The content hash of every frozen leaf, in leaf order."""
    return content_hashes([x for x, m in zip(jax.tree.leaves(params), trainable) if not m])


@jax.jit
def _abs_sums(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves]) if leaves else jnp.zeros((0,))


def _legacy_checksums(params: Any, trainable: tuple[bool, ...]) -> list[float]:
    """sum |x| (float32) of every frozen leaf: what checkpoints recorded before content hashes (read, never
    written, so such runs still resume)."""
    leaves = [x for x, m in zip(jax.tree.leaves(params), trainable) if not m]
    return [float(v) for v in jax.device_get(_abs_sums(leaves))]


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run in ``directory``."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True, frozen_params: bool = True):
        if keep < 1:
            raise CheckpointError(f"keep={keep}: at least one checkpoint must be kept")
        self.directory = os.path.abspath(directory)
        self.frozen_params = frozen_params
        self._frozen_meta: dict[str, Any] | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, state: TrainState, meta: dict[str, Any], *, step: int | None = None) -> None:
        """Starts saving (returns once the arrays are copied off the devices; the write goes on in the background)."""
        step = int(jax.device_get(state.step)) if step is None else step
        if step in self._manager.all_steps():
            return
        frozen = self.frozen_params or all(state.trainable)
        if not frozen:
            # Frozen leaves never change within a run: hash them at the first save only.
            indices = [i for i, m in enumerate(state.trainable) if not m]
            if self._frozen_meta is None or self._frozen_meta["leaves"] != indices:
                self._frozen_meta = {"leaves": indices, "hashes": frozen_hashes(state.params, state.trainable)}
            meta = {**meta, FROZEN_META: self._frozen_meta}
        arrays = _arrays(state, frozen)
        meta = {**meta, STATE_HASHES: content_hashes(jax.tree.leaves(arrays))}
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def holds_frozen_params(self, step: int | None = None) -> bool:
        """Whether checkpoint ``step`` (default: the latest) holds every parameter, frozen ones included."""
        return FROZEN_META not in self.read_meta(step)

    def restore(
        self, like: TrainState, shardings: TrainState, *, step: int | None = None, frozen: Any = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """Restores onto ``shardings`` (any mesh); ``like`` gives structure, shapes and the trainable mask.

        A checkpoint saved without its frozen parameters takes them from ``frozen`` (a parameter tree like
        ``like.params``, on the target shardings, whose trainable leaves are ignored), after checking them against
        the content hashes recorded at save time."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        if step not in self._manager.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}")
        frozen_meta = self.read_meta(step).get(FROZEN_META)
        if frozen_meta is not None:
            self._check_frozen(step, like, frozen, frozen_meta)
        target = abstract_target(like, shardings, frozen_meta is None)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
            )
        except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise assorted types for one cause
            raise UnreadableCheckpointError(
                f"checkpoint {self.directory}/{step} cannot be restored into the train state: {_first_line(e)}"
            ) from e
        arrays = restored["state"]
        meta = dict(restored["meta"])
        self._check_hashes(step, arrays, meta.pop(STATE_HASHES, None))
        params = arrays["params"]
        if frozen_meta is not None:
            leaves, treedef = jax.tree.flatten(frozen)
            params = treedef.unflatten([params[f"{i:05d}"] if m else x
                                        for i, (x, m) in enumerate(zip(leaves, like.trainable))])
        state = TrainState(
            step=arrays["step"],
            params=params,
            opt_state=arrays["opt_state"],
            rng=arrays["rng"],
            trainable=like.trainable,
            forward_dtypes=like.forward_dtypes,
        )
        return state, meta

    def _check_frozen(self, step: int, like: TrainState, frozen: Any, frozen_meta: dict[str, Any]) -> None:
        where = f"checkpoint {self.directory}/{step}"
        if frozen is None:
            raise CheckpointError(f"{where} holds only the trainable parameters; restoring it needs the frozen ones "
                                  "(restore(..., frozen=params))")
        if jax.tree.structure(frozen) != jax.tree.structure(like.params):
            raise CheckpointError(f"{where}: the frozen parameters given do not have the train state's structure")
        indices = [i for i, m in enumerate(like.trainable) if not m]
        if indices != frozen_meta["leaves"]:
            raise CheckpointError(f"{where} was saved with frozen leaves {frozen_meta['leaves'][:8]}..., the train "
                                  f"state being restored freezes {indices[:8]}...")
        paths = leaf_paths(like.params)
        if "hashes" in frozen_meta:
            pairs = zip(frozen_hashes(frozen, like.trainable), frozen_meta["hashes"])
            same = [got == want for got, want in pairs]
            what = "content hash"
        else:
            pairs = zip(_legacy_checksums(frozen, like.trainable), frozen_meta["checksums"])
            same = [math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6) for got, want in pairs]
            what = "sum |x|"
        for i, ok in zip(indices, same):
            if not ok:
                raise CheckpointError(f"{where}: frozen parameter {paths[i]!r} differs from the one trained with "
                                      f"(its {what} changed); the base weights changed since the run started")

    def _check_hashes(self, step: int, arrays: dict[str, Any], saved: list[str] | None) -> None:
        if saved is None:  # written before checkpoints recorded their hashes
            return
        flat = jax.tree_util.tree_flatten_with_path(arrays)[0]
        got = content_hashes([x for _, x in flat])
        if len(saved) != len(got):
            raise UnreadableCheckpointError(f"checkpoint {self.directory}/{step} recorded {len(saved)} arrays and "
                                            f"{len(got)} were read")
        for (path, _), a, b in zip(flat, got, saved):
            if a != b:
                raise UnreadableCheckpointError(
                    f"checkpoint {self.directory}/{step}: array {path_str(path)!r} read back differs from the one "
                    "saved (its content hash changed): a file of the checkpoint was altered or truncated")

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - as in restore()
            raise UnreadableCheckpointError(
                f"checkpoint {self.directory}/{step}: its metadata cannot be read: {_first_line(e)}") from e
        if not isinstance(restored["meta"], dict):
            raise UnreadableCheckpointError(f"checkpoint {self.directory}/{step}: its metadata is not a JSON object")
        return dict(restored["meta"])

    def quarantine(self, step: int) -> str:
        """Moves checkpoint ``step`` out of the run (to ``<directory>.unreadable/<step>``) and returns where it
        went; the steps before it stay, and a later save of the same step writes afresh."""
        self._manager.wait_until_finished()
        aside = os.path.join(f"{self.directory}.unreadable", str(step))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            if os.path.exists(aside):
                aside = f"{aside}.{len(os.listdir(os.path.dirname(aside)))}"
            os.replace(os.path.join(self.directory, str(step)), aside)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        self._manager.reload()
        return aside

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
