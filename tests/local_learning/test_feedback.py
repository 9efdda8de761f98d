"""Feedback alignment: layer gradients against NumPy, and a feedback-alignment network trained locally."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from local_learning import ConfigError, network
from local_learning import train_step as ts
from local_learning.reconcile import ReconcileConfig
from local_learning.models import ResNetConfig
from local_learning.models.feedback import FeedbackConv, FeedbackDense, FeedbackWeight, feedback_layers
from local_learning.models.layers import conv, dense
from local_learning.partition import PartitionConfig

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose


def test_dense_input_error_goes_through_the_fixed_matrix():
    with feedback_layers():
        layer = dense(3, 2, ("embed", "mlp"), rngs=nnx.Rngs(0))
    assert isinstance(layer, FeedbackDense)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    c = rng.standard_normal((4, 2)).astype(np.float32)
    gdef, params, fixed = nnx.split(layer, nnx.Param, FeedbackWeight)

    def loss(params, x):
        return jnp.sum(nnx.merge(gdef, params, fixed)(x) * c)

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
    W, B = np.asarray(layer.kernel[...]), np.asarray(layer.feedback[...])
    np.testing.assert_allclose(g_x, c @ B.T, rtol=1e-5)
    np.testing.assert_allclose(g_params["kernel"][...], x.T @ c, rtol=1e-5)
    np.testing.assert_allclose(nnx.merge(gdef, params, fixed)(x), x @ W + np.asarray(layer.bias[...]), rtol=1e-5)
    assert not np.allclose(B, W)


def test_conv_gradients_against_plain_convolutions():
    with feedback_layers():
        layer = conv(2, 3, 3, 2, rngs=nnx.Rngs(1))
    assert isinstance(layer, FeedbackConv)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 6, 2)), jnp.float32)
    c = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, 3, 3)), jnp.float32)
    plain = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),  # noqa: E731
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    W, B = layer.kernel[...], layer.feedback[...]
    g_x = jax.grad(lambda x: jnp.sum(layer(x) * c))(x)
    np.testing.assert_allclose(g_x, jax.grad(lambda x: jnp.sum(plain(x, B) * c))(x), rtol=1e-5, atol=1e-6)
    gdef, params, fixed = nnx.split(layer, nnx.Param, FeedbackWeight)
    g_w = jax.grad(lambda p: jnp.sum(nnx.merge(gdef, p, fixed)(x) * c))(params)["kernel"][...]
    np.testing.assert_allclose(g_w, jax.grad(lambda w: jnp.sum(plain(x, w) * c))(W), rtol=1e-5, atol=1e-6)


def test_feedback_alignment_network_local_step():
    """Local learning with feedback alignment: the feedback matrices are carried as fixed state, the last layer's
    weight gradient (no weight transported) equals local backprop's, earlier ones differ; SGR on top (direct)."""
    model = ResNetConfig(stage_blocks=(1,), widths=(4,), stem_width=4, image_size=8)
    plan = network.plan_partition(model, PartitionConfig(num_modules=2))
    netdef, var = network.build(model, plan, seed=0, feedback=True)
    assert any(isinstance(v, FeedbackWeight) for v in jax.tree.leaves(
        var["stats"], is_leaf=lambda x: isinstance(x, nnx.Variable)))
    # The same weights as plain layers: copy the parameters into a backprop network of the same shape.
    bp_def, _ = network.abstract_network(model, plan)
    fa_cfg = ts.LocalConfig(estimator="feedback_alignment")
    bp_cfg = ts.LocalConfig()
    sgr_cfg = ts.LocalConfig(estimator="feedback_alignment", reconcile=ReconcileConfig(weight=0.5, impl="direct"))
    batch = {"image": jnp.asarray(np.random.default_rng(3).standard_normal((4, 8, 8, 3)), jnp.float32),
             "label": jnp.arange(4, dtype=jnp.int32)}
    bp_stats = [nnx.state(nnx.merge(g, p, s), nnx.BatchStat) for g, p, s in
                zip(netdef.graphdefs, var["params"], var["stats"])]

    @jax.jit
    def run(params, stats, bp_stats):
        fa = ts.local_step_fn(netdef, fa_cfg, params, stats, batch, jax.random.PRNGKey(0))
        bp = ts.local_step_fn(bp_def, bp_cfg, params, bp_stats, batch, jax.random.PRNGKey(0))
        sgr = ts.local_step_fn(netdef, sgr_cfg, params, stats, batch, jax.random.PRNGKey(0))
        return fa, bp, sgr

    (g_fa, _, m_fa), (g_bp, _, m_bp), (g_sgr, _, m_sgr) = run(var["params"], var["stats"], bp_stats)
    np.testing.assert_allclose(m_fa["loss_2"].compute(), m_bp["loss_2"].compute(), rtol=1e-6)
    last_fc = lambda g: g[1]["head"]["fc"]["kernel"][...]  # noqa: E731
    np.testing.assert_allclose(last_fc(g_fa), last_fc(g_bp), rtol=1e-5, atol=1e-7)
    first_conv = lambda g: g[0]["blocks"][0]["conv"]["kernel"][...]  # noqa: E731
    assert not np.allclose(first_conv(g_fa), first_conv(g_bp), atol=1e-6)
    # SGR on feedback-propagated gradients changes module 2's update and nothing of module 1's.
    assert float(m_sgr["sgr_2"].compute()) > 0
    chex.assert_trees_all_close(g_sgr[0], g_fa[0], rtol=1e-6, atol=1e-8)
    assert not np.allclose(last_fc(g_sgr), last_fc(g_fa), atol=1e-6)
    with pytest.raises(ConfigError, match="impl='direct'"):
        ts.LocalConfig(estimator="feedback_alignment", reconcile=ReconcileConfig(weight=0.5))
