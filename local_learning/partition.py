"""Split points: which blocks of a network's flat block list form each of the K gradient-isolated modules.

A partition of N blocks into K modules is the increasing tuple of K - 1 split points s_1 < ... < s_{K-1}
in [1, N - 1]; module k holds blocks [s_{k-1}, s_k) with s_0 = 0 and s_K = N.

* ``equal``: s_k = round(k N / K), the block list cut into parts of (nearly) equal count (as in DGL).
* ``explicit``: the split points as given.
* ``balanced_memory``: the split points that minimise the largest module cost
      max_k ( sum_{i in module k} c_i + e_{s_k - 1} ),
  where c_i is the activation memory block i keeps for its backward pass and e_j the memory of the local
  head attached after block j (the network's classifier for the last module). Early blocks of a CNN hold the
  largest activations, so their modules get fewer blocks (the "InfoPro*" splits of Wang et al., 2021).
  Solved exactly by dynamic programming over (modules, last block), O(K N^2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

from local_learning.errors import ConfigError

SPLITS = ("equal", "explicit", "balanced_memory")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PartitionConfig:
    num_modules: int = 4
    split: Literal["equal", "explicit", "balanced_memory"] = "equal"
    split_points: tuple[int, ...] = ()
    """For ``split="explicit"``: the index of the first block of modules 2..K."""

    def __post_init__(self):
        if self.num_modules < 1:
            raise ConfigError(f"PartitionConfig.num_modules={self.num_modules}: must be at least 1")
        if self.split not in SPLITS:
            raise ConfigError(f"PartitionConfig.split={self.split!r}: expected one of {SPLITS}")
        if self.split == "explicit" and len(self.split_points) != self.num_modules - 1:
            raise ConfigError(
                f"PartitionConfig.split_points={self.split_points}: split='explicit' with num_modules="
                f"{self.num_modules} needs exactly {self.num_modules - 1} split points"
            )
        if self.split != "explicit" and self.split_points:
            raise ConfigError(
                f"PartitionConfig.split_points={self.split_points} is only used with split='explicit' "
                f"(got split={self.split!r})"
            )


def check_split_points(points: Sequence[int], num_blocks: int, num_modules: int) -> tuple[int, ...]:
    """Validates split points against a network of ``num_blocks`` blocks; returns them as a tuple of ints."""
    if num_modules > num_blocks:
        raise ConfigError(
            f"PartitionConfig.num_modules={num_modules} is larger than the number of blocks ({num_blocks}); "
            "each module needs at least one block"
        )
    points = tuple(int(p) for p in points)
    if len(points) != num_modules - 1:
        raise ConfigError(f"split points {points}: expected {num_modules - 1} for {num_modules} modules")
    for i, p in enumerate(points):
        if not 1 <= p <= num_blocks - 1:
            raise ConfigError(
                f"split point {p} (position {i}) is out of range: split points lie in [1, {num_blocks - 1}] "
                f"for {num_blocks} blocks"
            )
        if i and p <= points[i - 1]:
            raise ConfigError(f"split points {points} are not strictly increasing (at position {i})")
    return points


def equal_split(num_blocks: int, num_modules: int) -> tuple[int, ...]:
    check_split_points(range(1, num_modules), num_blocks, num_modules)  # raises when K > N
    return tuple(int(np.floor(k * num_blocks / num_modules + 0.5)) for k in range(1, num_modules))


def balanced_split(block_costs: Sequence[float], num_modules: int,
                   head_costs: Sequence[float] | None = None) -> tuple[int, ...]:
    """Split points minimising the largest module cost (block costs plus the head after the module's last block).

    Among optimal partitions, the one with the latest split points is returned (a deterministic choice).
    """
    c = np.asarray(block_costs, np.float64)
    n = len(c)
    e = np.zeros(n) if head_costs is None else np.asarray(head_costs, np.float64)
    if e.shape != (n,):
        raise ConfigError(f"head_costs has {e.shape} entries, expected one per block ({n})")
    check_split_points(range(1, num_modules), n, num_modules)
    prefix = np.concatenate([[0.0], np.cumsum(c)])

    def cost(a, b):  # module holding blocks [a, b)
        return prefix[b] - prefix[a] + e[b - 1]

    inf = float("inf")
    # best[k][b]: smallest largest-module cost of splitting blocks [0, b) into k modules.
    best = np.full((num_modules + 1, n + 1), inf)
    arg = np.zeros((num_modules + 1, n + 1), np.int64)
    best[0][0] = 0.0
    for k in range(1, num_modules + 1):
        for b in range(k, n + 1):
            for a in range(k - 1, b):
                value = max(best[k - 1][a], cost(a, b))
                if value <= best[k][b]:
                    best[k][b], arg[k][b] = value, a
    points, b = [], n
    for k in range(num_modules, 1, -1):
        b = int(arg[k][b])
        points.append(b)
    return tuple(reversed(points))


def module_bounds(points: Sequence[int], num_blocks: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] block ranges of the modules."""
    edges = [0, *points, num_blocks]
    return list(zip(edges[:-1], edges[1:]))
