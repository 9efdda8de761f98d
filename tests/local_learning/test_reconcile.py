"""The SGR term against a NumPy closed form and finite differences; the jvp form equals the double reverse."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from local_learning import ConfigError, reconcile

B, I, H = 5, 4, 3


def f_jax(params, x):
    """F(W, V, x) = sum_i tanh(x_i W) V: a two-layer module whose input gradient has a closed form."""
    return jnp.sum(jnp.tanh(x @ params["W"]) @ params["V"])


def g_in_np(W, V, x):
    """dF/dx_i = ((1 - tanh^2(x_i W)) * V^T) W^T."""
    a = np.tanh(x @ W)
    return ((1.0 - a**2) * V[:, 0][None, :]) @ W.T


def d_np(name, g, t):
    if name == "sq_l2":
        return np.mean(np.sum((g - t) ** 2, -1))
    if name == "l2":
        return np.mean(np.linalg.norm(g - t, axis=-1))
    cos = np.sum(g * t, -1) / (np.linalg.norm(g, axis=-1) * np.linalg.norm(t, axis=-1))
    return np.mean(1.0 - cos)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((I, H))
    V = rng.standard_normal((H, 1))
    x = rng.standard_normal((B, I))
    t = rng.standard_normal((B, I))
    return W, V, x, t


def finite_difference(name, W, V, x, t, eps=1e-6):
    def value(W, V):
        return d_np(name, g_in_np(W, V, x), t)

    grads = {}
    for key, arr in (("W", W), ("V", V)):
        g = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args_p = (plus, V) if key == "W" else (W, plus)
            args_m = (minus, V) if key == "W" else (W, minus)
            g[idx] = (value(*args_p) - value(*args_m)) / (2 * eps)
        grads[key] = g
    return value(W, V), grads


@pytest.mark.parametrize("name", ["sq_l2", "l2", "cosine"])
def test_term_matches_numpy_and_finite_differences(problem, name):
    W, V, x, t = problem
    params = {"W": jnp.asarray(W, jnp.float32), "V": jnp.asarray(V, jnp.float32)}
    xj, tj = jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)
    distance = reconcile.get_distance(name)
    g = reconcile.input_gradient(f_jax, params, xj)
    np.testing.assert_allclose(g, g_in_np(W, V, x), rtol=1e-5, atol=1e-6)
    expected_value, expected_grads = finite_difference(name, W, V, x, t)
    value_d, grads_d = reconcile.term_direct(f_jax, params, xj, tj, distance)
    value_j, grads_j = reconcile.term_jvp(f_jax, params, xj, g, tj, distance)
    np.testing.assert_allclose(value_d, expected_value, rtol=1e-5)
    np.testing.assert_allclose(value_j, expected_value, rtol=1e-5)
    for key in ("W", "V"):
        np.testing.assert_allclose(grads_d[key], expected_grads[key], rtol=2e-4, atol=2e-5)
    chex.assert_trees_all_close(grads_j, grads_d, rtol=1e-5, atol=1e-6)


def test_distances_limit_cases():
    g = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2, 2)), jnp.float32)
    assert float(reconcile.squared_l2(g, g)) == 0.0
    assert float(reconcile.l2(g, g)) == 0.0
    np.testing.assert_allclose(reconcile.cosine(g, 2.0 * g), 0.0, atol=1e-6)
    np.testing.assert_allclose(reconcile.cosine(g, -g), 2.0, atol=1e-6)
    # Zero vectors give a zero cosine similarity and finite gradients, never NaN.
    zero = jnp.zeros_like(g)
    assert float(reconcile.cosine(zero, g)) == 1.0
    grads = jax.grad(lambda a: reconcile.cosine(a, g) + reconcile.l2(a, zero))(zero)
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_distance_is_mean_over_examples_so_batch_size_invariant():
    g = jnp.asarray(np.random.default_rng(2).standard_normal((4, 6)), jnp.float32)
    t = jnp.asarray(np.random.default_rng(3).standard_normal((4, 6)), jnp.float32)
    for distance in reconcile.DISTANCES.values():
        np.testing.assert_allclose(distance(jnp.concatenate([g, g]), jnp.concatenate([t, t])), distance(g, t),
                                   rtol=1e-6)


def test_unknown_distance_is_named():
    with pytest.raises(ConfigError, match="'manhattan'"):
        reconcile.get_distance("manhattan")
