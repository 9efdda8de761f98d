"""The forward-gradient estimate of a module's SGR objective J = L / B + lambda * D(g_in, t) is unbiased: the mean of
n estimates converges to the exact gradient (local backprop, SGR by reverse over forward) with an error that
falls like 1/sqrt(n); distances with no unbiased estimate are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from local_learning import ConfigError
from local_learning.estimators import forward_gradient, local_backprop
from local_learning.reconcile import ReconcileConfig
from local_learning.train_step import LocalConfig

pytestmark = pytest.mark.unsharded  # a few scalars on one device, on purpose

B, F = 2, 3
SGR = ReconcileConfig(weight=2.0, distance="sq_l2")


def loss_fn(params, h, z):
    """A small smooth module: L = sum tanh(h W + z)^2 + 0.5 sum (h W)^2 (sum-reduced, as network.local_loss)."""
    a = h @ params["w"] + z
    return jnp.sum(jnp.tanh(a) ** 2) + 0.5 * jnp.sum((h @ params["w"]) ** 2), None


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((F, F)) * 0.7, jnp.float32)}
    h_in = jnp.asarray(rng.standard_normal((B, F)), jnp.float32)
    probe = jnp.zeros((B, F), jnp.float32)
    target = jnp.asarray(rng.standard_normal((B, F)), jnp.float32)
    kw = dict(scale=1.0 / B, rc=SGR, need_g_in=True)
    exact = local_backprop(loss_fn, params, h_in, probe, target, **kw).grads["w"]

    @jax.jit
    def estimates(keys):
        return jax.vmap(lambda k: forward_gradient(loss_fn, params, h_in, probe, target, rng=k, **kw).grads["w"])(keys)

    samples = np.concatenate([np.asarray(estimates(jax.random.split(jax.random.key(s), 16000))) for s in range(4)])
    return np.asarray(exact, np.float64), samples.astype(np.float64)


def test_the_mean_of_forward_estimates_converges_to_the_exact_sgr_gradient(setup):
    exact, samples = setup
    n = len(samples)
    mean, se = samples.mean(axis=0), samples.std(axis=0, ddof=1) / np.sqrt(n)
    z = (mean - exact) / se
    assert np.max(np.abs(z)) < 5.0, z  # the estimate placed inside D was off by about 20x here
    # Error of the mean of n estimates, over disjoint groups: it falls like 1/sqrt(n) (no bias floor).
    errors = {}
    for size in (1000, 16000):
        groups = samples[: (n // size) * size].reshape(-1, size, F, F).mean(axis=1)
        errors[size] = np.sqrt(np.mean((groups - exact) ** 2))
    assert 2.5 < errors[1000] / errors[16000] < 6.5, errors  # sqrt(16) = 4


def test_distances_without_an_unbiased_forward_estimate_are_refused():
    for distance in ("cosine", "l2"):
        with pytest.raises(ConfigError, match=f"'{distance}'.*no unbiased forward-mode estimate.*'sq_l2'"):
            LocalConfig(estimator="forward_gradient", reconcile=ReconcileConfig(weight=1.0, distance=distance))
    LocalConfig(estimator="forward_gradient", reconcile=ReconcileConfig(weight=1.0, distance="sq_l2"))
    LocalConfig(estimator="backprop", reconcile=ReconcileConfig(weight=1.0, distance="cosine"))
