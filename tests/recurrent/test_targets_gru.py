"""The GRU target equals the interpreter (float64, 1e-9: exact by saturation) on the library functions and the
paper's programs in every non-gated conditional mode; its weights run unchanged in ``flax.nnx.GRUCell``; the
sample-and-hold ReLU is exact at and around zero; products are refused with a CompileError unless
gated (then exact in the multiplicative modes); float32 answers
the 20-key dictionary lookup."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrent.errors import CompileError
from recurrent.lsrl import ForEach, Input, LinState, ReLU, f_eq, f_ifelse, f_ifelse_mul, f_larger
from recurrent.lsrl.interpreter import run
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_answers, tok2tok_program
from recurrent.programs.tok2tok import tok2tok_prompts
from recurrent.programs.vec2vec import Vec2VecSpec, random_target, vec2vec_ideal, vec2vec_program
from recurrent.programs.vec2vec import vec2vec_prompts, vec2vec_queries
from recurrent.targets.gru import GRURNN, compile_gru, load_cell, gru_params, run_gru
from tests.recurrent.test_targets_elman import LIBRARY, NON_GATED, S, L, counter


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
    got = np.swapaxes(np.asarray(h_TxBxW @ net.readout_kernel.astype(np.float32) + net.readout_bias), 0, 1)
    chex.assert_trees_all_close(got, run(prog, toks.astype(np.float64)), atol=1e-4, rtol=0)
    chex.assert_trees_all_close(np.asarray(GRURNN(net)(toks)), got, atol=1e-4, rtol=0)
    summary = net.summary()
    assert summary.target == "gru" and summary.widths == tuple(l.width for l in net.layers)
    sizes = sum(l.kernel_i.size + l.bias.size + l.kernel_h.size for l in net.layers)
    assert summary.parameters == sizes + net.readout_kernel.size + 1


@pytest.mark.parametrize("mode", NON_GATED)
def test_vec2vec_exact(mode):
    spec = Vec2VecSpec(in_dim=1, out_dim=2, mode=mode)
    prog = vec2vec_program(spec)
    net = compile_gru(prog)
    f = random_target(2, 1, 2)
    rng = np.random.default_rng(3)
    short = vec2vec_prompts(f, spec, 4, vec2vec_queries(rng, 3, 1, 4, spec.scale))
    chex.assert_trees_all_close(gru_f64(net, short), run(prog, short), atol=1e-9, rtol=0)
    q = vec2vec_queries(rng, 8, 1, 64, spec.scale)  # N = 64
    got = gru_f64(net, vec2vec_prompts(f, spec, 64, q))[:, -1]
    chex.assert_trees_all_close(got, vec2vec_ideal(f, 64, q), atol=1e-9, rtol=0)


@pytest.mark.parametrize("mode", NON_GATED)
def test_tok2tok_exact_on_20_keys(mode):
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode=mode))
    net = compile_gru(prog)
    rng = np.random.default_rng(4)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 6, replace=False)]
    toks = tok2tok_prompts(queries, keys, values)
    got = gru_f64(net, toks)
    chex.assert_trees_all_close(got[:2], run(prog, toks[:2]), atol=1e-9, rtol=0)
    chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-9, rtol=0)


def test_tok2tok_float32_lookups():
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode="optimized"))
    net = compile_gru(prog)
    rng = np.random.default_rng(6)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 8, replace=False)]
    got = np.asarray(jax.jit(run_gru)(gru_params(net, jnp.float32), tok2tok_prompts(queries, keys, values)))
    chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-3, rtol=0)


def test_gated_products_exact_in_the_multiplicative_modes():
    x = Input(3)
    prog = ForEach(f_ifelse_mul(f_eq(x[0], x[2], S), x[1], counter(x)))
    toks = np.random.default_rng(0).integers(-3, 4, size=(3, 12, 3)).astype(np.float64)
    net = compile_gru(prog, gated_products=True)
    chex.assert_trees_all_close(gru_f64(net, toks), run(prog, toks), atol=1e-9, rtol=0)
    rng = np.random.default_rng(4)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 4, replace=False)]
    toks = tok2tok_prompts(queries, keys, values)
    for mode in ("multiplicative", "multiplicative_optimized"):
        prog = tok2tok_program(Tok2TokSpec(key_length=3, mode=mode))
        got = gru_f64(compile_gru(prog, gated_products=True), toks)
        chex.assert_trees_all_close(got[:1], run(prog, toks[:1]), atol=1e-9, rtol=0)
        chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-9, rtol=0)


def test_counter_exact_over_a_long_horizon():
    x = Input(1)
    count = LinState(x, np.eye(1), np.eye(1), [0.0])
    prog = ForEach(f_larger(count, 2.5, S) + count)  # the unit counter, exact for 1e5 tokens (< tau / eps)
    toks = np.ones((1, 100_000, 1))
    got = gru_f64(compile_gru(prog), toks)[0, :, 0]
    t = np.arange(1, 100_001, dtype=np.float64)
    chex.assert_trees_all_close(got, t + (t > 2.5), atol=0, rtol=0)
