"""Executors: local gradients against a stop-gradient reference, isolation, K = 1 equals global BP, the host loop
equals the single program, batch-size invariance of the SGR term, forward gradients."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from local_learning import ConfigError, network
from local_learning import train_step as ts
from local_learning.estimators import _normal_like, forward_gradient, local_backprop
from local_learning.reconcile import ReconcileConfig, local_objectives
from local_learning.models import ResNetConfig, ViTConfig
from local_learning.partition import PartitionConfig
from runtime.mesh import make_mesh
from runtime.train_state import init_train_state

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

MODEL = ResNetConfig(stage_blocks=(2,), widths=(4,), stem_width=4, image_size=8)  # stem + 2 blocks
SGR = ReconcileConfig(weight=0.7)


def make_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.standard_normal((n, 8, 8, 3)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


@pytest.fixture(scope="module")
def net3():
    plan = network.plan_partition(MODEL, PartitionConfig(num_modules=3))
    assert plan.split_points == (1, 2)
    return network.build(MODEL, plan, seed=1)


@pytest.fixture(scope="module")
def grads_and_reference(net3):
    """One compiled program: executor gradients (plain, SGR jvp / direct / checkpointed), the reference gradients,
    every dJ_k/dtheta_j, and the SGR step on a batch with every example duplicated."""
    netdef, var = net3
    batch = make_batch(4)
    double = jax.tree.map(lambda x: jnp.concatenate([x, x]), batch)

    def run(params, stats):
        out = {}
        for name, rc, b in (("plain", ReconcileConfig(), batch), ("jvp", SGR, batch),
                            ("direct", ReconcileConfig(weight=SGR.weight, impl="direct"), batch),
                            ("remat", ReconcileConfig(weight=SGR.weight, remat=True), batch),
                            ("jvp_double", SGR, double)):
            cfg = ts.LocalConfig(reconcile=rc)
            out[name] = ts.local_step_fn(netdef, cfg, params, stats, b, jax.random.PRNGKey(0))
        out["ref_plain"] = jax.grad(lambda p: sum(local_objectives(netdef, ReconcileConfig(), p, stats, batch)))(
            params)
        # Row k: d J_k / d theta_j for every module j, with SGR on; the rows sum to the reference gradient.
        out["cross"] = jax.jacrev(lambda p: jnp.stack(local_objectives(netdef, SGR, p, stats, batch)))(params)
        return out

    out = jax.jit(run)(var["params"], var["stats"])
    k = netdef.num_modules
    out["cross"] = [[jax.tree.map(lambda x, i=i: x[i], out["cross"][j]) for j in range(k)] for i in range(k)]
    out["ref_sgr"] = [jax.tree.map(lambda *xs: sum(xs), *[out["cross"][i][j] for i in range(k)]) for j in range(k)]
    return out


def test_lambda_zero_gradients_equal_stop_gradient_sum(grads_and_reference):
    chex.assert_trees_all_close(grads_and_reference["plain"][0], grads_and_reference["ref_plain"], rtol=1e-5,
                                atol=1e-7)


def test_sgr_gradients_jvp_equal_direct_equal_reference(grads_and_reference):
    jvp, direct, ref = grads_and_reference["jvp"][0], grads_and_reference["direct"][0], grads_and_reference["ref_sgr"]
    chex.assert_trees_all_close(jvp, direct, rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(jvp, ref, rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(grads_and_reference["remat"][0], jvp, rtol=1e-5, atol=1e-7)
    # The term really changes the update of modules 2 and 3, and not of module 1 (which has no predecessor).
    plain = grads_and_reference["plain"][0]
    chex.assert_trees_all_close(jvp[0], plain[0], rtol=1e-6, atol=1e-8)
    for k in (1, 2):
        diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), jvp[k], plain[k])
        assert max(jax.tree.leaves(diff)) > 1e-4
    metrics = grads_and_reference["jvp"][2]
    for k in (2, 3):
        assert float(metrics[f"sgr_{k}"].compute()) > 0
        assert -1.0 <= float(metrics[f"cos_{k}"].compute()) <= 1.0


def test_no_gradient_crosses_a_module_boundary(grads_and_reference):
    cross = grads_and_reference["cross"]
    for k, grads in enumerate(cross):
        for j, g in enumerate(grads):
            leaves = jax.tree.leaves(g)
            if j != k:
                assert all(bool(jnp.all(x == 0)) for x in leaves), f"dJ_{k + 1}/dtheta_{j + 1} is not exactly zero"
            else:
                assert any(bool(jnp.any(x != 0)) for x in leaves)


def test_sgr_term_is_invariant_to_batch_size(grads_and_reference):
    """Duplicating every example leaves BatchNorm statistics, the per-example gradients (of sum-reduced losses),
    the mean SGR term and the gradient of the mean objective unchanged."""
    g1, _, m1 = grads_and_reference["jvp"]
    g2, _, m2 = grads_and_reference["jvp_double"]
    for k in (2, 3):
        np.testing.assert_allclose(m1[f"sgr_{k}"].compute(), m2[f"sgr_{k}"].compute(), rtol=1e-4)
    chex.assert_trees_all_close(g1, g2, rtol=1e-3, atol=1e-6)


def _state(netdef_vars_fn, tx):
    return init_train_state(netdef_vars_fn, tx, make_mesh(devices=jax.devices()[:1]), seed=0, trainable=ts.trainable)[0]


def test_k1_local_learning_equals_global_bp_and_checkpointing():
    plan = network.plan_partition(MODEL, PartitionConfig(num_modules=1))
    netdef, _ = network.abstract_network(MODEL, plan)
    tx = optax.sgd(0.1, momentum=0.9)
    init = lambda: network.build(MODEL, plan, seed=2)[1]  # noqa: E731
    batch = make_batch(8, seed=4)
    local = ts.make_local_step(netdef, ts.LocalConfig(reconcile=SGR), tx)
    bp = ts.make_bp_step(netdef, tx)
    remat = ts.make_bp_step(netdef, tx, remat=True)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def two_steps(state):
        out = []
        for step in (local, bp, remat):
            s, _ = step(state, batch)
            out.append(step(s, batch))
        return out

    (s_local, m_local), (s_bp, m_bp), (s_remat, _) = two_steps(_state(init, tx))
    chex.assert_trees_all_close(s_local.params, s_bp.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(s_remat.params, s_bp.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_local["loss"].compute(), m_bp["loss"].compute(), rtol=1e-5)
    # BatchNorm statistics moved away from their initial values and agree too.
    assert float(jnp.max(jnp.abs(jax.tree.leaves(s_bp.params["stats"])[0]))) > 0


def test_host_loop_equals_single_program():
    plan = network.plan_partition(MODEL, PartitionConfig(num_modules=2))
    netdef, _ = network.abstract_network(MODEL, plan)
    tx = optax.adam(1e-2)
    cfg = ts.LocalConfig()  # the module programs are the single program's module functions; SGR is tested above
    init = lambda: network.build(MODEL, plan, seed=1)[1]  # noqa: E731
    batch = make_batch(8, seed=5)
    single = jax.jit(ts.make_local_step(netdef, cfg, tx))
    host, programs = ts.make_host_loop_step(netdef, cfg, tx)
    assert len(programs) == netdef.num_modules + 1
    a, ma = single(_state(init, tx), batch)
    b, mb = host(_state(init, tx), batch)
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6)
    assert set(ma) == set(mb)
    for key in ma:
        np.testing.assert_allclose(ma[key].compute(), mb[key].compute(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="placement"):
        ts.make_host_loop_step(netdef, ts.LocalConfig(reconcile=ReconcileConfig(weight=1.0, placement="output_side")), tx)


def test_output_side_placement_jvp_equals_direct(net3):
    netdef, var = net3
    batch = make_batch(4, seed=6)

    def run(params, stats):
        return [ts.local_step_fn(netdef, ts.LocalConfig(reconcile=ReconcileConfig(weight=0.5, placement="output_side",
                                                                                   impl=impl)),
                                 params, stats, batch, jax.random.PRNGKey(0))[0] for impl in ("jvp", "direct")]

    jvp, direct = jax.jit(run)(var["params"], var["stats"])
    chex.assert_trees_all_close(jvp, direct, rtol=1e-4, atol=1e-6)


def test_forward_gradient_is_directional_derivative_times_tangent(net3):
    """With the same tangent v, the BP-free estimate equals (grad J . v) v with grad J from local backprop."""
    netdef, var = net3
    k = 1
    params, stats = var["params"][k], var["stats"][k]
    batch = make_batch(4, seed=7)
    h_in = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 4))
    labels = batch["label"]
    rng = jax.random.PRNGKey(9)

    def run(params):
        loss_fn = functools.partial(lambda p, x, z: network.local_loss(netdef.graphdefs[k], p, stats, x, z, labels))
        probe = network.head_probe(netdef.graphdefs[k], params, stats, h_in)
        kw = dict(scale=0.25, rc=ReconcileConfig(), need_g_in=True)
        exact = local_backprop(loss_fn, params, h_in, probe, None, **kw)
        estimate = forward_gradient(loss_fn, params, h_in, probe, None, rng=rng, **kw)
        return exact, estimate

    exact, estimate = jax.jit(run)(params)
    v = _normal_like(jax.random.split(rng, 3)[0], params)
    dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(exact.grads), jax.tree.leaves(v)))
    chex.assert_trees_all_close(estimate.grads, jax.tree.map(lambda x: dot * x, v), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(estimate.loss_sum, exact.loss_sum, rtol=1e-6)


def test_scan_over_identical_modules_equals_sequential():
    vit = ViTConfig(image_size=8, patch_size=4, width=8, depth=3, num_heads=2, mlp_ratio=2, pool="mean")
    plan = network.plan_partition(vit, PartitionConfig(num_modules=3, split="explicit", split_points=(2, 3)))
    netdef, _ = network.abstract_network(vit, plan)
    assert ts.scannable_modules(netdef)
    tx = optax.adam(1e-2)
    cfg = ts.LocalConfig(reconcile=SGR)
    init = lambda: network.build(vit, plan, seed=3)[1]  # noqa: E731
    batch = make_batch(4, seed=8)
    sequential = ts.make_local_step(netdef, cfg, tx)
    scanned = chex.assert_max_traces(ts.make_scan_local_step(netdef, cfg, tx), n=1)
    (a, ma), (b, mb) = jax.jit(lambda s: (sequential(s, batch), scanned(s, batch)))(_state(init, tx))
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6)
    assert set(ma) == set(mb)
    for key in ma:
        np.testing.assert_allclose(ma[key].compute(), mb[key].compute(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="identical structure"):
        ts.make_scan_local_step(network.abstract_network(MODEL, network.plan_partition(
            MODEL, PartitionConfig(num_modules=3)))[0], cfg, tx)
