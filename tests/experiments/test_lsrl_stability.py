"""The stability sweep: its CSV has the documented rows and columns, noise-free float64 models are exact, the
recorded errors equal an independent NumPy evaluation of the perturbed chain against the interpreter, and the
noise lands exactly on the non-zero weights (relative or absolute) and nowhere else."""

import csv
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.lsrl_stability import LSRLStabilityConfig
from experiments.lsrl_stability import COLUMNS, main, read_csv
from recurrent.stability import answer_errors, make_prompts
from recurrent.errors import ConfigError
from recurrent.targets.registry import TARGETS, perturb
from recurrent.chain import Chain, Layer, evaluate
from recurrent.compile import compile_program
from recurrent.lsrl.interpreter import run as interpret
from recurrent.programs.vec2vec import Vec2VecSpec, vec2vec_program
from recurrent.scan import chain_params
from recurrent.targets.lstm import compile_lstm, lstm_params

SIGMA = 1e-6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = LSRLStabilityConfig(
        out_dir=str(tmp_path_factory.mktemp("stability")),
        programs=("vec2vec",),
        targets=("linear_rnn", "elman", "lstm", "mamba"),
        modes=("direct", "multiplicative"),
        large_constant=None,
        vec2vec_in_dim=1,
        vec2vec_out_dim=1,
        vec2vec_grid_sizes=(2, 4),
        tok2tok_pairs=(2, 3),
        queries=4,
        noise_sigmas=(0.0, SIGMA),
        noise_seeds=2,
        noise_length_index=1,
    )
    summary = main(cfg)
    return cfg, summary, read_csv(f"{cfg.out_dir}/results.csv")


def test_csv_columns_and_rows(tiny):
    cfg, summary, rows = tiny
    with open(f"{cfg.out_dir}/results.csv") as fh:
        assert tuple(next(csv.reader(fh))) == COLUMNS
    # direct on 4 targets, multiplicative on 3 (Elman has no product).
    combos = {(r["target"], r["mode"]) for r in rows}
    assert combos == {("linear_rnn", "direct"), ("elman", "direct"), ("lstm", "direct"), ("mamba", "direct"),
                      ("linear_rnn", "multiplicative"), ("lstm", "multiplicative"), ("mamba", "multiplicative")}
    length = [r for r in rows if r["study"] == "length"]
    noise = [r for r in rows if r["study"] == "noise"]
    assert len(length) == 7 * 2 * 2  # combos x dtypes x lengths
    assert sorted({r["tokens"] for r in length}) == [3, 5]  # 1 + N for N = 2, 4
    assert len(noise) == 7 * 2 * (1 + 2)  # combos x kinds x (sigma 0 once + SIGMA x seeds)
    assert {r["tokens"] for r in noise} == {5} and {r["dtype"] for r in noise} == {"float64"}
    assert all(r["queries"] == 4 and r["gated"] == (r["mode"] == "multiplicative") for r in rows)
    assert all((r["large_constant"] is None) == r["gated"] for r in rows)
    assert summary.rows == len(rows) and len(summary.plots) == 2


