"""The LSTM target equals the interpreter (float64, 1e-9: exact by saturation) on the library functions and the
paper's programs in every non-gated conditional mode; its weights run unchanged in ``flax.nnx.LSTMCell``; the
tanh identity range it relies on holds; products are refused with a CompileError unless
gated. Program-level properties shared with the other gated target are in test_targets_gated.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrent.errors import CompileError
from recurrent.lsrl import ForEach, Input, f_eq, f_ifelse, f_ifelse_mul, f_larger
from recurrent.lsrl.interpreter import run
from recurrent.targets.lstm import LSTMRNN, compile_lstm, load_cell, lstm_params, run_lstm
from tests.recurrent.test_targets_elman import LIBRARY, S, L, counter


def lstm_f64(net, toks):
    with jax.enable_x64(True):
        return np.asarray(jax.jit(run_lstm)(lstm_params(net, jnp.float64), toks))


def test_tanh_is_the_identity_on_the_scaled_range():
    eps = 2.0**-50
    with jax.enable_x64(True):
        x = eps * np.concatenate([-np.logspace(-20, 7, 200), np.logspace(-20, 7, 200)])
        assert np.array_equal(np.asarray(jnp.tanh(jnp.asarray(x))), x)
        assert float(jax.nn.sigmoid(1e3)) == 1.0 and float(jax.nn.sigmoid(-1e3)) == 0.0
    x32 = (eps * np.logspace(-20, 11, 200)).astype(np.float32)
    assert np.array_equal(np.asarray(jnp.tanh(jnp.asarray(x32))), x32)


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_library_functions_exact(name):
    prog = ForEach(LIBRARY[name](Input(3)))
    toks = np.random.default_rng(0).integers(-3, 4, size=(3, 12, 3)).astype(np.float64)
    chex.assert_trees_all_close(lstm_f64(compile_lstm(prog), toks), run(prog, toks), atol=1e-9, rtol=0)


def test_products_are_refused():
    x = Input(3)
    prog = ForEach(f_ifelse_mul(f_eq(x[0], x[2], S), x[1], counter(x)))
    with pytest.raises(CompileError, match=r"layer \d+ \(mul.*target lstm.*Multiplicative"):
        compile_lstm(prog)


def test_weights_run_in_flax_lstm_cell():
    x = Input(3)
    prog = ForEach(f_ifelse(f_larger(x[0], x[1], S), x[2], counter(x) * 2, large_constant=L))
    net = compile_lstm(prog)
    toks = np.random.default_rng(1).integers(-3, 4, size=(2, 10, 3)).astype(np.float32)
    h_TxBxW = jnp.swapaxes(jnp.asarray(toks), 0, 1)
    for layer in net.layers:
        cell = load_cell(layer)
        carry = tuple(jnp.broadcast_to(jnp.asarray(a, jnp.float32), (toks.shape[0], layer.width)) for a in layer.carry)
        outs = []
        for x_t in h_TxBxW:
            carry, out = cell(carry, x_t)
            outs.append(out)
        h_TxBxW = jnp.stack(outs)
    got = np.swapaxes(np.asarray(h_TxBxW @ net.readout_kernel.astype(np.float32) + net.readout_bias[None, None]), 0, 1)
    chex.assert_trees_all_close(got, run(prog, toks.astype(np.float64)), atol=1e-4, rtol=0)
    chex.assert_trees_all_close(np.asarray(LSTMRNN(net)(toks)), got, atol=1e-4, rtol=0)
    summary = net.summary()
    assert summary.target == "lstm" and summary.widths == tuple(l.width for l in net.layers)
    assert summary.parameters == sum(a.size for l in net.layers for a in l.weights()) + net.readout_kernel.size + 1
