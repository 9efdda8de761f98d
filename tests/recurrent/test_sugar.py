"""Library functions against their closed forms, in float64 and in the exact rational mode."""

from fractions import Fraction

import numpy as np
import pytest

from recurrent import CompileError
from recurrent.lsrl import (
    ForEach,
    Input,
    f_and,
    f_bump,
    f_constant,
    f_eq,
    f_ifelse,
    f_ifelse_mul,
    f_ifelse_step,
    f_ifeq,
    f_larger,
    f_modulo_counter,
    f_neq,
    f_not,
    f_or,
    f_smaller,
    f_step,
)
from recurrent.lsrl.interpreter import run


def ramp(x, scale=1000.0):
    """step(x) = clip(scale x, 0, 1), the closed form of the two-ReLU construction."""
    return np.clip(scale * x, 0.0, 1.0)


def run1(make, *columns, exact=False):
    x = Input(len(columns))
    toks = np.stack(columns, axis=-1)[None]
    return run(ForEach(make(*[x[i] for i in range(len(columns))])), toks, exact=exact)[0, :, 0]


GRID = np.array([-2.0, -1e-3, 0.0, 2e-4, 1e-3, 0.5, 1.0, 3.0])


@pytest.mark.parametrize("scale", [0.1, 1.0, 1000.0, 1e5])
def test_step_is_the_clipped_ramp(scale):
    np.testing.assert_allclose(run1(lambda a: f_step(a, scale), GRID), ramp(GRID, scale), atol=1e-12)
    exact = run1(lambda a: f_step(a, scale), np.array([0.0, 1.0 / scale, 2.0 / scale]), exact=True)
    assert list(exact) == [0, 1, 1]


def test_comparisons_and_logic():
    a = np.array([0.0, 1.0, 2.0, 2.0, -1.0, 0.0, 1.0])
    b = np.array([0.0, 2.0, 1.0, 2.0, -1.0, 1.0, 0.0])
    np.testing.assert_allclose(run1(f_larger, a, b), (a > b).astype(float), atol=1e-12)
    np.testing.assert_allclose(run1(f_smaller, a, b), (a < b).astype(float), atol=1e-12)
    np.testing.assert_allclose(run1(f_eq, a, b), (a == b).astype(float), atol=1e-12)
    np.testing.assert_allclose(run1(f_neq, a, b), (a != b).astype(float), atol=1e-12)
    bits_a, bits_b = np.array([0.0, 0, 1, 1]), np.array([0.0, 1, 0, 1])
    np.testing.assert_allclose(run1(f_and, bits_a, bits_b), bits_a * bits_b, atol=1e-12)
    np.testing.assert_allclose(run1(f_or, bits_a, bits_b), np.maximum(bits_a, bits_b), atol=1e-12)
    np.testing.assert_allclose(run1(lambda c: f_not(c), bits_a), 1 - bits_a, atol=1e-12)
    np.testing.assert_allclose(run1(lambda c: f_larger(c, 0.5), bits_a), bits_a, atol=1e-12)
    np.testing.assert_allclose(run1(lambda c: f_smaller(1.5, c), a), (a > 1.5).astype(float), atol=1e-12)


def test_bump_with_number_and_variable_bounds():
    x = np.array([-1.0, 0.0, 0.3, 0.999, 1.0, 1.5])
    np.testing.assert_allclose(run1(lambda v: f_bump(v, 0.0, 1.0), x), ramp(x) - ramp(x - 1.0), atol=1e-12)
    lb = np.array([-2.0, 0.5, 0.0, 0.0, 1.0, 1.0])
    ub = lb + 1.0
    np.testing.assert_allclose(run1(f_bump, x, lb, ub), ramp(x - lb) - ramp(x - ub), atol=1e-12)
    with pytest.raises(CompileError, match="both be variables or both be numbers"):
        f_bump(Input(1), 0.0, Input(1))


