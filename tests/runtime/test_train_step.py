"""The sharded step equals the single-device step; accumulation is exact; frozen leaves stay frozen; no retrace."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.configs.mlp_regression import MLPConfig, MLPRegressionConfig
from experiments.tasks.mlp_regression import MLP, make_batch_fn, make_task
from runtime import RuntimeConfigError, make_mesh
from runtime import sharding as sh
from runtime.batches import batch_axes, batch_shardings, put_batch, split_microbatches
from runtime.metrics import Metric
from runtime.step import make_train_step
from runtime.train_state import init_train_state

CFG = MLPRegressionConfig.smoke("/tmp/unused")
STEPS = 3


def run_steps(mesh, step_fn, init_state, batches, grad_accum=1):
    state = init_state(mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    host0 = split_microbatches(batches[0], grad_accum)
    bsh = batch_shardings(host0, batch_axes(host0, grad_accum), mesh)
    step = jax.jit(step_fn, in_shardings=(shardings, bsh), out_shardings=(shardings, sh.replicated(mesh)),
                   donate_argnums=0)
    metrics = []
    with sh.activate(mesh):
        for b in batches:
            state, m = step(state, put_batch(split_microbatches(b, grad_accum), bsh))
            metrics.append(jax.device_get(m))
    return state, metrics


@pytest.fixture(scope="module")
def batches():
    make = make_batch_fn(CFG, CFG.batch_size)
    return [make(i) for i in range(STEPS)]


@pytest.fixture(scope="module")
def reference(batches):
    task = make_task(CFG)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    return run_steps(mesh, task.step_fn, task.init_state, batches)


@pytest.mark.parametrize("axes", [{"data": 8}, {"data": 2, "fsdp": 4}, {"data": 1, "fsdp": 8},
                                  {"fsdp": 2, "tensor": 4}])
def test_sharded_step_equals_single_device_step(axes, batches, reference):
    task = make_task(CFG)
    mesh = make_mesh(axes)
    state, metrics = run_steps(mesh, task.step_fn, task.init_state, batches)
    ref_state, ref_metrics = reference
    kernel = state.params["layers"][0]["kernel"].get_value()
    expected_shards = mesh.shape["fsdp"] * mesh.shape["tensor"]
    assert len({str(s.index) for s in kernel.addressable_shards}) == expected_shards
    chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(ref_state.params), rtol=2e-5, atol=2e-6)
    chex.assert_trees_all_close(jax.device_get(state.opt_state), jax.device_get(ref_state.opt_state),
                                rtol=2e-5, atol=1e-7)
    assert int(state.step) == STEPS
    for m, r in zip(metrics, ref_metrics):
        np.testing.assert_allclose(m["loss"].compute(), r["loss"].compute(), rtol=1e-5)


def masked_loss(graphdef):
    """Squared error over the entries where mask is set: the count differs between micro-batches."""

    def loss(params, batch, rng):
        model = nnx.merge(graphdef, params)
        err = jnp.square(model(batch["x"]) - batch["y"])
        metric = Metric.from_values(err, batch["mask"][:, None])
        return metric.total / metric.count, {"loss": metric}

    return loss


def test_gradient_accumulation_is_exact_with_unequal_counts(batches):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: MLP(CFG.student, rngs=nnx.Rngs(0))))
    tx = optax.sgd(0.1)
    init = lambda mesh: init_train_state(lambda: nnx.state(MLP(CFG.student, rngs=nnx.Rngs(0)), nnx.Param), tx,
                                         mesh, seed=0)[0]
    rng = np.random.default_rng(0)
    masked = []
    for b in batches:
        mask = rng.random(CFG.batch_size) < 0.5
        mask[:4] = [True, False, False, False]  # micro-batches get different counts
        masked.append({**b, "mask": mask})
    mesh = make_mesh({"data": 2, "fsdp": 4})
    full, full_m = run_steps(mesh, make_train_step(masked_loss(graphdef), tx), init, masked)
    accum, accum_m = run_steps(mesh, make_train_step(masked_loss(graphdef), tx, grad_accum=4), init, masked, 4)
    chex.assert_trees_all_close(jax.device_get(accum.params), jax.device_get(full.params), rtol=1e-5, atol=1e-6)
    for a, f in zip(accum_m, full_m):
        np.testing.assert_allclose(a["loss"].compute(), f["loss"].compute(), rtol=1e-5)
        assert float(a["loss"].count) == float(f["loss"].count)


def test_frozen_parameters_do_not_move_and_have_no_optimizer_state(batches):
    cfg = MLPRegressionConfig.smoke("/tmp/unused")
    import dataclasses

    cfg = dataclasses.replace(cfg, trainable=r"layers/0/")
    task = make_task(cfg)
    mesh = make_mesh({"fsdp": 8})
    before = jax.device_get(task.init_state(mesh).params)
    state, _ = run_steps(mesh, task.step_fn, task.init_state, batches)
    after = jax.device_get(state.params)
    assert not np.allclose(after["layers"][0]["kernel"].get_value(), before["layers"][0]["kernel"].get_value())
    for i in (1, 2):
        chex.assert_trees_all_equal(after["layers"][i], before["layers"][i])
    n_moment_leaves = len(jax.tree.leaves(state.opt_state))
    assert n_moment_leaves == 1 + 2 * 2  # adam count + (mu, nu) for layer 0's kernel and bias
    assert state.num_trainable < state.num_params


def test_step_compiles_once_across_steps(batches):
    task = make_task(CFG)
    mesh = make_mesh({"data": 2, "fsdp": 4})
    traced = chex.assert_max_traces(task.step_fn, n=1)
    state, _ = run_steps(mesh, traced, task.init_state, batches * 2)
    assert int(state.step) == 2 * STEPS


def test_step_errors(batches):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: MLP(CFG.student, rngs=nnx.Rngs(0))))
    tx = optax.sgd(0.1)
    state, _ = init_train_state(lambda: nnx.state(MLP(CFG.student, rngs=nnx.Rngs(0)), nnx.Param), tx,
                                make_mesh({"data": 8}), seed=0)
    no_loss_metric = lambda p, b, r: (jnp.zeros(()), {"mse": Metric.scalar(0.0)})
    with pytest.raises(RuntimeConfigError, match=r"must return metrics\['loss'\]"):
        make_train_step(no_loss_metric, tx)(state, batches[0])
    with pytest.raises(RuntimeConfigError, match="leading micro-batch axis"):
        make_train_step(masked_loss(graphdef), tx, grad_accum=3)(state, batches[0])
    with pytest.raises(RuntimeConfigError, match="grad_accum=0"):
        make_train_step(masked_loss(graphdef), tx, grad_accum=0)
    with pytest.raises(RuntimeConfigError, match="selects no parameter"):
        init_train_state(lambda: nnx.state(MLP(MLPConfig(), rngs=nnx.Rngs(0)), nnx.Param), tx,
                         make_mesh({"data": 8}), seed=0, trainable="nothing_matches")


def test_state_from_placed_params_equals_initialised_state():
    from runtime.train_state import train_state_from_params

    tx = optax.adamw(1e-3)
    mesh = make_mesh({"data": 2, "fsdp": 4})
    init = lambda: nnx.state(MLP(CFG.student, rngs=nnx.Rngs(3)), nnx.Param)  # noqa: E731
    ref, ref_shardings = init_train_state(init, tx, mesh, seed=5, trainable="layers/1/")
    params = jax.jit(init, out_shardings=ref_shardings.params)()
    state, shardings = train_state_from_params(params, tx, mesh, seed=5, trainable="layers/1/")
    chex.assert_trees_all_equal(jax.device_get(state), jax.device_get(ref))
    assert state.trainable == ref.trainable
    assert jax.tree.map(lambda a: a.sharding, state) == jax.tree.map(lambda a: a.sharding, ref)


def test_batch_that_counts_nothing_leaves_parameters_and_optimizer_state_unchanged():
    """A loss with count 0 (every pair masked out) must not produce 0/0 gradients, and Adam's momentum must not
    move the parameters on it; the step counter still advances."""
    params = {"w": jnp.ones((3,)), "b": jnp.zeros(())}

    def loss_fn(p, batch, rng):
        del rng
        per = (p["w"][None] * batch["x"]).sum(-1) + p["b"]
        metric = Metric.from_values(per ** 2, batch["mask"])
        return metric.total / jnp.maximum(metric.count, 1.0), {"loss": metric}

    tx = optax.adam(0.1)
    step = jax.jit(make_train_step(loss_fn, tx))
    from runtime.train_state import _fresh_state

    state = _fresh_state(params, tx, 0, (True, True))
    x = jnp.arange(6.0).reshape(2, 3)
    state, _ = step(state, {"x": x, "mask": jnp.array([True, True])})
    empty, metrics = step(state, {"x": x, "mask": jnp.array([False, False])})
    assert int(empty.step) == int(state.step) + 1
    chex.assert_trees_all_equal(empty.params, state.params)
    chex.assert_trees_all_equal(empty.opt_state, state.opt_state)
    assert np.isfinite(float(metrics["grad_norm"].total))
