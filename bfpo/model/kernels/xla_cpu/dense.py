"""The linear map y = x W with a hand-written backward pass whose matmuls have the forms XLA:CPU runs fastest.

For x [..., K] (the last ``n`` axes of x contracted with the first ``n`` of W) and W [K, N], with the rows of x
flattened to X [M, K] and an upstream gradient G [M, N]:

    Y = X W,        dX = G W^T,        dW = X^T G,

each a product of ``dtype`` operands accumulated in float32 (then cast: Y and dX to the compute dtype, dW to the
parameter's dtype). This is the gradient automatic differentiation gives; what differs is the form. XLA:CPU's
bfloat16 kernels (the AMX path, about 3x the float32 rate on CPUs that have it) accept a product whose operands
are row-major [M, K] x [K, N] or whose right operand is read transposed ([M, K] x [N, K], contracting both minor
axes); any other form, such as a transposed left operand, is silently upcast to float32. Left to itself, XLA
also folds X^T into the dot and may then fuse the producer of G into a transposing copy (a SiLU derivative
evaluated in column order: a tenth of a SmolLM2 step). So Y and dX read W as stored (dX contracts G's and W's
minor axes: no copy of W^T at all), and dW = X^T G transposes the small operand X explicitly, through a trailing
unit axis that the compiler keeps as a real copy. On accelerators the explicit transpose is an ordinary copy
(or is fused into the matmul) and costs little.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp


def permuted(a: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``a.transpose(axes)`` as a physical copy: a transpose through a trailing unit axis is not folded into the
    consuming dot as a strided operand layout (which XLA:CPU's kernels read several times slower, or upcast)."""
    return jnp.transpose(a[..., None], tuple(axes) + (a.ndim,))[..., 0]


def transposed(a_MxN: jax.Array) -> jax.Array:
    """a^T [N, M] as a physical copy."""
    return permuted(a_MxN, (1, 0))


def _matmul(a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
    return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(out_dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dense(x: jax.Array, w: jax.Array, n: int, dtype) -> jax.Array:
    """x [*lead, *k] contracted with w [*k, *out] over the ``n`` axes k: [*lead, *out] in ``dtype``."""
    return _forward(x, w, n, dtype)[0]


def _forward(x, w, n, dtype):
    lead, k_shape, out_shape = x.shape[:x.ndim - n], w.shape[:n], w.shape[n:]
    k, m = math.prod(k_shape), math.prod(lead)
    x2 = x.reshape(m, k).astype(dtype)
    w2 = w.reshape(k, -1).astype(dtype)
    y = _matmul(x2, w2, dtype).reshape(*lead, *out_shape)
    return y, (x2, w2)


def _fwd(x, w, n, dtype):
    y, (x2, _) = _forward(x, w, n, dtype)
    # W's cast is recomputed in the backward pass rather than kept: it is cheap and would double its memory.
    # Residuals must be arrays, so x's dtype (that of dx) travels as an empty array of that dtype.
    return y, (x2, w, jnp.zeros((0,), x.dtype))


def _bwd(n, dtype, res, g):
    x2, w, x_dtype_probe = res
    m, k = x2.shape
    g2 = g.reshape(m, -1).astype(dtype)
    w2 = w.reshape(k, -1).astype(dtype)
    dx = jax.lax.dot_general(g2, w2, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    dx = dx.astype(x_dtype_probe.dtype)
    dw = _matmul(transposed(x2), g2, w.dtype)
    return dx.reshape(*g.shape[:g.ndim - (w.ndim - n)], *w.shape[:n]), dw.reshape(w.shape)


dense.defvjp(_fwd, _bwd)
