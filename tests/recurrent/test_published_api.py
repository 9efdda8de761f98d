"""The published LSRL interface on top of this package: per-node state and hooks, streaming calls, the graph
methods, save/load, the symbolic (exact) mode, and ``simplify()`` leaving a path graph that computes the same
function with the compiled weights."""

import numpy as np
import pytest

from recurrent import CompileError
from recurrent.compile import compile_program
from recurrent.chain import evaluate
from recurrent.lsrl import (ForEach, Input, LinState, Linear, Matrix, MatrixMode, Multiplicative, ReLU, Concat,
                            f_modulo_counter, f_ifelse_mul, f_larger, matrix_mode, set_global_matrix_mode)
from recurrent.lsrl import interpreter
from recurrent.lsrl.graph_view import is_path_graph


def counter_program():
    inp = Input(1)
    count = LinState(inp, Matrix.eye(1), Matrix.zeros(1, 1), Matrix([[0.0]]), bias=Matrix([[1.0]]))
    return inp, count, ForEach(count)


def test_a_single_token_continues_from_the_states_a_multi_token_call_left():
    _, count, prog = counter_program()
    np.testing.assert_array_equal(prog(np.zeros((1, 3))), [[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(count.state, [[3.0]])
    np.testing.assert_array_equal(prog(np.zeros((1, 1))), [[4.0]])
    np.testing.assert_array_equal(prog(np.zeros((1, 1))), [[5.0]])
    np.testing.assert_array_equal(prog(np.zeros((1, 2))), [[1.0, 2.0]])  # several tokens: a fresh sequence
    prog.reset()
    np.testing.assert_array_equal(count.state, [[0.0]])


def test_hooks_see_every_token_and_do_not_change_the_values():
    inp = Input(2)
    mod = f_modulo_counter(inp, 3)
    out = f_ifelse_mul(f_larger(mod, 0.5), inp[0:1], inp[1:2])
    prog = ForEach(out)
    x = np.random.default_rng(0).standard_normal((2, 7))
    plain = np.asarray(prog(x))
    states, before = [], []
    for node in prog.get_state_variables():
        node.hooks["after_forward"].append(lambda n, o, *a: states.append(np.asarray(n.state).copy()))
        node.hooks["before_forward"].append(lambda n, *a: before.append(len(a)))
    hooked = np.asarray(prog(x))
    np.testing.assert_allclose(hooked, plain, rtol=0, atol=1e-12)
    assert len(states) == 7 * len(prog.get_state_variables()) and set(before) == {1}


def test_every_node_steps_one_token_as_the_interpreter_does():
    rng = np.random.default_rng(1)
    inp = Input(3)
    lin = Linear(inp, rng.standard_normal((4, 3)), rng.standard_normal(4))
    relu = ReLU(lin)
    cat = Concat([relu, lin])
    mul = Multiplicative(cat)
    state = LinState(mul, 0.5 * np.eye(4), rng.standard_normal((4, 4)), rng.standard_normal(4),
                     bias=rng.standard_normal(4))
    prog = ForEach(state)
    x = rng.standard_normal((3, 5))
    reference = interpreter.run(prog, x.T[None])[0].T
    state.reset()
    for t in range(5):
        u = inp(x[:, t : t + 1])
        h = lin(u)
        m = mul(cat(relu(h), h))
        np.testing.assert_allclose(state(m), reference[:, t : t + 1], rtol=1e-12)


def test_graph_methods_parameter_count_and_save_load(tmp_path):
    inp, count, prog = counter_program()
    graph = prog.graph()
    assert set(graph.nodes) == {inp, count} and list(graph.edges) == [(inp, count)]
    assert prog.topological_sort() == [inp, count] and prog.get_state_variables() == [count]
    assert prog.parameter_count == 1 + 1 + 1  # A, B, bias: a property, as published
    prog.validate_graph()
    prog(np.zeros((1, 2)))
    prog.save(str(tmp_path / "sub" / "counter.pkl"))
    loaded = ForEach.load(str(tmp_path / "sub" / "counter.pkl"))
    np.testing.assert_array_equal(loaded(np.zeros((1, 1))), [[3.0]])  # the saved state travels
    (tmp_path / "x.pkl").write_bytes(__import__("pickle").dumps([1]))
    with pytest.raises(CompileError, match="not a ForEach"):
        ForEach.load(str(tmp_path / "x.pkl"))


def test_symbolic_mode_is_exact_where_float64_rounds():
    inp = Input(1)
    tenth = LinState(inp, Matrix.eye(1), Matrix.zeros(1, 1), Matrix([[0.0]]), bias=Matrix([[0.1]]))
    prog = ForEach(tenth - 1.0)
    assert prog(np.zeros((1, 10)))[0, -1] != 0.0  # ten float64 additions of 0.1 miss 1
    with matrix_mode(MatrixMode.SYMBOLIC):
        assert prog(np.zeros((1, 10)))[0, -1] == 0.0
        assert prog(np.zeros((1, 1)))[0, 0] == pytest.approx(0.1, abs=0)  # streaming stays exact
    set_global_matrix_mode(MatrixMode.NUMERIC)
    with pytest.raises(ValueError, match="MatrixMode"):
        set_global_matrix_mode("symbolic")


@pytest.mark.parametrize("build", [
    lambda inp: f_modulo_counter(inp, 5),
    lambda inp: f_ifelse_mul(f_larger(inp[0:1], inp[1:2]), inp[0:1] * 2.0, inp[1:2] - 1.0),
    lambda inp: Concat([ReLU(inp[0:1] - inp[1:2]), inp[1:2]]) + Concat([inp[0:1], inp[0:1]]),
])
def test_simplify_leaves_a_path_graph_with_the_compiled_weights(build):
    prog = ForEach(build(Input(2)))
    x = np.random.default_rng(2).uniform(-1, 1, (2, 12))
    before = np.asarray(prog(x))
    chain = compile_program(prog)
    assert prog.simplify() is prog
    assert is_path_graph(prog.graph())
    after = np.asarray(prog(x))
    np.testing.assert_allclose(after, before, atol=1e-9)
    np.testing.assert_allclose(after, evaluate(chain, x.T[None])[0].T, atol=1e-9)
    kinds = [type(n).__name__ for n in prog.topological_sort()]
    assert kinds[0] == "Input" and kinds[-1] == "Linear"
