"""The hand-written backward passes (``dense``, ``chunk_logprob_sums``, ``attention_core``) equal automatic
differentiation of the plain formulas, in float32 and with bfloat16 operands."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bfpo.model.kernels.xla_cpu.logprobs import cast_head, chunk_logprob_sums
from bfpo.model.kernels.xla_cpu.attention import NEG_INF, attention_core
from bfpo.model.kernels.xla_cpu.dense import dense, transposed

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

RNG = np.random.default_rng(0)


def test_transposed_is_the_transpose():
    a = jnp.asarray(RNG.normal(size=(5, 3)), jnp.float32)
    np.testing.assert_array_equal(jax.jit(transposed)(a), np.asarray(a).T)


def test_dense_value_and_gradients_equal_einsum():
    x = jnp.asarray(RNG.normal(size=(2, 3, 4, 5)), jnp.float32)  # [B, T, H, E]: two contracted axes
    w = jnp.asarray(RNG.normal(size=(4, 5, 6)), jnp.float32)  # [H, E, D]
    g = jnp.asarray(RNG.normal(size=(2, 3, 6)), jnp.float32)

    def ours(x, w):
        return jnp.sum(dense(x, w, 2, jnp.float32) * g)

    def reference(x, w):
        return jnp.sum(jnp.einsum("bthe,hed->btd", x, w, precision="highest") * g)

    chex.assert_trees_all_close(jax.jit(jax.value_and_grad(ours, (0, 1)))(x, w),
                                jax.value_and_grad(reference, (0, 1))(x, w), rtol=1e-5, atol=1e-5)


def test_dense_bfloat16_rounds_operands_and_accumulates_in_float32():
    x = jnp.asarray(RNG.normal(size=(3, 8)), jnp.float32)
    w = jnp.asarray(RNG.normal(size=(8, 4)), jnp.float32)
    g = jnp.asarray(RNG.normal(size=(3, 4)), jnp.bfloat16)
    y, vjp = jax.vjp(lambda x, w: dense(x, w, 1, jnp.bfloat16), x, w)
    dx, dw = vjp(g)
    chex.assert_type([y, dx, dw], [jnp.bfloat16, jnp.float32, jnp.float32])
    r = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)  # noqa: E731
    np.testing.assert_allclose(np.asarray(y, np.float64), r(r(x) @ r(w)), rtol=1e-2)
    np.testing.assert_allclose(dx, r(r(g) @ r(w).T), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(dw, r(x).T @ r(g), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("vocab_major", [False, True], ids=["DxV", "VxD"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_chunk_logprob_gradients_equal_autodiff_of_log_softmax(vocab_major, dtype):
    """Both head layouts, float32 and bfloat16 products: the value and every gradient equal autodiff of
    log_softmax with operands rounded the same way, and the head's gradient stays float32."""
    b, c, d, v = 2, 5, 4, 11
    h = jnp.asarray(RNG.normal(size=(b, c, d)), jnp.float32)
    w = jnp.asarray(RNG.normal(size=(v, d) if vocab_major else (d, v)), jnp.float32)
    targets = jnp.asarray(RNG.integers(0, v, (b, c)), jnp.int32)
    weights = jnp.asarray(RNG.integers(0, 2, (b, c)), jnp.float32)
    g = jnp.asarray([0.7, -1.3], jnp.float32)
    rounded = lambda a: a.astype(dtype).astype(jnp.float32)  # noqa: E731

    def reference(h, w, weights):
        w_dv = rounded(w).T if vocab_major else rounded(w)
        logp = jax.nn.log_softmax(jnp.einsum("bcd,dv->bcv", rounded(h), w_dv, precision="highest"), axis=-1)
        picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return jnp.sum(g * jnp.sum(picked * weights, axis=-1))

    def ours(h, w, weights):
        h = h.astype(dtype)
        return jnp.sum(g * chunk_logprob_sums(h, w, targets, weights, cast_head(w, dtype), vocab_major))

    got = jax.jit(jax.value_and_grad(ours, (0, 1, 2)))(h, w, weights)
    chex.assert_type(got[1][1], jnp.float32)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    chex.assert_trees_all_close(got, jax.value_and_grad(reference, (0, 1, 2))(h, w, weights), rtol=tol, atol=tol)


def test_attention_gradients_equal_autodiff_of_softmax_attention():
    b, k, m, s, e = 2, 3, 4, 5, 6
    q = jnp.asarray(RNG.normal(size=(b, k, m, e)), jnp.float32)
    key = jnp.asarray(RNG.normal(size=(b, k, s, e)), jnp.float32)
    v = jnp.asarray(RNG.normal(size=(b, k, s, e)), jnp.float32)
    allowed = jnp.asarray(RNG.random((b, 1, m, s)) < 0.7).at[0, 0, 1].set(False)  # one row sees nothing
    d_out = jnp.asarray(RNG.normal(size=(b, k, m, e)), jnp.float32)

    def reference(q, key, v):
        scores = jnp.einsum("bkme,bkse->bkms", q, key, precision="highest")
        probs = jax.nn.softmax(jnp.where(allowed, scores, NEG_INF), axis=-1)
        return jnp.sum(jnp.einsum("bkms,bkse->bkme", probs, v, precision="highest") * d_out)

    def ours(q, key, v):
        return jnp.sum(attention_core(q, key, v, allowed) * d_out)

    chex.assert_trees_all_close(jax.jit(jax.value_and_grad(ours, (0, 1, 2)))(q, key, v),
                                jax.value_and_grad(reference, (0, 1, 2))(q, key, v), rtol=1e-5, atol=1e-5)
