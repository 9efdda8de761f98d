"""The Mamba target equals the interpreter (float64, 1e-9) on the library functions and on the paper's programs
in all five conditional modes, run both by ``run_mamba`` and by an independent per-timestep NumPy loop of the
published selective-scan equations written here; the diagonal lowering it rests on preserves the chain; float32
answers the 20-key lookup; an accumulator stays exact over 1e5 tokens. Programs no diagonal layer hosts raise a
CompileError naming layer, target and reason: a rotation or dense block driven by the input (the library's
``signed_state``), a decay outside [0, 1], a shift register longer than the conv. None of the paper's programs is
refused: their rotations (modulo counters) are input-free and their shift register has 4 slots."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrent.chain import evaluate as chain_evaluate
from recurrent.compile import compile_program
from recurrent.errors import CompileError
from recurrent.lsrl import Concat, ForEach, Input, LinState, f_modulo_counter
from recurrent.lsrl.interpreter import run
from recurrent.programs import MODES
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_answers, tok2tok_program
from recurrent.programs.tok2tok import tok2tok_prompts
from recurrent.programs.vec2vec import Vec2VecSpec, random_target, vec2vec_ideal, vec2vec_program
from recurrent.programs.vec2vec import vec2vec_prompts, vec2vec_queries
from recurrent.passes.diagonal import evaluate as diagonal_evaluate
from recurrent.passes.diagonal import lower_to_diagonal
from recurrent.targets.mamba import MambaRNN, compile_mamba, mamba_params, run_mamba
from tests.recurrent.test_targets_elman import LIBRARY

HOSTED = {k: v for k, v in LIBRARY.items() if k != "signed_state"}


def silu(v):
    return v / (1.0 + np.exp(-v))


def softplus(v):
    return np.where(v > 20.0, v, np.log1p(np.exp(np.minimum(v, 20.0))))  # the reference's threshold 20


def reference_mamba(net, toks):
    """Token by token: in_proj, width-4 causal depthwise conv, SiLU, x_proj, Delta = softplus(dt_proj(.)),
    A_bar = exp(Delta A), B_bar = Delta B, h = A_bar h + B_bar x, y = C h + D x, y SiLU(z), out_proj."""
    u = np.asarray(toks, np.float64)
    with np.errstate(over="ignore"):
        for blk in net.blocks:
            p = blk.arrays
            inner, n = p["A_log"].shape
            rank = p["dt_proj.weight"].shape[1]
            A = -np.exp(p["A_log"])
            window = np.zeros((u.shape[0], 4, inner))
            h = np.zeros((u.shape[0], inner, n))
            outs = []
            for t in range(u.shape[1]):
                xz = u[:, t] @ p["in_proj.weight"].T + p["in_proj.bias"]
                window = np.concatenate([window[:, 1:], xz[:, None, :inner]], axis=1)
                x = silu(np.einsum("bkd,dk->bd", window, p["conv1d.weight"][:, 0, :]) + p["conv1d.bias"])
                dbl = x @ p["x_proj.weight"].T
                dt, B, C = dbl[:, :rank], dbl[:, rank : rank + n], dbl[:, rank + n :]
                delta = softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])
                h = np.exp(delta[..., None] * A) * h + delta[..., None] * B[:, None, :] * x[..., None]
                y = (h * C[:, None, :]).sum(-1) + p["D"] * x
                outs.append((y * silu(xz[:, inner:])) @ p["out_proj.weight"].T + p["out_proj.bias"])
            u = np.stack(outs, axis=1)
    return u @ net.readout_weight.T + net.readout_bias


def jitted(params, toks):
    """run_mamba compiled at XLA backend optimisation level 0 (half the compile time; same arithmetic)."""
    compiled = jax.jit(run_mamba).lower(params, toks).compile({"xla_backend_optimization_level": "0"})
    return np.asarray(compiled(params, toks))


def mamba_f64(net, toks):
    with jax.enable_x64(True):
        return jitted(mamba_params(net, jnp.float64), toks)


@pytest.fixture(scope="module")
def library():
    x = Input(3)
    prog = ForEach(Concat([fn(x) for fn in HOSTED.values()]))
    toks = np.random.default_rng(0).integers(-3, 4, size=(3, 12, 3)).astype(np.float64)
    return prog, compile_mamba(prog), toks


def test_library_functions_exact(library):
    prog, net, toks = library
    want = run(prog, toks)
    chex.assert_trees_all_close(mamba_f64(net, toks), want, atol=1e-9, rtol=0)
    chex.assert_trees_all_close(reference_mamba(net, toks), want, atol=1e-9, rtol=0)


def test_weights_and_summary_follow_the_reference_block(library):
    _, net, _ = library
    for blk in net.blocks:
        p, w = blk.arrays, blk.width
        assert p["in_proj.weight"].shape[0] == 2 * w and p["conv1d.weight"].shape == (w, 1, 4)
        assert p["A_log"].shape == (w, 1) and p["x_proj.weight"].shape == (3, w)
    summary = net.summary()
    assert summary.target == "mamba" and summary.widths == tuple(b.width for b in net.blocks)
    assert summary.parameters == sum(a.size for b in net.blocks for a in b.arrays.values()) + net.readout_weight.size \
        + net.readout_bias.size


@pytest.mark.parametrize("mode", MODES)
def test_vec2vec_exact(mode):
    spec = Vec2VecSpec(in_dim=1, out_dim=2, mode=mode)
    prog = vec2vec_program(spec)
    net = compile_mamba(prog)
    f = random_target(2, 1, 2)
    rng = np.random.default_rng(3)
    short = vec2vec_prompts(f, spec, 4, vec2vec_queries(rng, 3, 1, 4, spec.scale))
    chex.assert_trees_all_close(reference_mamba(net, short), run(prog, short), atol=1e-9, rtol=0)
    q = vec2vec_queries(rng, 4, 1, 64, spec.scale)  # N = 64
    got = reference_mamba(net, vec2vec_prompts(f, spec, 64, q))[:, -1]
    chex.assert_trees_all_close(got, vec2vec_ideal(f, 64, q), atol=1e-9, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_tok2tok_exact_on_20_keys(mode):
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode=mode))
    net = compile_mamba(prog)
    rng = np.random.default_rng(4)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 3, replace=False)]
    toks = tok2tok_prompts(queries, keys, values)
    got = reference_mamba(net, toks)
    chex.assert_trees_all_close(got[:1], run(prog, toks[:1]), atol=1e-9, rtol=0)
    chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-9, rtol=0)


def test_tok2tok_float32_lookups():
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode="multiplicative"))
    net = compile_mamba(prog)
    rng = np.random.default_rng(6)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 8, replace=False)]
    toks = tok2tok_prompts(queries, keys, values)
    got = jitted(mamba_params(net, jnp.float32), toks)
    chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-3, rtol=0)


def test_diagonal_lowering_preserves_the_chain():
    x = Input(2)
    mixed = LinState(x, [[0.5, 0.25], [0.25, 0.5]], np.eye(2), [1.0, -2.0])  # eigenvalues 0.75, 0.25
    shift = LinState(x[0], np.eye(3, k=-1), np.r_[1.0, 0.0, 0.0][:, None], np.zeros(3))
    prog = ForEach(Concat([mixed, shift, f_modulo_counter(x, 5)]))
    chain = compile_program(prog)
    toks = np.random.default_rng(2).normal(size=(2, 20, 2))
    lowered = lower_to_diagonal(chain, "mamba", horizon=16)
    assert all(layer.kind != "diag" or layer.weight.shape[0] <= 4 for layer in lowered.layers)
    got = diagonal_evaluate(lowered, toks)
    chex.assert_trees_all_close(got[:, :16], chain_evaluate(chain, toks)[:, :16], atol=1e-12, rtol=0)
    assert np.abs(got[:, 17:, -1] - run(prog, toks)[:, 17:, -1]).max() > 0.5  # the counter past the horizon
    net = compile_mamba(prog, horizon=16)
    chex.assert_trees_all_close(mamba_f64(net, toks)[:, :16], run(prog, toks)[:, :16], atol=1e-9, rtol=0)
    got32 = np.asarray(MambaRNN(net)(toks.astype(np.float32)))
    chex.assert_trees_all_close(got32[:, :16], run(prog, toks)[:, :16], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "build, reason",
    [
        (LIBRARY["signed_state"], r"layer 0 \(state.*target mamba.*complex eigenvalues"),
        (lambda x: LinState(x[0], [[2.0]], [[1.0]], [0.0]), r"layer 0 \(state.*target mamba.*outside \[0, 1\]"),
        (lambda x: LinState(x[0], np.eye(5, k=-1), np.eye(5)[:, :1], np.zeros(5)), r"target mamba.*length 5.*conv"),
    ],
)
def test_unhostable_recurrences_are_refused(build, reason):
    with pytest.raises(CompileError, match=reason):
        compile_mamba(ForEach(build(Input(3))))


def test_products_refused_without_gated_products():
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode="multiplicative"))
    with pytest.raises(CompileError, match=r"layer \d+ \(mul.*target mamba.*Multiplicative"):
        compile_mamba(prog, gated_products=False)


def test_counter_exact_over_a_long_horizon():
    x = Input(1)
    prog = ForEach(LinState(x, np.eye(1), np.eye(1), [0.5]) * 2)  # exp(Delta A) == 1: no decay at all
    got = mamba_f64(compile_mamba(prog), np.ones((1, 100_000, 1)))[0, :, 0]
    want = 2 * np.arange(1, 100_001) + 1.0
    chex.assert_trees_all_close(got, want, atol=1e5 * 2.0**-53 * want.max(), rtol=0)  # the T eps max|s| bound
    assert np.abs(got - want).max() < 1e-6
