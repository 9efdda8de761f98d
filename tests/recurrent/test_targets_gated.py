"""Program-level properties shared by the gated targets (LSTM and GRU): vec2vec and the 20-key tok2tok lookup
equal the interpreter and the ideal answers in float64 (1e-9) in every non-gated conditional mode; float32
answers the lookup; gated products are exact in the multiplicative modes; a counter stays bit-exact over 1e5
tokens."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrent.lsrl import ForEach, Input, LinState, f_eq, f_ifelse_mul, f_larger
from recurrent.lsrl.interpreter import run
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_answers, tok2tok_program
from recurrent.programs.tok2tok import tok2tok_prompts
from recurrent.programs.vec2vec import Vec2VecSpec, random_target, vec2vec_ideal, vec2vec_program
from recurrent.programs.vec2vec import vec2vec_prompts, vec2vec_queries
from recurrent.targets.gru import compile_gru, gru_params, run_gru
from recurrent.targets.lstm import compile_lstm, lstm_params, run_lstm
from tests.recurrent.test_targets_elman import NON_GATED, S, counter

TARGETS = {"lstm": (compile_lstm, lstm_params, run_lstm), "gru": (compile_gru, gru_params, run_gru)}

pytestmark = pytest.mark.parametrize("target", sorted(TARGETS))


def compile_(target):
    return TARGETS[target][0]


def f64(target, net, toks):
    _, params, run_net = TARGETS[target]
    with jax.enable_x64(True):
        return np.asarray(jax.jit(run_net)(params(net, jnp.float64), toks))


@pytest.mark.parametrize("mode", NON_GATED)
def test_vec2vec_exact(target, mode):
    spec = Vec2VecSpec(in_dim=1, out_dim=2, mode=mode)
    prog = vec2vec_program(spec)
    net = compile_(target)(prog)
    f = random_target(2, 1, 2)
    rng = np.random.default_rng(3)
    short = vec2vec_prompts(f, spec, 4, vec2vec_queries(rng, 3, 1, 4, spec.scale))
    chex.assert_trees_all_close(f64(target, net, short), run(prog, short), atol=1e-9, rtol=0)
    q = vec2vec_queries(rng, 8, 1, 64, spec.scale)  # N = 64
    got = f64(target, net, vec2vec_prompts(f, spec, 64, q))[:, -1]
    chex.assert_trees_all_close(got, vec2vec_ideal(f, 64, q), atol=1e-9, rtol=0)


@pytest.mark.parametrize("mode", NON_GATED)
def test_tok2tok_exact_on_20_keys(target, mode):
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode=mode))
    net = compile_(target)(prog)
    rng = np.random.default_rng(4)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 6, replace=False)]
    toks = tok2tok_prompts(queries, keys, values)
    got = f64(target, net, toks)
    chex.assert_trees_all_close(got[:2], run(prog, toks[:2]), atol=1e-9, rtol=0)
    chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-9, rtol=0)


def test_tok2tok_float32_lookups(target):
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode="optimized"))
    net = compile_(target)(prog)
    rng = np.random.default_rng(6)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 8, replace=False)]
    got = np.asarray(jax.jit(TARGETS[target][2])(TARGETS[target][1](net, jnp.float32), tok2tok_prompts(queries, keys, values)))
    chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-3, rtol=0)


def test_gated_products_exact_in_the_multiplicative_modes(target):
    x = Input(3)
    prog = ForEach(f_ifelse_mul(f_eq(x[0], x[2], S), x[1], counter(x)))
    toks = np.random.default_rng(0).integers(-3, 4, size=(3, 12, 3)).astype(np.float64)
    net = compile_(target)(prog, gated_products=True)
    chex.assert_trees_all_close(f64(target, net, toks), run(prog, toks), atol=1e-9, rtol=0)
    rng = np.random.default_rng(4)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 4, replace=False)]
    toks = tok2tok_prompts(queries, keys, values)
    for mode in ("multiplicative", "multiplicative_optimized"):
        prog = tok2tok_program(Tok2TokSpec(key_length=3, mode=mode))
        got = f64(target, compile_(target)(prog, gated_products=True), toks)
        chex.assert_trees_all_close(got[:1], run(prog, toks[:1]), atol=1e-9, rtol=0)
        chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-9, rtol=0)


def test_counter_exact_over_a_long_horizon(target):
    x = Input(1)
    count = LinState(x, np.eye(1), np.eye(1), [0.0])
    prog = ForEach(f_larger(count, 2.5, S) + count)  # the unit counter, exact for 1e5 tokens (< tau / eps)
    toks = np.ones((1, 100_000, 1))
    got = f64(target, compile_(target)(prog), toks)[0, :, 0]
    t = np.arange(1, 100_001, dtype=np.float64)
    chex.assert_trees_all_close(got, t + (t > 2.5), atol=0, rtol=0)
