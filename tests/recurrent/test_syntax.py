"""The language: operators build the published node types with the right values; validation reports every problem."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recurrent import CompileError
from recurrent.lsrl import (
    Concat,
    ForEach,
    Input,
    LinState,
    Linear,
    Multiplicative,
    ReLU,
    Slice,
    f_relu_identity,
)
from recurrent.lsrl.interpreter import run

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 5, 3))
Y = RNG.normal(size=(2, 5, 3))


def values(make):
    x = Input(6)
    out = make(x[0:3], x[3:6])
    return run(ForEach(out), np.concatenate([X, Y], axis=-1))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda a, b: a + b, X + Y),
        (lambda a, b: a - b, X - Y),
        (lambda a, b: a + 2, X + 2),
        (lambda a, b: 2 + a, X + 2),
        (lambda a, b: a - 0.5, X - 0.5),
        (lambda a, b: 1 - a, 1 - X),
        (lambda a, b: a * 3, 3 * X),
        (lambda a, b: -2 * a, -2 * X),
        (lambda a, b: np.float64(2.5) * a, 2.5 * X),
        (lambda a, b: a / 4, X / 4),
        (lambda a, b: a * Fraction(1, 3), X / 3),
        (lambda a, b: -a, -X),
        (lambda a, b: a[1], X[..., 1:2]),
        (lambda a, b: a[-1], X[..., 2:3]),
        (lambda a, b: b[0:2], Y[..., 0:2]),
        (lambda a, b: Concat([a, b, a]), np.concatenate([X, Y, X], -1)),
        (lambda a, b: ReLU(a), np.maximum(X, 0)),
        (lambda a, b: Multiplicative(Concat([a, b])), X * Y),
        (lambda a, b: f_relu_identity(a), X),
    ],
)
def test_operators_and_primitives(make, expected):
    np.testing.assert_allclose(values(make), expected, rtol=1e-15, atol=1e-15)


def test_linstate_recurrence_and_published_column_convention():
    x = Input(2)
    A = np.array([[0.5, 1.0], [0.0, -1.0]])
    B = np.array([[1.0, 0.0], [2.0, 1.0]])
    s = LinState(x, A, B, init_state=np.array([[1.0], [2.0]]), bias=[0.1, 0.0])
    prog = ForEach(s)
    toks = RNG.normal(size=(7, 2))
    state, ref = np.array([1.0, 2.0]), []
    for u in toks:
        state = A @ state + B @ u + [0.1, 0.0]
        ref.append(state)
    np.testing.assert_allclose(prog(toks.T), np.array(ref).T, rtol=1e-14)
    # one column at a time continues from the current state (streaming); many columns reset first
    prog.reset()
    streamed = np.concatenate([prog(toks[i]) for i in range(7)], axis=1)
    np.testing.assert_allclose(streamed, np.array(ref).T, rtol=1e-14)
    np.testing.assert_allclose(prog(toks.T), np.array(ref).T, rtol=1e-14)


def test_operator_misuse_raises_compile_error():
    x = Input(2)
    with pytest.raises(CompileError, match="variable times a variable"):
        x * x
    with pytest.raises(CompileError, match="division by zero"):
        x / 0
    with pytest.raises(CompileError, match="step"):
        x[0:2:2]


def _messages(make):
    with pytest.raises(CompileError) as info:
        ForEach(make())
    return info.value.problems


def test_validation_reports_every_problem_at_once():
    def broken():
        x = Input(2)
        bad_linear = Linear(x, np.ones((3, 4)), np.zeros(2))  # 4 columns for a dim-2 input, b too short
        odd = Multiplicative(bad_linear)  # width 3
        inf_state = LinState(x, np.array([[np.inf]]), np.ones((1, 2)), [0.0])
        out_of_range = Slice(x, 1, 5)
        return Concat([odd, inf_state, out_of_range, odd + Input(2) * 2])

    problems = _messages(broken)
    text = "\n".join(problems)
    assert "2 Input nodes" in text
    assert "A has 4 columns but its input Input#" in text
    assert "b has 2 entries, expected 3" in text
    assert "odd dim 3" in text
    assert "A has 1 non-finite entries" in text
    assert "slice [1:5] is empty or outside" in text
    assert "sum of Multiplicative#" in text
    assert len(problems) >= 7


def test_validation_no_input_and_cycle():
    x = Input(1)
    a = ReLU(x)
    b = Linear(a, np.eye(1), [0.0])
    a.input = b  # rewiring after construction closes a cycle
    with pytest.raises(CompileError, match=r"cycle: .*ReLU#.* -> .*Linear#") as info:
        ForEach(b)
    assert "no Input node" in str(info.value)


def test_non_finite_and_shape_problems_in_linstate():
    x = Input(1)
    problems = _messages(lambda: LinState(x, np.eye(2), np.ones((3, 1)), [0.0, np.nan], bias=[1.0]))
    text = "\n".join(problems)
    expected = ["B has shape (3, 1), expected (2, 1)", "bias has 1 entries, expected 2", "init_state has 1 non-finite"]
    for fragment in expected:
        assert fragment in text


def test_published_style_program_runs_unchanged():
    """Weights built with Matrix constructors, (n, 1) columns, the (dim, T) call convention and .numpy()."""
    from recurrent.lsrl import Matrix, f_constant, f_larger

    x = Input(dim=1)
    ones = LinState(input=x, A=Matrix.eye(1), B=Matrix.eye(1), init_state=Matrix.zeros(1, 1), name="Ones")
    zeros = LinState(
        input=f_constant(x, 1) - x, A=Matrix.eye(1), B=Matrix.eye(1), init_state=Matrix.zeros(1, 1), name="Zeros"
    )
    diff = Linear(input=Concat([ones, zeros]), A=Matrix.hstack(Matrix.eye(1), -1 * Matrix.eye(1)), b=Matrix.zeros(1, 1))
    prog = ForEach(f_larger(diff, 0.5))
    bits = np.array([[1, 1, 0, 0, 0, 1, 1, 1]], dtype=float)
    out = prog(bits)
    assert out.rows == 1 and out.cols == 8
    counts = np.cumsum(bits[0])
    np.testing.assert_allclose(out.numpy()[0], counts > np.arange(1, 9) - counts, atol=1e-12)
    assert Matrix.SliceMatrix(4, 1, 3).tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
    assert Matrix.diag(1, [[2.0]]).tolist() == [[1, 0], [0, 2]]


def test_what_is_not_a_program_is_refused_with_compile_error():
    """A numpy array where a variable belongs, a ragged or non-numeric matrix, a slice past either end: each is a
    CompileError naming the node and the field, never an AttributeError or a silently clamped slice."""
    x = Input(3)
    for make in (lambda: ReLU(np.ones(3)), lambda: Linear([1.0], np.eye(1)), lambda: Multiplicative("x"),
                 lambda: LinState(np.ones(1), np.eye(1), np.eye(1), [0.0]), lambda: Concat([x, np.ones(2)])):
        with pytest.raises(CompileError, match="must be an LSRL variable, got"):
            make()
    ragged = _messages(lambda: LinState(x, [[1.0, 0.0], [1.0]], np.ones((2, 3)), [0.0, 0.0]))
    assert any("A must hold numbers in a regular array" in p for p in ragged), ragged
    strings = _messages(lambda: Linear(x, [["a", "b", "c"]]))
    assert any("A must hold numbers in a regular array" in p for p in strings), strings
    assert any("slice [1:5] is empty or outside" in p for p in _messages(lambda: x[1:5]))
    assert any("slice [-2:3] is empty or outside" in p for p in _messages(lambda: x[-5:]))
    assert any("slice [3:4] is empty or outside" in p for p in _messages(lambda: x[3]))
    assert ForEach(Concat([x[-1], x[:2], x[1:]])).out_dim == 5  # in-range ends, negative ones included


_JUNK = st.recursive(
    st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=2),
              st.booleans()),
    lambda inner: st.lists(inner, max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(node=st.sampled_from(["Linear", "LinState", "ReLU", "Multiplicative", "Concat", "index"]),
       args=st.lists(_JUNK, min_size=1, max_size=4), as_array=st.booleans())
def test_fuzzed_node_arguments_end_in_compile_error_or_a_program(node, args, as_array):
    """Whatever reaches a constructor (ragged lists, strings, NaN, None, numpy arrays where a variable belongs),
    the outcome is a node that compiles into a ForEach or a CompileError: never another exception."""
    x = Input(2)
    if as_array:
        args = [np.asarray(a, dtype=object) for a in args]
    build = {
        "Linear": lambda: Linear(x, *args[:2]),
        "LinState": lambda: LinState(x, *(args + [None, None])[:3]),
        "ReLU": lambda: ReLU(args[0]),
        "Multiplicative": lambda: Multiplicative(args[0]),
        "Concat": lambda: Concat([x, *args]),
        "index": lambda: x[args[0]],
    }[node]
    try:
        ForEach(build())
    except CompileError:
        pass
