"""Random programs through every registered target: each compiled model, run in float64, equals the interpreter
(1e-9 of the output scale) on integer prompts.

Each target gets the random programs it hosts: the chains every program; the cell targets (Elman, LSTM, GRU)
every product-free program, since they host a product only as a 0/1-gated conditional; the diagonal targets
(Mamba, Hawk/Griffin) product-free programs whose states decay per channel (diagonal A with entries in [0, 1]),
the recurrences a real diagonal hosts exactly. A program outside a target's family is refused with
``CompileError``, checked here on one program of each kind.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recurrent.errors import CompileError
from recurrent.lsrl import ForEach, Input, LinState, Multiplicative
from recurrent.lsrl.interpreter import run
from recurrent.targets.registry import TARGETS
from tests.recurrent.test_compile import assert_same, random_program

CHAINS = ("linear_rnn", "linear_rnn_assoc")
DIAGONAL = ("mamba", "griffin")
T = 7


def family(target: str) -> dict:
    if target in CHAINS:
        return {}
    return {"products": False, "diagonal_states": target in DIAGONAL}


def run_target(name: str, prog, toks: np.ndarray) -> np.ndarray:
    target = TARGETS[name]
    model = target.build(prog, False, toks.shape[1])
    with jax.enable_x64(True):
        return np.asarray(target.runner(model)(target.params(model, jnp.float64), jnp.asarray(toks)))


def test_every_registered_target_is_covered():
    assert set(TARGETS) == {*CHAINS, *DIAGONAL, "elman", "lstm", "gru"}


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n_nodes=st.integers(1, 10))
def test_random_programs_run_as_the_interpreter(name, seed, n_nodes):
    prog = random_program(seed, n_nodes, **family(name))
    toks = np.random.default_rng(seed).integers(-2, 3, size=(2, T, prog.in_dim)).astype(np.float64)
    assert_same(run_target(name, prog, toks), run(prog, toks))


@pytest.mark.parametrize("name", sorted(set(TARGETS) - set(CHAINS)))
def test_a_product_of_two_program_values_is_refused(name):
    x = Input(2)
    prog = ForEach(Multiplicative(LinState(x, np.eye(2), np.eye(2), [0.0, 0.0])))
    with pytest.raises(CompileError):
        TARGETS[name].build(prog, False, T)


@pytest.mark.parametrize("name", DIAGONAL)
def test_a_rotation_driven_by_the_input_is_refused(name):
    x = Input(2)
    rotation = np.array([[0.0, -1.0], [1.0, 0.0]])
    with pytest.raises(CompileError):
        TARGETS[name].build(ForEach(LinState(x, rotation, np.eye(2), [0.0, 0.0])), False, T)
