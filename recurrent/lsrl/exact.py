"""Rational readings of float64 weights, for the interpreter's exact mode.

Weights are stored as float64. The exact mode reads each one as the simplest rational that rounds to it: the
closest fraction with denominator at most ``MAX_DENOMINATOR`` when that fraction rounds back to the same float
(so 0.001 reads as 1/1000 and 1/3 as 1/3), otherwise the shortest decimal that round-trips (so an irrational
constant such as cos(2 pi / 3) is read as its correctly rounded decimal, and computed with exactly).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

MAX_DENOMINATOR = 10**6


def rational(x: float) -> Fraction:
    """The simplest rational whose float64 rounding is ``x`` (see the module docstring)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"cannot read the non-finite value {x!r} as a rational")
    if x == int(x):
        return Fraction(int(x))
    simple = Fraction(x).limit_denominator(MAX_DENOMINATOR)
    if float(simple) == x:
        return simple
    return Fraction(repr(x))


def rational_array(a: np.ndarray) -> np.ndarray:
    """Elementwise ``rational`` as an object array of the same shape."""
    a = np.asarray(a, dtype=np.float64)
    out = np.empty(a.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(a.reshape(-1)):
        flat[i] = rational(v)
    return out
