"""BP-free label projection: the update of a tiny linear module against the hand-computed one, and the fixed
random matrices (projection and feedback) drawn at initialisation and unchanged by training."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from local_learning import ConfigError, network
from local_learning import train_step as ts
from local_learning.estimators import local_backprop
from local_learning.reconcile import ReconcileConfig
from local_learning.heads import PoolHead
from local_learning.label_projection import LabelProjectionKey, projection_matrix
from local_learning.models import ResNetConfig
from local_learning.models.feedback import FeedbackWeight, feedback_layers
from local_learning.models.layers import dense
from local_learning.partition import PartitionConfig
from runtime.mesh import make_mesh
from runtime.train_state import init_train_state

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

B, D_IN, D_OUT, C = 6, 5, 7, 3


class LinearBlock(nnx.Module):
    def __init__(self, rngs):
        self.fc = dense(D_IN, D_OUT, ("embed", "mlp"), rngs=rngs)

    def __call__(self, x, *, train):
        return self.fc(x)


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_linear_module_update_equals_the_hand_computed_one():
    with feedback_layers(True):
        rngs = nnx.Rngs(0)
        stage = network.Stage([LinearBlock(rngs)], PoolHead(D_OUT, C, rngs=rngs), rngs=rngs, label_projection=True)
    gdef, params, stats = nnx.split(stage, nnx.Param, network.STATE)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, D_IN)).astype(np.float32)
    y = np.array([0, 1, 2, 2, 1, 0], np.int32)

    def loss_fn(p, h_in, probe):
        return network.local_loss(gdef, p, stats, h_in, probe, jnp.asarray(y))

    res = jax.jit(lambda p: local_backprop(loss_fn, p, jnp.asarray(x), jnp.zeros((B, D_OUT)), None, scale=1.0 / B,
                                           rc=ReconcileConfig(), need_g_in=True))(params)

    W, b, W_fb = (np.asarray(v) for v in (stage.blocks[0].fc.kernel[...], stage.blocks[0].fc.bias[...],
                                          stage.blocks[0].fc.feedback[...]))
    V, c, V_fb = (np.asarray(v) for v in (stage.head.fc.kernel[...], stage.head.fc.bias[...],
                                          stage.head.fc.feedback[...]))
    P = np.asarray(projection_matrix(stage.projection[...], C, (D_OUT,)))  # [C, F]
    h = x @ W + b
    e = np.eye(C)[y] @ P  # row y_i of P: the projected label
    err = softmax(h @ V + c) - np.eye(C)[y]
    # Body: the projected label in place of the backpropagated error; head: its own cross-entropy.
    np.testing.assert_allclose(res.grads["blocks"][0]["fc"]["kernel"][...], x.T @ e / B, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.grads["blocks"][0]["fc"]["bias"][...], e.sum(0) / B, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.grads["head"]["fc"]["kernel"][...], h.T @ err / B, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.grads["head"]["fc"]["bias"][...], err.sum(0) / B, rtol=1e-5, atol=1e-6)
    # Boundary gradients travel through the fixed feedback matrices, never the weights.
    np.testing.assert_allclose(res.g_out, err @ V_fb.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.g_in, e @ W_fb.T, rtol=1e-5, atol=1e-7)
    # The reported loss is the head's cross-entropy alone.
    np.testing.assert_allclose(res.loss_sum, -np.log(softmax(h @ V + c)[np.arange(B), y]).sum(), rtol=1e-5)
    # P: entries of variance 1/F and one distinct row per class.
    big = np.asarray(projection_matrix(stage.projection[...], 4, (64, 64)))
    assert abs(big.var() * 64 * 64 - 1.0) < 0.05
    assert not np.allclose(P[0], P[1])


def test_projection_and_feedback_stay_fixed_across_steps():
    model = ResNetConfig(stage_blocks=(1,), widths=(4,), stem_width=4, image_size=8)
    plan = network.plan_partition(model, PartitionConfig(num_modules=2))
    cfg = ts.LocalConfig(estimator="label_projection")
    assert cfg.feedback and cfg.label_projection
    netdef, _ = network.abstract_network(model, plan, feedback=True, label_projection=True)
    tx = optax.sgd(0.1)
    mesh = make_mesh(devices=jax.devices()[:1])
    init = lambda seed: init_train_state(  # noqa: E731
        lambda: network.build(model, plan, seed=seed, feedback=True, label_projection=True)[1], tx, mesh, seed=seed,
        trainable=ts.trainable)[0]
    state = init(0)
    step = ts.make_local_step(netdef, cfg, tx)
    rng = np.random.default_rng(1)
    batch = {"image": jnp.asarray(rng.standard_normal((8, 8, 8, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def two_steps(state):
        s1, m1 = step(state, batch)
        s2, _ = step(s1, batch)
        return s1, s2, m1

    s1, s2, m1 = two_steps(state)

    def fixed(tree):
        return [v[...] for v in jax.tree.leaves(tree, is_leaf=lambda v: isinstance(v, nnx.Variable))
                if isinstance(v, (LabelProjectionKey, FeedbackWeight))]

    before, after1, after2 = fixed(state.params["stats"]), fixed(s1.params["stats"]), fixed(s2.params["stats"])
    keys = [v for v in jax.tree.leaves(state.params["stats"], is_leaf=lambda v: isinstance(v, nnx.Variable))
            if isinstance(v, LabelProjectionKey)]
    assert len(keys) == 2 and not np.array_equal(keys[0][...], keys[1][...])  # one projection per module
    assert len(before) > 2
    for a, b1, b2 in zip(before, after1, after2):
        np.testing.assert_array_equal(a, b1)
        np.testing.assert_array_equal(a, b2)
    # Training moved the weights; the boundary cosine is measured on the projected gradients.
    assert not np.allclose(jax.tree.leaves(s2.params["params"])[0], jax.tree.leaves(state.params["params"])[0])
    assert np.isfinite(float(m1["loss"].compute())) and -1 <= float(m1["cos_2"].compute()) <= 1
    # Another seed draws other fixed matrices.
    other = fixed(jax.jit(lambda: init(1).params["stats"])())
    assert not np.array_equal(other[0], before[0])
    # SGR on top goes through the direct form only (feedback layers have no forward-mode rule).
    assert ts.LocalConfig(estimator="label_projection", reconcile=ReconcileConfig(weight=0.5, impl="direct")).feedback
    with pytest.raises(ConfigError, match="impl='direct'"):
        ts.LocalConfig(estimator="label_projection", reconcile=ReconcileConfig(weight=0.5))
