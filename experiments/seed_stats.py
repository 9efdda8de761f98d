"""Statistics over seeds for the comparison reports: the mean with its 95% Student-t interval, and paired
differences (two variants run on the same seeds).

For n values v_1..v_n with mean m and sample standard deviation s, the 95% interval is
    m +- t_{0.975, n-1} s / sqrt(n),
whose half-width is reported (``ci95``). A paired difference is the same interval over the per-seed differences
a_i - b_i, which removes the part of the spread that both variants share through the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats


def mean_ci95(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """(mean, half-width of the 95% t-interval) of the non-missing values; (None, None) for none, (m, None) for
    one (no interval from one seed)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def standard_error(values: Sequence[float | None]) -> float | None:
    """The standard error of the mean, s / sqrt(n), of the non-missing values; None for fewer than two."""
    vals = [float(v) for v in values if v is not None]
    if len(vals) < 2:
        return None
    mean = sum(vals) / len(vals)
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) / math.sqrt(len(vals))


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float | None, float | None, int]:
    """(mean, ci95 half-width, n) of a[seed] - b[seed] over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds if a[s] is not None and b[s] is not None]
    mean, ci = mean_ci95(diffs)
    return mean, ci, len(diffs)
