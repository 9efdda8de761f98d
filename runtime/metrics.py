"""Metrics as (sum, count) pairs, so that averages stay exact.

A metric is never stored as a mean: a mean over a device shard, a micro-batch or a logging window cannot be
combined with another mean without knowing how many items each covered. ``Metric`` keeps ``total`` (the sum of
the per-item values) and ``count`` (the number of items, or tokens, or any weight); merging adds both, and the
average ``total / count`` is computed once, at the end, on the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Metric:
    """Sum of values and their count (or weight)."""

    total: jax.Array
    count: jax.Array

    @classmethod
    def from_values(cls, values: jax.Array, mask: jax.Array | None = None) -> "Metric":
        """Sum and count of ``values`` over the entries where ``mask`` is true (all entries without a mask)."""
        values = jnp.asarray(values, jnp.float32)
        if mask is None:
            return cls(total=jnp.sum(values), count=jnp.asarray(values.size, jnp.float32))
        mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), values.shape)
        return cls(total=jnp.sum(values * mask), count=jnp.sum(mask))

    @classmethod
    def from_mean(cls, mean: jax.Array, count: jax.Array | float) -> "Metric":
        """A metric from a mean over ``count`` items (so that it merges exactly with others)."""
        count = jnp.asarray(count, jnp.float32)
        return cls(total=jnp.asarray(mean, jnp.float32) * count, count=count)

    @classmethod
    def scalar(cls, value: jax.Array) -> "Metric":
        """A single observation (count 1)."""
        return cls(total=jnp.asarray(value, jnp.float32), count=jnp.ones((), jnp.float32))

    def merge(self, other: "Metric") -> "Metric":
        return Metric(total=self.total + other.total, count=self.count + other.count)

    def compute(self) -> jax.Array:
        return self.total / self.count


Metrics = Mapping[str, Metric]


def merge(a: Metrics, b: Metrics) -> dict[str, Metric]:
    """Merges two metric dicts; keys present in only one are kept as they are."""
    out = dict(a)
    for key, value in b.items():
        out[key] = out[key].merge(value) if key in out else value
    return out


def zeros_like(metrics: Metrics) -> dict[str, Metric]:
    return jax.tree.map(jnp.zeros_like, dict(metrics))


class HostAccumulator:
    """Accumulates fetched metrics on the host (float64) over a logging window."""

    def __init__(self):
        self._sums: dict[str, list[float]] = {}

    def add(self, metrics: Mapping[str, Any]) -> None:
        for key, m in metrics.items():
            total, count = float(np.asarray(m.total, np.float64)), float(np.asarray(m.count, np.float64))
            acc = self._sums.setdefault(key, [0.0, 0.0])
            acc[0] += total
            acc[1] += count

    def means(self) -> dict[str, float]:
        """Mean of every metric that had at least one counted value in the window (others are left out)."""
        return {k: t / c for k, (t, c) in self._sums.items() if c}

    def reset(self) -> None:
        self._sums.clear()

    def __bool__(self) -> bool:
        return bool(self._sums)


def to_host(metrics: Metrics) -> dict[str, float]:
    """Averages of a metric dict as Python floats (one device-to-host transfer). A metric that counted nothing
    (a pair type absent from every batch) has no average and is left out, not reported as NaN."""
    fetched = jax.device_get(dict(metrics))
    return {k: float(np.float64(m.total) / np.float64(m.count)) for k, m in fetched.items() if m.count}
