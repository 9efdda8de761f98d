"""Resumable batch streams over tokenized pairs, and the fixed-order pass used for evaluation and the reference
log-prob precompute.

``PreferenceStream`` visits the examples epoch after epoch; the order of epoch e is a pure function of
(seed, e), so its position is just (epoch, step) and a resumed run continues the same sequence of batches.
With ``bucket_window = k > 1`` each run of k consecutive batches of the shuffled order is re-sorted by length
before it is cut into batches (similar lengths share a batch, so fewer land in a large bucket), and the
epoch's batches are then shuffled again; both draws come from the same (seed, e) generator. Every epoch
drops the ``N mod B`` examples its permutation puts last, so every batch has the same B.

``MixedStreams`` draws one batch from each named stream per step (the BFPO trainer's safety and buffer
streams); each stream keeps its own position, and one that reaches the end of its data starts its next
epoch, as the official trainer restarts its buffer loader. ``ScheduledStreams`` draws from one stream per step,
chosen by a schedule of the step index (Lisa's phases).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from bfpo.data.tokenized import TokenizedPairs
from bfpo.errors import DataError


class PreferenceStream:
    """An endless stream of [batch_size]-pair batches (the ``runtime.batches.BatchIterator`` protocol)."""

    def __init__(self, tokenized: TokenizedPairs, batch_size: int, seed: int, *, shuffle: bool = True,
                 bucket_window: int = 1, mismatched: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"PreferenceStream.batch_size={batch_size!r}: expected a positive integer")
        if len(tokenized) < batch_size:
            raise DataError(f"PreferenceStream.batch_size={batch_size}: the data has only {len(tokenized)} pairs")
        if not isinstance(bucket_window, int) or bucket_window < 1:
            raise DataError(f"PreferenceStream.bucket_window={bucket_window!r}: expected a positive integer "
                            "(1 = no length grouping)")
        if not isinstance(seed, int) or seed < 0:
            raise DataError(f"PreferenceStream.seed={seed!r}: expected a non-negative integer")
        self.tokenized, self.batch_size, self.seed = tokenized, batch_size, seed
        self.shuffle, self.bucket_window, self.mismatched = shuffle, bucket_window, mismatched
        self.steps_per_epoch = len(tokenized) // batch_size
        self.epoch, self.step = 0, 0
        self._order: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """[steps_per_epoch, batch_size] example indices of epoch ``epoch``; a pure function of (seed, epoch)."""
        n, b, steps = len(self.tokenized), self.batch_size, self.steps_per_epoch
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        order = order[:steps * b]
        if self.bucket_window > 1:
            lengths = self.tokenized.lengths
            window = self.bucket_window * b
            order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                                    for chunk in np.split(order, range(window, order.size, window))])
            batches = order.reshape(steps, b)
            return batches[rng.permutation(steps)] if self.shuffle else batches
        return order.reshape(steps, b)

    def __iter__(self) -> "PreferenceStream":
        return self

    def __next__(self) -> dict:
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, self.epoch_order(self.epoch))
        batch = self.tokenized.batch(self._order[1][self.step], mismatched=self.mismatched)
        self.step += 1
        return batch

    def _identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "batch_size": self.batch_size, "shuffle": self.shuffle,
                "bucket_window": self.bucket_window, "fingerprint": self.tokenized.fingerprint()}

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, **self._identity()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Jump to a saved position; refuses a state saved over other data or other stream settings, which would
        silently continue a different sequence of batches."""
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise DataError(f"PreferenceStream.set_state: saved {key}={state.get(key)!r} but this stream has "
                                f"{key}={value!r}")
        epoch, step = int(state["epoch"]), int(state["step"])
        if epoch < 0 or not 0 <= step <= self.steps_per_epoch:
            raise DataError(f"PreferenceStream.set_state: epoch={epoch}, step={step} is not a position of a stream "
                            f"with {self.steps_per_epoch} steps per epoch")
        self.epoch, self.step = epoch, step


class MixedStreams:
    """One batch per step from every named stream: ``{name: stream batch}``, the trainer's training batch."""

    def __init__(self, streams: Mapping[str, PreferenceStream]):
        if not streams:
            raise DataError("MixedStreams: expected at least one stream")
        self.streams = dict(streams)

    def __iter__(self) -> "MixedStreams":
        return self

    def __next__(self) -> dict[str, dict]:
        return {name: next(stream) for name, stream in self.streams.items()}

    def get_state(self) -> dict[str, Any]:
        return {name: stream.get_state() for name, stream in self.streams.items()}

    def set_state(self, state: dict[str, Any]) -> None:
        if sorted(state) != sorted(self.streams):
            raise DataError(f"MixedStreams.set_state: saved streams {sorted(state)} but this mix has "
                            f"{sorted(self.streams)}")
        for name, stream in self.streams.items():
            stream.set_state(state[name])


class ScheduledStreams:
    """One stream per step, chosen by a schedule: step t yields ``{key: next(streams[schedule(t)])}``, so that
    phases over different data (Lisa's alignment and user phases) share one loss. The position is the step
    count and every stream's own position."""

    def __init__(self, streams: Mapping[str, PreferenceStream], schedule: Callable[[int], str], key: str):
        if not streams:
            raise DataError("ScheduledStreams: expected at least one stream")
        self.streams, self.schedule, self.key, self.step = dict(streams), schedule, key, 0

    def __iter__(self) -> "ScheduledStreams":
        return self

    def __next__(self) -> dict[str, dict]:
        name = self.schedule(self.step)
        if name not in self.streams:
            raise DataError(f"ScheduledStreams: step {self.step} is scheduled on stream {name!r}; the streams are "
                            f"{sorted(self.streams)}")
        self.step += 1
        return {self.key: next(self.streams[name])}

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "streams": {name: s.get_state() for name, s in self.streams.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("streams", {})
        if sorted(saved) != sorted(self.streams):
            raise DataError(f"ScheduledStreams.set_state: saved streams {sorted(saved)} but this schedule has "
                            f"{sorted(self.streams)}")
        for name, stream in self.streams.items():
            stream.set_state(saved[name])
        self.step = int(state["step"])


class EvaluationBatches:
    """Every example exactly once, in index order, ``batch_size`` rows per batch; the last batch is filled up with
    padding rows (pair_mask False, example_id -1) so that every batch has the same B."""

    def __init__(self, tokenized: TokenizedPairs, batch_size: int, mismatched: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"evaluation_batches.batch_size={batch_size!r}: expected a positive integer")
        self.tokenized, self.batch_size, self.mismatched = tokenized, batch_size, mismatched

    def __len__(self) -> int:
        return -(-len(self.tokenized) // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        n, b = len(self.tokenized), self.batch_size
        for start in range(0, n, b):
            idx = np.arange(start, min(start + b, n))
            # A last batch of one example takes its mismatched response from the example after it.
            partners = [(start + 1) % n] if self.mismatched and idx.size == 1 else None
            yield self.tokenized.batch(idx, rows=b, mismatched=self.mismatched, partners=partners)


def evaluation_batches(tokenized: TokenizedPairs, batch_size: int, mismatched: bool = False) -> EvaluationBatches:
    """``mismatched``: with KTO's mismatched side (``TokenizedPairs.batch``)."""
    return EvaluationBatches(tokenized, batch_size, mismatched)