def test_noise_free_float64_is_exact(tiny):
    _, _, rows = tiny
    clean = [r for r in rows if r["dtype"] == "float64" and r["sigma"] == 0]
    assert len(clean) == 7 * 2 + 7 * 2
    assert max(r["error_max"] for r in clean) < 1e-9
    f32 = [r for r in rows if r["dtype"] == "float32"]
    assert max(r["error_max"] for r in f32) < 1e-5  # float32 rounding of the prompt's values, no worse


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_recorded_error_equals_numpy_evaluation_of_the_perturbed_chain(tiny, kind):
    cfg, _, rows = tiny
    prog = vec2vec_program(Vec2VecSpec(in_dim=1, out_dim=1, mode="direct"))
    chain = compile_program(prog)
    prompts = make_prompts("vec2vec", cfg).select(4)
    x = prompts.tokens_BxTxD
    want = interpret(prog, x)[:, -1]  # every prompt of this size has the same length, the answer at its end
    for seed in range(cfg.noise_seeds):
        with jax.enable_x64(True):
            noisy = perturb(chain_params(chain, jnp.float64), np.random.default_rng([cfg.seed, seed]), SIGMA, kind,
                            TARGETS["linear_rnn"].initial_state_keys)
        layers = tuple(
            Layer(l.kind, *(np.asarray(p[k]) for k in ("weight", "bias")),
                  **({"A": np.asarray(p["A"]), "init": np.asarray(p["init"])} if l.kind == "state" else {}))
            for l, p in zip(chain.layers, noisy["layers"])
        )
        noisy_chain = Chain(chain.in_dim, layers, np.asarray(noisy["readout_weight"]), np.asarray(noisy["readout_bias"]))
        err = np.abs(evaluate(noisy_chain, x)[:, -1] - want).max(axis=1)
        (row,) = [r for r in rows if r["study"] == "noise" and r["target"] == "linear_rnn" and r["mode"] == "direct"
                  and r["noise"] == kind and r["sigma"] == SIGMA and r["seed"] == seed]
        assert err.max() > 1e-9  # the noise is felt
        np.testing.assert_allclose([row["error_median"], row["error_max"]], [np.median(err), err.max()], rtol=1e-5)
        assert row["wrong_fraction"] == np.mean(err > cfg.tolerance)


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_noise_hits_exactly_the_nonzero_weights(kind):
    prog = vec2vec_program(Vec2VecSpec(in_dim=1, out_dim=1, mode="multiplicative"))
    net = compile_lstm(prog, gated_products=True)
    with jax.enable_x64(True):
        clean = lstm_params(net, jnp.float64)
        noisy = perturb(clean, np.random.default_rng(7), SIGMA, kind, TARGETS["lstm"].initial_state_keys)
        same = perturb(clean, np.random.default_rng(7), 0.0, kind, TARGETS["lstm"].initial_state_keys)
    draws = np.random.default_rng(7)
    flat_clean = jax.tree_util.tree_flatten_with_path(clean)[0]
    flat_noisy = jax.tree.leaves(noisy)
    touched = 0
    for (path, w), w2, w0 in zip(flat_clean, flat_noisy, jax.tree.leaves(same)):
        w, w2 = np.asarray(w), np.asarray(w2)
        xi = draws.standard_normal(w.shape)  # one draw per entry, in flattening order
        np.testing.assert_array_equal(np.asarray(w0), w)
        if any(getattr(k, "key", None) == "carry" for k in path):
            np.testing.assert_array_equal(w2, w)  # initial states are not weights
            continue
        assert np.all(w2[w == 0] == 0)
        expected = w * (1 + SIGMA * xi) if kind == "relative" else w + SIGMA * xi
        np.testing.assert_allclose(w2[w != 0], expected[w != 0], rtol=1e-15, atol=0)
        touched += np.count_nonzero(w)
    assert touched > 50


def test_answer_errors_reads_each_prompts_own_end():
    y = np.zeros((2, 5, 1))
    ref = np.zeros((2, 5, 1))
    y[0, 2, 0] = 0.5  # prompt 0 has length 3 and one answer token: position 2
    y[0, 4, 0] = 9.0  # padding of prompt 0: ignored
    y[1, 3, 0] = np.nan  # prompt 1 has length 5 and two answer tokens: positions 3, 4
    np.testing.assert_array_equal(answer_errors(y, ref, np.array([3, 5]), 1), [0.5, 0.0])
    np.testing.assert_array_equal(answer_errors(y, ref, np.array([3, 5]), 2), [0.5, np.inf])


def test_config_names_the_bad_field():
    with pytest.raises(ConfigError, match="LSRLStabilityConfig.modes"):
        LSRLStabilityConfig(modes=("gated",))
    with pytest.raises(ConfigError, match="LSRLStabilityConfig.noise_length_index"):
        LSRLStabilityConfig(noise_length_index=7)
    with pytest.raises(ConfigError, match="LSRLStabilityConfig.targets"):
        dataclasses.replace(LSRLStabilityConfig.small(), targets=("transformer",))
