"""The LSRL library functions (Petrov et al., 2024, Sec. 3 and App. A), built from the primitives.

Comparisons are soft: ``f_step`` is a ReLU ramp of width 1/scale, so an input within 1/scale of a threshold
gives a blended value, and programs put thresholds at half-integers. The non-gated conditionals need a large
constant lambda (``large_constant``) that must exceed every value they gate; the gated ``f_ifelse_mul`` needs
none and is exact for a binary condition. Names, argument names and defaults (scale = 1000, lambda = 1e10) are
those of the published library.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recurrent.errors import CompileError
from recurrent.lsrl.syntax import Concat, LinState, Linear, Multiplicative, ReLU, Variable, _is_scalar

Value = Variable | int | float


def _check_pair(x: Any, y: Any, what: str) -> None:
    xs, ys = isinstance(x, Variable), isinstance(y, Variable)
    if not (xs or ys):
        raise CompileError(f"{what}: at least one operand must be an LSRL variable, got two numbers")
    if (not xs and not _is_scalar(x)) or (not ys and not _is_scalar(y)):
        raise CompileError(f"{what}: operands must be variables or scalars, got {type(x).__name__}, {type(y).__name__}")
    if xs and ys and x.dim != y.dim:
        raise CompileError(f"{what}: operands have dims {x.dim} and {y.dim}; they must be equal")


def f_constant(input: Variable, value: Any) -> Variable:
    """The constant ``value`` at every token: Linear(0, value) on ``input`` (which only fixes the graph position)."""
    v = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if v.ndim != 1:
        raise CompileError(f"f_constant: value must be a scalar or a vector, got shape {v.shape}")
    r = Linear(input, np.zeros((v.shape[0], input.dim)), v, name="Const")
    r.always_positive = bool(np.all(v >= 0))
    return r


def f_step(input: Variable, scale: float = 1000) -> Variable:
    """step(x) = ReLU(z) - ReLU(z - 1) with z = scale x: 0 for x <= 0, 1 for x >= 1/scale, linear in between.

    The published form ReLU(scale x) - scale ReLU(x - 1/scale) is the same function, but it rounds x - 1/scale
    (1/1000 is not a float) and multiplies that rounding by scale: for a counter x = 500 in float32 the step
    is 1 +- 0.03, and the next step of that bit flips it. Here both ReLUs read the same z = scale x, and z - 1
    is exact wherever z is (|z| < 2^24 in float32 for integer z), so the step of such an input is exactly 0 or 1.
    """
    if not _is_scalar(scale) or not float(scale) > 0:
        raise CompileError(f"f_step: scale must be a positive number, got {scale!r}")
    z = input * float(scale)
    r = ReLU(z) - ReLU(z - 1.0)
    r.always_positive = True
    return r


def f_bump(input: Variable, lb: Value, ub: Value, scale: float = 1000) -> Variable:
    """bump(x; lb, ub) = step(x - lb) - step(x - ub), about the indicator of [lb, ub).

    The bounds are both numbers or both variables of the input's dim.
    """
    if isinstance(lb, Variable) != isinstance(ub, Variable):
        raise CompileError("f_bump: lb and ub must both be variables or both be numbers")
    for b in (lb, ub):
        if isinstance(b, Variable) and b.dim != input.dim:
            raise CompileError(f"f_bump: bound {b.label()} has dim {b.dim}, the input {input.dim}")
    r = f_step(input - lb, scale=scale) - f_step(input - ub, scale=scale)
    r.always_positive = True
    return r


def f_larger(x: Value, y: Value, scale: float = 1000) -> Variable:
    """[x > y] as step(x - y) (elementwise)."""
    _check_pair(x, y, "f_larger")
    r = f_step(x - y, scale=scale)
    r.always_positive = True
    return r


def f_smaller(x: Value, y: Value, scale: float = 1000) -> Variable:
    """[x < y] as step(y - x) (elementwise)."""
    _check_pair(x, y, "f_smaller")
    r = f_step(y - x, scale=scale)
    r.always_positive = True
    return r


def f_eq(x: Value, y: Value, scale: float = 1000) -> Variable:
    """[x == y] as step(1 - step(x - y) - step(y - x)): 1 when |x - y| < 1/scale-ish, 0 when |x - y| >= 1/scale."""
    _check_pair(x, y, "f_eq")
    r = f_step(-1 * (f_step(x - y, scale=scale) + f_step(y - x, scale=scale) - 1), scale=scale)
    r.always_positive = True
    return r


def f_neq(x: Value, y: Value, scale: float = 1000) -> Variable:
    """[x != y] as step(step(x - y) + step(y - x))."""
    _check_pair(x, y, "f_neq")
    r = f_step(f_step(x - y, scale=scale) + f_step(y - x, scale=scale), scale=scale)
    r.always_positive = True
    return r


def f_not(x: Variable) -> Variable:
    """not x = 1 - x for x in {0, 1}."""
    r = 1 - x
    r.always_positive = True
    return r


def f_and(x: Variable, y: Variable, scale: float = 1000) -> Variable:
    """x and y = ReLU(step(x) + step(y) - 1)."""
    r = ReLU(f_step(x, scale=scale) + f_step(y, scale=scale) - 1)
    r.always_positive = True
    return r


def f_or(x: Variable, y: Variable, scale: float = 1000) -> Variable:
    """x or y = step(x + y)."""
    r = f_step(x + y, scale=scale)
    r.always_positive = True
    return r


def _gate_off(v: Value, k: Variable, large_constant: float) -> Variable:
    """g(v, k) = ReLU(v - lambda k) - ReLU(-v - lambda k): v when k = 0, 0 when k = 1 (valid while |v| < lambda)."""
    return ReLU(k * (-large_constant) + v) - ReLU(k * (-large_constant) - v)


def f_ifelse(
    condition: Variable, t_val: Value | None, f_val: Value | None, large_constant: float = 1e10
) -> Variable:
    """c ? t : f without gating: g(f, c) + g(t, 1 - c) with g from ``_gate_off``; a missing branch is 0.

    Exact for c in {0, 1} and |t|, |f| < lambda; lambda should bound the gated values (a far larger lambda
    costs float precision: lambda times the step slope ends up in one weight).
    """
    if t_val is None and f_val is None:
        raise CompileError("f_ifelse: at least one of t_val and f_val must be given")
    if t_val is None:
        return _gate_off(f_val, condition, large_constant)
    if f_val is None:
        return _gate_off(t_val, f_not(condition), large_constant)
    return _gate_off(f_val, condition, large_constant) + _gate_off(t_val, f_not(condition), large_constant)


def f_ifelse_step(
    condition: Variable,
    t_val: Value | None,
    f_val: Value | None,
    large_constant: float = 1e10,
    scale: float = 1000,
) -> Variable:
    """``f_ifelse`` with the condition re-binarised by a step at 1/2, so conditions near 0 or 1 are tolerated.

    Each branch is ReLU(-lambda + lambda s + v) - ReLU(-lambda + lambda s - v) with s = step(c - 1/2) for t and
    s = step(1/2 - c) for f.
    """
    if t_val is None and f_val is None:
        raise CompileError("f_ifelse_step: at least one of t_val and f_val must be given")

    def branch(v: Value, on: Variable) -> Variable:
        gate = f_step(on, scale=scale) * large_constant - large_constant
        return ReLU(gate + v) - ReLU(gate - v)

    parts = []
    if f_val is not None:
        parts.append(branch(f_val, 0.5 - condition))
    if t_val is not None:
        parts.append(branch(t_val, condition - 0.5))
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _as_variable(v: Value, like: Variable) -> Variable:
    if isinstance(v, Variable):
        return v
    return f_constant(like, np.full(like.dim, float(v)))


def f_ifelse_mul(condition: Variable, t_val: Value | None, f_val: Value | None) -> Variable:
    """c ? t : f with a multiplicative gate: c t + (1 - c) f, exact for binary c and free of large constants.

    Both branches: Multiplicative over [c; 1 - c; t; f] followed by Linear [I I]; one branch is a single
    product Multiplicative([c; t]) or Multiplicative([1 - c; f]). c, t and f must have the same dim.
    """
    if t_val is None and f_val is None:
        raise CompileError("f_ifelse_mul: at least one of t_val and f_val must be given")
    if t_val is None:
        return Multiplicative(Concat([f_not(condition), _as_variable(f_val, condition)]))
    if f_val is None:
        return Multiplicative(Concat([condition, _as_variable(t_val, condition)]))
    m = Multiplicative(
        Concat([condition, f_not(condition), _as_variable(t_val, condition), _as_variable(f_val, condition)])
    )
    return Linear(m, np.hstack([np.eye(condition.dim), np.eye(condition.dim)]), np.zeros(condition.dim))


def f_ifeq(
    x: Value,
    y: Value,
    t_val: Value | None,
    f_val: Value | None,
    scale: float = 1000,
    large_constant: float = 1e10,
) -> Variable:
    """(x == y) ? t : f = f_ifelse(f_eq(x, y), t, f)."""
    return f_ifelse(f_eq(x, y, scale=scale), t_val, f_val, large_constant=large_constant)


def f_modulo_counter(dummy_input: Variable, divisor: int, scale: float | None = None) -> Variable:
    """t mod d for t = 0, 1, 2, ... (the input only fixes the graph position).

    A 2-D LinState rotates by R = rot(2 pi / d) from s_0 = R^{-1} e_1, so s_t = R^t e_1; a Linear takes the dot
    products with R^i e_1 (i < d), which is 1 at i = t mod d and at most cos(2 pi / d) elsewhere; ``f_larger``
    against cos(pi / d) makes that one-hot, and a Linear [0, 1, ..., d-1] reads out the index. ``scale`` defaults
    to the published 1000, raised where the ramp would not fit between cos(pi / d) and 1 (large d).
    """
    if not isinstance(divisor, (int, np.integer)) or divisor < 1:
        raise CompileError(f"f_modulo_counter: divisor must be a positive int, got {divisor!r}")
    d = int(divisor)
    angle = 2 * math.pi / d
    c, s = math.cos(angle), math.sin(angle)
    R = np.array([[c, -s], [s, c]])
    cycler = LinState(
        dummy_input, A=R, B=np.zeros((2, dummy_input.dim)), init_state=np.array([c, -s]), name="ModuloCycler"
    )
    directions = np.array([[math.cos(i * angle), math.sin(i * angle)] for i in range(d)])
    indicator = Linear(cycler, directions, np.zeros(d), name="ModuloIndicator")
    threshold = math.cos(angle / 2)
    if scale is None:
        scale = max(1000.0, 4.0 / (1.0 - threshold))
    one_hot = f_larger(indicator, threshold, scale=scale)
    out = Linear(one_hot, np.arange(d, dtype=np.float64)[None, :], np.zeros(1), name="ModuloValue")
    out.always_positive = True
    return out