@pytest.mark.parametrize("mode", ["ifelse", "ifelse_step", "ifelse_mul"])
def test_conditionals_select_exactly(mode):
    c = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    t = np.array([5.0, -3.0, 0.25, 7.0, 123.0])
    f = np.array([-1.0, 2.0, 9.0, -0.5, 0.0])
    fn = {
        "ifelse": lambda cv, tv, fv: f_ifelse(cv, tv, fv, large_constant=1e4),
        "ifelse_step": lambda cv, tv, fv: f_ifelse_step(cv, tv, fv, large_constant=1e4),
        "ifelse_mul": f_ifelse_mul,
    }[mode]
    want = np.where(c == 1, t, f)
    np.testing.assert_allclose(run1(fn, c, t, f), want, atol=1e-9)
    assert list(run1(fn, c, t, f, exact=True)) == list(want)
    np.testing.assert_allclose(run1(lambda cv, tv, fv: fn(cv, tv, None), c, t, f), np.where(c == 1, t, 0), atol=1e-9)
    np.testing.assert_allclose(run1(lambda cv, tv, fv: fn(cv, None, fv), c, t, f), np.where(c == 1, 0, f), atol=1e-9)
    np.testing.assert_allclose(run1(lambda cv, tv, fv: fn(cv, 2.0, fv), c, t, f), np.where(c == 1, 2.0, f), atol=1e-9)


def test_ifelse_step_tolerates_inexact_conditions():
    c = np.array([0.1, 0.9, 0.45, 0.55])
    out = run1(lambda cv: f_ifelse_step(cv, 4.0, -4.0, large_constant=100.0), c)
    np.testing.assert_allclose(out, [-4.0, 4.0, -4.0, 4.0], atol=1e-9)


def test_ifeq_and_constant():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([1.0, 0.0, 3.0])
    out = run1(lambda x, y: f_ifeq(x, y, x * 10, y - 1, large_constant=1e3), a, b)
    np.testing.assert_allclose(out, [10, -1, 30], atol=1e-9)
    np.testing.assert_allclose(run1(lambda x: f_constant(x, 2.5), a), [2.5] * 3)
    x = Input(1)
    assert run(ForEach(f_constant(x, [1.0, -2.0])), np.zeros((1, 2, 1))).tolist() == [[[1.0, -2.0]] * 2]


@pytest.mark.parametrize("divisor", [1, 2, 3, 5, 20])
def test_modulo_counter(divisor):
    out = run1(lambda x: f_modulo_counter(x, divisor), np.zeros(50))
    np.testing.assert_allclose(out, np.arange(50) % divisor, atol=1e-9)


def test_modulo_counter_large_divisor_keeps_the_ramp_inside_the_gap():
    out = run1(lambda x: f_modulo_counter(x, 120), np.zeros(130))
    np.testing.assert_allclose(out, np.arange(130) % 120, atol=1e-6)


def test_exact_mode_separates_rounding_from_construction():
    """A condition computed as (x / 10) * 10 - 2 is 1 + 4e-16 in float64; lambda = 1e17 turns that into 44."""
    x = np.array([3.0, 2.0])
    v = np.array([3.0, 3.0])
    make = lambda xv, vv: f_ifelse((xv * 0.1) * 10 - 2, vv, None, large_constant=1e17)  # noqa: E731
    assert list(run1(make, x, v, exact=True)) == [3, 0]
    assert not np.allclose(run1(make, x, v), [3.0, 0.0])
    # where float64 is well conditioned both modes agree
    make = lambda xv, vv: f_ifelse((xv * 0.1) * 10 - 2, vv, None, large_constant=1e3)  # noqa: E731
    np.testing.assert_allclose(np.array(run1(make, x, v, exact=True), float), run1(make, x, v), atol=1e-12)


def test_exact_mode_reads_simple_rationals():
    out = run1(lambda x: x / 3 * 3 - x, np.array([0.1, 1.0, 7.0]), exact=True)
    assert all(v == 0 for v in out)
    assert isinstance(out[0], Fraction)
