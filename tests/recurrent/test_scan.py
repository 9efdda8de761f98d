"""Jitted execution of a compiled chain: float64 equals the interpreter, sequential equals associative scan,
float32 stays close, a batch sharded over the 8-device mesh gives the same outputs, and nothing retraces."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recurrent import CompileError
from recurrent.chain import evaluate
from recurrent.compile import compile_program
from recurrent.lsrl import (
    Concat,
    ForEach,
    Input,
    LinState,
    Multiplicative,
    f_ifelse_mul,
    f_larger,
    f_modulo_counter,
)
from recurrent.lsrl.interpreter import run
from recurrent.scan import chain_params, chain_kinds, linear_recurrence, run_chain
from recurrent.targets.linear_rnn import LinearRNN
from runtime import make_mesh
from runtime import sharding as sh

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose


@pytest.fixture(scope="module")
def program_and_reference():
    x = Input(2)
    count = LinState(x[0], np.eye(1), np.eye(1), [0.0])
    decay = LinState(x, np.array([[0.5, 0.25], [0.0, 0.75]]), np.eye(2), [1.0, -1.0])
    mod = f_modulo_counter(x, 3)
    gated = f_ifelse_mul(f_larger(x[1], 0.0, scale=1024.0), decay[0:1], count)
    out = Concat([mod, gated, Multiplicative(Concat([decay, x]))])
    prog = ForEach(out)
    toks = np.random.default_rng(0).normal(size=(8, 40, 2))
    return prog, compile_program(prog), toks, run(prog, toks)


@pytest.mark.parametrize("associative", [False, True])
def test_float64_module_equals_interpreter(program_and_reference, associative):
    _, chain, toks, want = program_and_reference
    with jax.enable_x64(True):
        model = LinearRNN(chain, dtype=jnp.float64, associative=associative)
        got = np.asarray(nnx.jit(lambda m, x: m(x))(model, toks))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * max(1.0, np.abs(want).max()))
    np.testing.assert_allclose(evaluate(chain, toks), want, rtol=0, atol=1e-9 * max(1.0, np.abs(want).max()))


def test_float32_is_close_and_the_default(program_and_reference):
    _, chain, toks, want = program_and_reference
    got = np.asarray(LinearRNN(chain)(toks))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_float64_without_x64_is_refused(program_and_reference):
    _, chain, _, _ = program_and_reference
    if jax.config.jax_enable_x64:
        pytest.skip("64-bit mode is on for the whole session")
    with pytest.raises(CompileError, match="enable_x64"):
        LinearRNN(chain, dtype=jnp.float64)


def test_linear_recurrence_against_a_loop():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(3, 3)) * 0.4
    s0 = rng.normal(size=3)
    z = rng.normal(size=(2, 17, 3))
    s, ref = np.broadcast_to(s0, (2, 3)), []
    for t in range(17):
        s = s @ A.T + z[:, t]
        ref.append(s)
    ref = np.stack(ref, axis=1)
    with jax.enable_x64(True):
        for assoc in (False, True):
            got = linear_recurrence(jnp.asarray(A), jnp.asarray(s0), jnp.asarray(z), associative=assoc)
            np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-12, atol=1e-12)


def test_sharded_batch_and_no_retrace(program_and_reference):
    _, chain, toks, want = program_and_reference
    mesh = make_mesh()
    params = chain_params(chain, jnp.float32)
    kinds = chain_kinds(chain)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(p, x):
        with sh.activate(mesh):
            return run_chain(p, kinds, sh.constrain(x, ("batch", "seq", None)))

    x = jax.device_put(jnp.asarray(toks, jnp.float32), sh.logical_to_sharding(("batch", "seq", None), mesh))
    assert len(x.sharding.device_set) == 8
    first = forward(params, x)
    second = forward(params, x * 1.0)
    np.testing.assert_allclose(np.asarray(first), want, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_bfloat16_runs_where_its_precision_allows():
    """bf16 keeps steps exact while scale * |value| < 2^8 (z - 1 must round to itself minus one)."""
    from recurrent.programs.counting import ones_vs_zeros_answers, ones_vs_zeros_program

    chain = compile_program(ones_vs_zeros_program(scale=16.0))
    bits = np.random.default_rng(3).integers(0, 2, size=(4, 12)).astype(np.float64)
    got = run_chain(chain_params(chain, jnp.bfloat16), chain_kinds(chain), bits[..., None])
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32)[..., 0], ones_vs_zeros_answers(bits))
