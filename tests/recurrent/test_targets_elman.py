"""The Elman ReLU RNN target equals the interpreter exactly (float64, 1e-9) on the library functions and the
paper's programs in every non-gated conditional mode; its weights run unchanged in ``flax.nnx.SimpleCell``;
non-negative states take one unit, signed ones two; products are refused with a CompileError; float32 answers
the 20-key dictionary lookup."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recurrent.errors import CompileError
from recurrent.lsrl import (
    ForEach,
    Input,
    LinState,
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
    f_relu_identity,
    f_smaller,
    f_step,
)
from recurrent.lsrl.interpreter import run
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_answers, tok2tok_program
from recurrent.programs.tok2tok import tok2tok_prompts
from recurrent.programs.vec2vec import Vec2VecSpec, random_target, vec2vec_ideal, vec2vec_program
from recurrent.programs.vec2vec import vec2vec_prompts, vec2vec_queries
from recurrent.targets.elman import ElmanRNN, compile_elman, elman_params, run_elman

NON_GATED = ("direct", "optimized", "step_optimized")
S, L = 1024.0, 1024.0  # dyadic slope and lambda: float64 rounds nothing on integer tokens


def counter(x):
    return LinState(x[0], np.eye(1), np.eye(1), [0.0])


LIBRARY = {
    "constant": lambda x: f_constant(x, [1.5, -2.0]) + x[0:2],
    "step": lambda x: f_step(x - 0.5, S),
    "bump": lambda x: f_bump(x[0], x[1], x[1] + 2, S),
    "eq": lambda x: f_eq(x[0], x[1], S),
    "neq": lambda x: f_neq(x[0:2], x[1:3], S),
    "not": lambda x: f_not(f_larger(x[0], x[1], S)),
    "ifeq": lambda x: f_ifeq(x[0], x[1], x[2], counter(x), scale=S, large_constant=L),
    "ifelse": lambda x: f_ifelse(f_larger(x[0], x[1], S), x[2], counter(x) * 2, large_constant=L),
    "ifelse_step": lambda x: f_ifelse_step(f_smaller(x[0], x[1], S), counter(x), x[2], large_constant=L, scale=S),
    "larger": lambda x: f_larger(counter(x), x[1], S),
    "smaller": lambda x: f_smaller(x, x * 2, S),
    "and": lambda x: f_and(f_larger(x[0], 0.5, S), f_larger(x[1], 0.5, S), S),
    "or": lambda x: f_or(f_larger(x[0], 0.5, S), f_smaller(x[2], 0.5, S), S),
    "modulo_counter": lambda x: f_modulo_counter(x, 3) + f_modulo_counter(x, 4) * 10,
    "relu_identity": lambda x: f_relu_identity(counter(x) - x[1]),
    "signed_state": lambda x: LinState(x[0:2] - x[1:3], [[0.5, -1.0], [1.0, 0.25]], np.eye(2), [1.0, -2.0]),
}


def elman_f64(net, toks):
    with jax.enable_x64(True):
        return np.asarray(jax.jit(run_elman)(elman_params(net, jnp.float64), toks))


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_library_functions_exact(name):
    prog = ForEach(LIBRARY[name](Input(3)))
    toks = np.random.default_rng(0).integers(-3, 4, size=(3, 12, 3)).astype(np.float64)
    chex.assert_trees_all_close(elman_f64(compile_elman(prog), toks), run(prog, toks), atol=1e-9, rtol=0)


def test_products_are_refused():
    x = Input(3)
    prog = ForEach(f_ifelse_mul(f_eq(x[0], x[2], S), x[1], counter(x)))
    with pytest.raises(CompileError, match=r"layer \d+ \(mul.*target elman.*Multiplicative"):
        compile_elman(prog)


def test_nonnegative_states_take_one_unit_signed_two():
    x = Input(1)
    ones = LinState(f_constant(x, 1.0), np.eye(1), np.eye(1), [0.0])  # 1, 2, 3, ...: non-negative
    net = compile_elman(ForEach(ones))
    assert net.layers[0].width == 1 and net.layers[0].recurrent == 1
    signed = LinState(x, np.eye(1), np.eye(1), [0.0])  # sum of signed tokens
    net = compile_elman(ForEach(signed))
    assert net.layers[0].width == 2 and net.layers[0].recurrent == 2
    summary = net.summary()
    assert summary.widths == (2,) and summary.target == "elman"
    assert summary.parameters == 2 * 1 + 2 + 4 + 2 * 1 + 1  # kernel_i, bias, kernel_h, readout
    toks = np.array([[[2.0], [-5.0], [1.0], [4.0]]])
    chex.assert_trees_all_close(elman_f64(net, toks)[0, :, 0], np.array([2.0, -3.0, -2.0, 2.0]))


def test_weights_run_in_flax_simple_cell():
    x = Input(3)
    prog = ForEach(f_ifelse(f_larger(x[0], x[1], S), x[2], counter(x) * 2, large_constant=L))
    net = compile_elman(prog)
    toks = np.random.default_rng(1).integers(-3, 4, size=(2, 10, 3)).astype(np.float32)
    h_TxBxW = np.swapaxes(toks, 0, 1)
    for layer in net.layers:
        cell = nnx.SimpleCell(layer.kernel_i.shape[0], layer.width, activation_fn=jax.nn.relu, rngs=nnx.Rngs(0))
        cell.dense_i.kernel[...] = jnp.asarray(layer.kernel_i, jnp.float32)
        cell.dense_i.bias[...] = jnp.asarray(layer.bias, jnp.float32)
        cell.dense_h.kernel[...] = jnp.asarray(layer.kernel_h, jnp.float32)
        carry = jnp.broadcast_to(jnp.asarray(layer.carry, jnp.float32), (toks.shape[0], layer.width))
        outs = []
        for x_t in h_TxBxW:
            carry, out = cell(carry, x_t)
            outs.append(out)
        h_TxBxW = jnp.stack(outs)
    got = np.swapaxes(np.asarray(h_TxBxW @ net.readout_kernel + net.readout_bias[None, None]), 0, 1)
    chex.assert_trees_all_close(got, run(prog, toks.astype(np.float64)), atol=1e-5, rtol=0)
    chex.assert_trees_all_close(np.asarray(ElmanRNN(net)(toks)), got, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", NON_GATED)
def test_vec2vec_exact(mode):
    spec = Vec2VecSpec(in_dim=1, out_dim=2, mode=mode)
    prog = vec2vec_program(spec)
    net = compile_elman(prog)
    f = random_target(2, 1, 2)
    rng = np.random.default_rng(3)
    short = vec2vec_prompts(f, spec, 4, vec2vec_queries(rng, 3, 1, 4, spec.scale))
    chex.assert_trees_all_close(elman_f64(net, short), run(prog, short), atol=1e-9, rtol=0)
    q = vec2vec_queries(rng, 8, 1, 64, spec.scale)  # N = 64
    got = elman_f64(net, vec2vec_prompts(f, spec, 64, q))[:, -1]
    chex.assert_trees_all_close(got, vec2vec_ideal(f, 64, q), atol=1e-9, rtol=0)


@pytest.mark.parametrize("mode", NON_GATED)
def test_tok2tok_exact_on_20_keys(mode):
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode=mode))
    net = compile_elman(prog)
    rng = np.random.default_rng(4)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 6, replace=False)]
    toks = tok2tok_prompts(queries, keys, values)
    got = elman_f64(net, toks)
    chex.assert_trees_all_close(got[:2], run(prog, toks[:2]), atol=1e-9, rtol=0)
    chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-9, rtol=0)


def test_tok2tok_float32_lookups():
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode="optimized"))
    net = compile_elman(prog)
    rng = np.random.default_rng(6)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 8, replace=False)]
    got = np.asarray(jax.jit(run_elman)(elman_params(net, jnp.float32), tok2tok_prompts(queries, keys, values)))
    chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-3, rtol=0)
