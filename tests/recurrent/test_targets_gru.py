"""The GRU target equals the interpreter (float64, 1e-9: exact by saturation) on the library functions and the
paper's programs in every non-gated conditional mode; its weights run unchanged in ``flax.nnx.GRUCell``; the
sample-and-hold ReLU is exact at and around zero; products are refused with a CompileError unless
gated. Program-level properties shared with the other gated target are in test_targets_gated.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrent.errors import CompileError
from recurrent.lsrl import ForEach, Input, ReLU, f_eq, f_ifelse, f_ifelse_mul, f_larger
from recurrent.lsrl.interpreter import run
from recurrent.targets.gru import GRURNN, compile_gru, load_cell, gru_params, run_gru
from tests.recurrent.test_targets_elman import LIBRARY, S, L, counter


def gru_f64(net, toks):
    with jax.enable_x64(True):
        return np.asarray(jax.jit(run_gru)(gru_params(net, jnp.float64), toks))


def test_relu_sample_and_hold_is_exact_at_zero_and_after_positives():
    x = Input(1)
    prog = ForEach(ReLU(x) * 3 - ReLU(x * -1))
    net = compile_gru(prog)
    assert all(l.width % 2 == 0 for l in net.layers)  # relu lanes take two units (p, q)
    toks = np.array([[[2.0], [-1.0], [0.0], [5.0], [0.0], [-7.0], [-2.0], [1e-3], [0.0]]])
    chex.assert_trees_all_close(gru_f64(net, toks), run(prog, toks), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_library_functions_exact(name):
    prog = ForEach(LIBRARY[name](Input(3)))
    toks = np.random.default_rng(0).integers(-3, 4, size=(3, 12, 3)).astype(np.float64)
    chex.assert_trees_all_close(gru_f64(compile_gru(prog), toks), run(prog, toks), atol=1e-9, rtol=0)


def test_products_are_refused():
    x = Input(3)
    prog = ForEach(f_ifelse_mul(f_eq(x[0], x[2], S), x[1], counter(x)))
    with pytest.raises(CompileError, match=r"layer \d+ \(mul.*target gru.*Multiplicative"):
        compile_gru(prog)


def test_weights_run_in_flax_gru_cell():
    x = Input(3)
    prog = ForEach(f_ifelse(f_larger(x[0], x[1], S), x[2], counter(x) * 2, large_constant=L))
    net = compile_gru(prog)
    toks = np.random.default_rng(1).integers(-3, 4, size=(2, 10, 3)).astype(np.float32)
    h_TxBxW = jnp.swapaxes(jnp.asarray(toks), 0, 1)
    for layer in net.layers:
        cell = load_cell(layer)
        carry = jnp.broadcast_to(jnp.asarray(layer.carry, jnp.float32), (toks.shape[0], layer.width))
        outs = []
        for x_t in h_TxBxW:
            carry, out = cell(carry, x_t)
            outs.append(out)
        h_TxBxW = jnp.stack(outs)
    got = np.swapaxes(np.asarray(h_TxBxW @ net.readout_kernel.astype(np.float32) + net.readout_bias[None, None]), 0, 1)
    chex.assert_trees_all_close(got, run(prog, toks.astype(np.float64)), atol=1e-4, rtol=0)
    chex.assert_trees_all_close(np.asarray(GRURNN(net)(toks)), got, atol=1e-4, rtol=0)
    summary = net.summary()
    assert summary.target == "gru" and summary.widths == tuple(l.width for l in net.layers)
    sizes = sum(l.kernel_i.size + l.bias.size + l.kernel_h.size for l in net.layers)
    assert summary.parameters == sizes + net.readout_kernel.size + 1
