"""Host batches: a resumable iterator protocol, and placing a host batch onto the mesh as global arrays.

Every data source the loop consumes implements ``BatchIterator``: ``next()`` returns a pytree of NumPy arrays
(the *global* batch), ``get_state()`` a JSON-able position that the checkpoint stores, ``set_state()`` jumps
back to it. A resumed run therefore sees exactly the batches the interrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from runtime import sharding as sharding_lib
from runtime.errors import RuntimeConfigError


class BatchIterator(Protocol):
    def __next__(self) -> Any: ...

    def __iter__(self) -> "BatchIterator": ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


class IndexedBatches:
    """Batch ``i`` is ``make_batch(i)``, a pure function of the index (and of whatever seed it closes over)."""

    def __init__(self, make_batch: Callable[[int], Any], start: int = 0):
        self._make_batch = make_batch
        self.index = start

    def __iter__(self) -> "IndexedBatches":
        return self

    def __next__(self) -> Any:
        batch = self._make_batch(self.index)
        self.index += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"index": self.index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])


def split_microbatches(batch: Any, grad_accum: int) -> Any:
    """[B, ...] -> [grad_accum, B / grad_accum, ...], micro-batch ``a`` holding rows ``a, a + A, a + 2A, ...``.

    Interleaving keeps every micro-batch spread over all data-parallel devices (each device's contiguous block
    of rows contributes equally to every micro-batch), so the split costs no communication.
    """
    if grad_accum == 1:
        return batch

    def one(x):
        x = np.asarray(x)
        if x.shape[0] % grad_accum:
            raise RuntimeConfigError(f"batch size {x.shape[0]} is not divisible by grad_accum={grad_accum}")
        return np.swapaxes(x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]), 0, 1)

    return jax.tree.map(one, batch)


def batch_axes(batch: Any, grad_accum: int = 1) -> Any:
    """Default logical axes of a batch: the first dimension is ``batch``, the others are replicated."""
    lead = ("microbatch",) if grad_accum > 1 else ()
    return jax.tree.map(lambda x: lead + ("batch",) + (None,) * (np.ndim(x) - 1 - len(lead)), batch)


def batch_shardings(batch: Any, axes: Any, mesh: jax.sharding.Mesh, rules=None) -> Any:
    return sharding_lib.tree_shardings(batch, axes, mesh, rules)


def put_batch(batch: Any, shardings: Any) -> Any:
    """Global arrays from a host batch every process holds in full; each process uploads only its own shards."""

    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, batch, shardings)
