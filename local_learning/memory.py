"""Memory of a training step, three ways.

* ``compiled_memory``: from the compiled XLA program (``memory_analysis``), per device:
      peak = argument + output - alias + temp
  (on the CPU backend ``peak_memory_in_bytes`` leaves the temporaries out, so it is recomputed here).
* ``residual_bytes``: what reverse-mode autodiff keeps between the forward and the backward pass of a
  function (its saved residuals, arguments excluded): backend-independent and deterministic.
* ``device_peak_bytes``: ``peak_bytes_in_use`` of the device allocator (GPU/TPU; None on CPU).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    argument: int
    output: int
    alias: int
    temp: int

    @property
    def peak(self) -> int:
        return self.argument + self.output - self.alias + self.temp

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "peak": self.peak}


def compiled_memory(compiled) -> CompiledMemory | None:
    """Memory of a compiled program (``jax.jit(f).lower(...).compile()``); None where the backend gives none."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return CompiledMemory(
        argument=int(stats.argument_size_in_bytes),
        output=int(stats.output_size_in_bytes),
        alias=int(stats.alias_size_in_bytes),
        temp=int(stats.temp_size_in_bytes),
    )


def _nbytes(aval) -> int:
    return int(math.prod(aval.shape)) * np.dtype(aval.dtype).itemsize


def residual_bytes(f: Callable[..., Any], *args: Any) -> int:
    """Bytes of the residuals reverse-mode autodiff saves for ``f(*args)`` (a scalar function), arguments excluded.

    ``args`` may be arrays or ``jax.ShapeDtypeStruct``s.
    """
    try:
        from jax._src.ad_checkpoint import saved_residuals
    except ImportError:  # pragma: no cover - the private helper moved; fall back to the vjp closure
        saved_residuals = None
    if saved_residuals is not None:
        return sum(_nbytes(aval) for aval, source in saved_residuals(f, *args) if not source.startswith("from the argument"))
    leaves = jax.eval_shape(lambda *a: jax.tree.leaves(jax.vjp(f, *a)[1]), *args)
    arg_bytes = sum(_nbytes(x) for x in jax.tree.leaves(args))
    return max(sum(_nbytes(x) for x in leaves) - arg_bytes, 0)


def device_peak_bytes(device: jax.Device | None = None) -> int | None:
    """The allocator's peak bytes in use on ``device`` (default: the first local device); None on CPU."""
    device = jax.local_devices()[0] if device is None else device
    stats = device.memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def tree_bytes(tree: Any) -> int:
    return sum(_nbytes(x) for x in jax.tree.leaves(tree))
