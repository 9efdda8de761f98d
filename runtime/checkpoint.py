"""Orbax checkpoints of the sharded train state, the data position and the run config.

Layout: ``<directory>/<step>/state`` (the arrays, written by every process for its own shards) and
``<directory>/<step>/meta`` (JSON: config, data iterator position, anything else the loop needs).

Atomicity comes from orbax: a step is written into a temporary directory and renamed into place only once
every array and the metadata are complete (and, with several processes, once all of them finished), so a
crash mid-save leaves a temporary directory that is never listed as a step. Restoring takes an abstract
target whose leaves carry the *target* shardings, which is how a checkpoint written on one mesh restores onto
another.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from runtime.errors import CheckpointError
from runtime.train_state import TrainState


def _arrays(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}


def abstract_target(like: TrainState, shardings: TrainState) -> dict[str, Any]:
    """Shape/dtype/sharding description of a train state, from an (abstract or concrete) state and its shardings."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), _arrays(like), _arrays(shardings)
    )


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run in ``directory``."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise CheckpointError(f"keep={keep}: at least one checkpoint must be kept")
        self.directory = os.path.abspath(directory)
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
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(_arrays(state)), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(
        self, like: TrainState, shardings: TrainState, *, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """Restores onto ``shardings`` (any mesh); ``like`` gives structure, shapes and the trainable mask."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        if step not in self._manager.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}")
        target = abstract_target(like, shardings)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} does not match the train state being restored: {e}"
            ) from e
        arrays = restored["state"]
        state = TrainState(
            step=arrays["step"],
            params=arrays["params"],
            opt_state=arrays["opt_state"],
            rng=arrays["rng"],
            trainable=like.trainable,
        )
        return state, dict(restored["meta"])

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
