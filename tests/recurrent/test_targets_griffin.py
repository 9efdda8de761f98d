"""The Hawk/Griffin target equals the interpreter (float64, 1e-9) on the library functions and on the paper's
programs in all five conditional modes, run both by ``run_griffin`` and by an independent per-timestep NumPy loop
of the published recurrent block, RG-LRU and gated MLP equations written here (1 - a_t^2 evaluated as
-expm1(2 log a_t)); float32 answers the 20-key lookup; the accumulator is exact over 1e5 tokens, and with the
input gain formed as 1 - exp(2 log a_t) a decay 2^-k below 1 stays within the stated bound T 2^-k + 2^(k-53).
Refused with a CompileError naming layer, target and reason: the library's ``signed_state`` (a dense rotating
block driven by the input), a decay outside [0, 1], a shift register longer than the conv; none of the paper's
programs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrent.errors import CompileError
from recurrent.lsrl import Concat, ForEach, Input, LinState
from recurrent.lsrl.interpreter import run
from recurrent.programs import MODES
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_answers, tok2tok_program
from recurrent.programs.tok2tok import tok2tok_prompts
from recurrent.programs.vec2vec import Vec2VecSpec, random_target, vec2vec_ideal, vec2vec_program
from recurrent.programs.vec2vec import vec2vec_prompts, vec2vec_queries
from recurrent.targets.griffin import GriffinRNN, compile_griffin, griffin_params, run_griffin
from tests.recurrent.test_targets_elman import LIBRARY

HOSTED = {k: v for k, v in LIBRARY.items() if k != "signed_state"}


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def gelu(v):
    return 0.5 * v * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v**3)))


def reference_griffin(net, toks, stable=True):
    """Token by token. Recurrent block: GeLU(linear_y u) * RG-LRU(conv_4(linear_x u)), linear_out, with
    r = sigma(a_gate x), i = sigma(input_gate x), a_t = exp(-8 r softplus(a_param)),
    h = a_t h + sqrt(1 - a_t^2) (i x). MLP block: ffw_down(GeLU(u W0 + b0) * (u W1 + b1))."""
    u = np.asarray(toks, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for blk in net.blocks:
            p = blk.arrays
            if blk.kind == "mlp":
                hidden = gelu(u @ p["ffw_up.w"][0] + p["ffw_up.b"][0]) * (u @ p["ffw_up.w"][1] + p["ffw_up.b"][1])
                u = hidden @ p["ffw_down.kernel"] + p["ffw_down.bias"]
                continue
            width = p["rg_lru.a_param"].shape[0]
            window = np.zeros((u.shape[0], 4, width))
            h = np.zeros((u.shape[0], width))
            outs = []
            for t in range(u.shape[1]):
                x_in = u[:, t] @ p["linear_x.kernel"] + p["linear_x.bias"]
                window = np.concatenate([window[:, 1:], x_in[:, None]], axis=1)
                x = np.einsum("bkw,kw->bw", window, p["conv_1d.w"]) + p["conv_1d.b"]
                r = sigmoid(x * p["rg_lru.a_gate.w"][:, 0, 0] + p["rg_lru.a_gate.b"][:, 0])
                i = sigmoid(x * p["rg_lru.input_gate.w"][:, 0, 0] + p["rg_lru.input_gate.b"][:, 0])
                log_a = -8.0 * r * np.logaddexp(p["rg_lru.a_param"], 0.0)
                one_minus_a2 = -np.expm1(2 * log_a) if stable else 1.0 - np.exp(log_a) ** 2
                h = np.exp(log_a) * h + np.sqrt(one_minus_a2) * (i * x)
                y = h * gelu(u[:, t] @ p["linear_y.kernel"] + p["linear_y.bias"])
                outs.append(y @ p["linear_out.kernel"] + p["linear_out.bias"])
            u = np.stack(outs, axis=1)
    return u @ net.readout_weight.T + net.readout_bias


def jitted(params, toks):
    """run_griffin compiled at XLA backend optimisation level 0 (half the compile time; same arithmetic)."""
    compiled = jax.jit(run_griffin).lower(params, toks).compile({"xla_backend_optimization_level": "0"})
    return np.asarray(compiled(params, toks))


def griffin_f64(net, toks):
    with jax.enable_x64(True):
        return jitted(griffin_params(net, jnp.float64), toks)


@pytest.fixture(scope="module")
def library():
    x = Input(3)
    prog = ForEach(Concat([fn(x) for fn in HOSTED.values()]))
    toks = np.random.default_rng(0).integers(-3, 4, size=(3, 12, 3)).astype(np.float64)
    return prog, compile_griffin(prog), toks


def test_library_functions_exact(library):
    prog, net, toks = library
    want = run(prog, toks)
    chex.assert_trees_all_close(griffin_f64(net, toks), want, atol=1e-9, rtol=0)
    chex.assert_trees_all_close(reference_griffin(net, toks), want, atol=1e-9, rtol=0)
    chex.assert_trees_all_close(np.asarray(GriffinRNN(net)(toks.astype(np.float32))), want, atol=1e-3, rtol=0)


def test_stack_alternates_recurrent_and_mlp_blocks(library):
    _, net, _ = library
    assert [b.kind for b in net.blocks] == ["recurrent", "mlp"] * (len(net.blocks) // 2) + ["recurrent"] * (
        len(net.blocks) % 2)
    summary = net.summary()
    assert summary.target == "griffin" and summary.widths == tuple(b.width for b in net.blocks)
    assert summary.parameters == sum(a.size for b in net.blocks for a in b.arrays.values()) \
        + net.readout_weight.size + net.readout_bias.size
    assert any(r > 0 for r in summary.recurrent)


@pytest.mark.parametrize("mode", MODES)
def test_vec2vec_exact(mode):
    spec = Vec2VecSpec(in_dim=1, out_dim=2, mode=mode)
    prog = vec2vec_program(spec)
    net = compile_griffin(prog)
    f = random_target(2, 1, 2)
    rng = np.random.default_rng(3)
    short = vec2vec_prompts(f, spec, 4, vec2vec_queries(rng, 3, 1, 4, spec.scale))
    chex.assert_trees_all_close(reference_griffin(net, short), run(prog, short), atol=1e-9, rtol=0)
    q = vec2vec_queries(rng, 4, 1, 64, spec.scale)  # N = 64
    got = reference_griffin(net, vec2vec_prompts(f, spec, 64, q))[:, -1]
    chex.assert_trees_all_close(got, vec2vec_ideal(f, 64, q), atol=1e-9, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_tok2tok_exact_on_20_keys(mode):
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode=mode))
    net = compile_griffin(prog)
    rng = np.random.default_rng(4)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 3, replace=False)]
    toks = tok2tok_prompts(queries, keys, values)
    got = reference_griffin(net, toks)
    chex.assert_trees_all_close(got[:1], run(prog, toks[:1]), atol=1e-9, rtol=0)
    chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-9, rtol=0)


def test_tok2tok_float32_lookups():
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode="multiplicative"))
    net = compile_griffin(prog)
    rng = np.random.default_rng(6)
    keys, values = random_dictionary(rng, 3, 20, 10)
    queries = keys[rng.choice(20, 8, replace=False)]
    toks = tok2tok_prompts(queries, keys, values)
    got = jitted(griffin_params(net, jnp.float32), toks)
    chex.assert_trees_all_close(got[:, -3:, 0], tok2tok_answers(queries, keys, values), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "build, reason",
    [
        (LIBRARY["signed_state"], r"layer 0 \(state.*target griffin.*complex eigenvalues"),
        (lambda x: LinState(x[0], [[2.0]], [[1.0]], [0.0]), r"layer 0 \(state.*target griffin.*outside \[0, 1\]"),
        (lambda x: LinState(x[0], np.eye(5, k=-1), np.eye(5)[:, :1], np.zeros(5)), r"target griffin.*length 5.*conv"),
    ],
)
def test_unhostable_recurrences_are_refused(build, reason):
    with pytest.raises(CompileError, match=reason):
        compile_griffin(ForEach(build(Input(3))))


def test_products_refused_without_gated_products():
    prog = tok2tok_program(Tok2TokSpec(key_length=3, mode="multiplicative"))
    with pytest.raises(CompileError, match=r"layer \d+ \(mul.*target griffin.*Multiplicative"):
        compile_griffin(prog, gated_products=False)


def test_counter_exact_over_a_long_horizon():
    x = Input(1)
    prog = ForEach(LinState(x, np.eye(1), np.eye(1), [0.5]) * 2)  # a_t == 1.0 while sqrt(1 - a_t^2) = 2^-30
    got = griffin_f64(compile_griffin(prog), np.ones((1, 100_000, 1)))[0, :, 0]
    want = 2 * np.arange(1, 100_001) + 1.0
    assert np.abs(got - want).max() <= 1e5 * 2.0**-53 * want.max()


def test_decay_input_gain_trade_off_bound():
    x = Input(1)
    prog = ForEach(LinState(x, np.eye(1), np.eye(1), [0.0]))
    toks = np.ones((1, 2000, 1))
    want = np.arange(1, 2001, dtype=np.float64)
    naive = reference_griffin(compile_griffin(prog), toks, stable=False)[0, :, 0]
    assert np.abs(naive).max() == 0.0  # a_t == 1 and 1 - a_t^2 == 0: the exact construction needs expm1
    k = 26
    got = reference_griffin(compile_griffin(prog, decay_exponent=k), toks, stable=False)[0, :, 0]
    bound = (want * 2.0**-k + 2.0 ** (k - 53)) * want  # T 2^-k sum|u| + 2^(k-53) sum|u|
    assert np.all(np.abs(got - want) <= bound)
    assert np.abs(got - want)[-1] > 0.1 * bound[-1]  # the decay is real, not rounding
