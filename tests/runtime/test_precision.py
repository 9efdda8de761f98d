"""Mixed precision: float32 masters train like a float32 run; narrow masters round the updates away and are warned
about; the checkpoint holds the masters."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runtime import make_mesh
from runtime.checkpoint import Checkpointer
from runtime.errors import RuntimeConfigError
from runtime.metrics import Metric
from runtime.precision import Precision, PrecisionWarning, spacing_at, update_resolution, warn_if_unresolved
from runtime.step import make_train_step
from runtime.train_state import _fresh_state, leaf_paths, train_state_spec

RNG = np.random.default_rng(0)
# Weights of the 7B presets' scale, exactly representable in bfloat16 so that every run starts from the same values.
W0 = jnp.asarray(RNG.normal(0, 0.02, (64, 64)), jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)
X = jnp.asarray(RNG.normal(0, 1, (256, 64)), jnp.float32)
T = jnp.asarray(RNG.normal(0, 1, (256, 64)), jnp.float32)
LR = 5e-7  # the 7B recipes' learning rate


def loss_for(compute):
    def loss_fn(p, batch, rng):
        del rng
        y = (batch["x"].astype(compute) @ p["w"].astype(compute)).astype(jnp.float32) + p["frozen"][None]
        m = Metric.from_values(jnp.mean((y - batch["t"]) ** 2, -1))
        return m.total / m.count, {"loss": m}

    return loss_fn


def run(stored, compute, precision, *, steps=100, grad_accum=1):
    tx = optax.adam(LR)
    params = {"w": W0.astype(stored), "frozen": jnp.zeros((64,), stored)}
    state = _fresh_state(params, tx, 0, (False, True), precision)
    step = jax.jit(make_train_step(loss_for(compute), tx, grad_accum=grad_accum))
    batch = {"x": X, "t": T}
    if grad_accum > 1:
        batch = jax.tree.map(lambda a: a.reshape(grad_accum, -1, *a.shape[1:]), batch)
    for _ in range(steps):
        state, _ = step(state, batch)
    return state


@pytest.fixture(scope="module")
def float32_update():
    return run(jnp.float32, jnp.float32, Precision()).params["w"] - W0


def relative_difference(state, reference_update):
    update = state.params["w"].astype(jnp.float32) - W0
    return float(jnp.linalg.norm(update - reference_update) / jnp.linalg.norm(reference_update))


@pytest.mark.parametrize("grad_accum", [1, 4])
def test_bfloat16_compute_with_float32_masters_moves_weights_like_the_float32_run(float32_update, grad_accum):
    state = run(jnp.bfloat16, jnp.bfloat16, Precision(), grad_accum=grad_accum)
    assert state.params["w"].dtype == jnp.float32 and state.params["frozen"].dtype == jnp.bfloat16
    assert state.forward_params()["w"].dtype == jnp.bfloat16
    assert state.opt_state[0].mu["w"].dtype == jnp.float32 and state.opt_state[0].nu["w"].dtype == jnp.float32
    moved = state.params["w"] != W0
    assert float(jnp.mean(moved)) == 1.0
    # What differs is the bfloat16 rounding of the forward pass, not the update: a few percent.
    assert relative_difference(state, float32_update) < 0.06


def test_bfloat16_masters_round_the_updates_away_and_the_guard_says_so(float32_update):
    state = run(jnp.bfloat16, jnp.bfloat16, Precision(master="stored"))
    assert state.params["w"].dtype == jnp.bfloat16
    moved = float(jnp.mean(state.params["w"].astype(jnp.float32) != W0))
    assert moved < 0.05, moved  # about 1% of the weights change at all
    assert relative_difference(state, float32_update) > 0.9
    with pytest.warns(PrecisionWarning, match=r"1 of 1 trained parameter arrays .*spacing there 0\.000122"):
        report = warn_if_unresolved(state.params, state.trainable, LR, leaf_paths(state.params))
    assert [r.path for r in report] == ["w"] and not report[0].resolved


def test_the_guard_is_silent_for_float32_masters_and_for_learning_rates_the_dtype_resolves(recwarn):
    masters = run(jnp.bfloat16, jnp.bfloat16, Precision(), steps=1)
    warn_if_unresolved(masters.params, masters.trainable, LR, leaf_paths(masters.params))
    narrow = run(jnp.bfloat16, jnp.bfloat16, Precision(master="stored"), steps=1)
    warn_if_unresolved(narrow.params, narrow.trainable, 1e-3, leaf_paths(narrow.params))
    assert not [w for w in recwarn if issubclass(w.category, PrecisionWarning)]


def test_zero_leaves_count_as_resolved():
    report = update_resolution({"b": jnp.zeros(4, jnp.bfloat16)}, (True,), 1e-9, ["b"])
    assert report[0].resolved and report[0].spacing == 0.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("magnitude", [0.02, 1.0, 3.7, 1e-3])
def test_spacing_is_the_gap_to_the_next_float(dtype, magnitude):
    x = np.asarray(magnitude, dtype)
    gap = float(np.nextafter(x, np.asarray(np.inf, dtype)).astype(np.float64) - x.astype(np.float64))
    assert spacing_at(float(x), dtype) == gap


def test_bfloat16_moments_stay_bfloat16_and_still_train(float32_update):
    state = run(jnp.bfloat16, jnp.bfloat16, Precision(moments="bfloat16"))
    assert state.params["w"].dtype == jnp.float32
    assert state.opt_state[0].mu["w"].dtype == jnp.bfloat16 and state.opt_state[0].nu["w"].dtype == jnp.bfloat16
    assert state.opt_state[0].count.dtype == jnp.int32
    assert relative_difference(state, float32_update) < 0.1


def test_masters_never_narrow_what_is_stored_and_bad_names_are_refused():
    state = _fresh_state({"w": jnp.ones(3, jnp.float32)}, optax.adam(1.0), 0, (True,), Precision(master="bfloat16"))
    assert state.params["w"].dtype == jnp.float32
    with pytest.raises(RuntimeConfigError, match="Precision.master='fp32'"):
        Precision(master="fp32")


def test_the_state_spec_and_checkpoint_hold_float32_masters_beside_bfloat16_frozen_weights(tmp_path):
    mesh = make_mesh({"data": 8})
    init = lambda: {"frozen": jnp.arange(8.0, dtype=jnp.bfloat16), "w": jnp.full((8, 4), 0.25, jnp.bfloat16)}  # noqa
    abstract, shardings = train_state_spec(init, optax.adam(1e-3), mesh, seed=0, trainable="w")
    assert abstract.params["w"].dtype == jnp.float32 and abstract.params["frozen"].dtype == jnp.bfloat16
    assert abstract.forward_dtypes == ("bfloat16", "bfloat16")
    state = _fresh_state(init(), optax.adam(1e-3), 0, abstract.trainable, Precision())
    # A master value that bfloat16 cannot hold: a restore through the forward dtype would lose it.
    state = state.replace(params={**state.params, "w": state.params["w"] + 1e-6})
    with Checkpointer(str(tmp_path), frozen_params=False) as ckpt:
        ckpt.save(state, {"data": {}})
        ckpt.wait()
        restored, _ = ckpt.restore(abstract, shardings, frozen=init())
    chex.assert_trees_all_equal(jax.device_get(restored.params), jax.device_get(state.params))
    assert restored.forward_dtypes == abstract.forward_dtypes
