"""Feedback alignment (Lillicrap et al., 2016): linear layers whose backward pass sends the error to their input
through a fixed random matrix B instead of the transpose of their weight W.

For y = op(x, W) linear in x and in W (a dense layer or a convolution):
    dL/dW = (d op(x, W) / dW)^T dL/dy        (exact, as in backprop)
    dL/dx ~ (d op(x, B) / dx)^T dL/dy        (B fixed, random, same shape as W)
so no weight is transported backward. B is a ``FeedbackWeight`` variable: part of the model state, never
trained. Layers are built as feedback layers inside ``feedback_layers(True)`` (layers.conv / layers.dense
consult it), so every model gets a feedback-alignment variant without changing its code.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx


class FeedbackWeight(nnx.Variable):
    """A fixed random matrix used in place of a weight in the backward pass to the layer's input."""


_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("feedback_layers", default=False)


@contextlib.contextmanager
def feedback_layers(enabled: bool = True) -> Iterator[None]:
    """Within this context, ``layers.conv`` and ``layers.dense`` build feedback-alignment layers."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def enabled() -> bool:
    return _ENABLED.get()


def feedback_apply(op: Callable[[jax.Array, jax.Array], jax.Array], x, w, b):
    """op(x, w) whose vjp w.r.t. x uses b in place of w (and gives b no gradient)."""

    @jax.custom_vjp
    def call(x, w, b):
        return op(x, w)

    def forward(x, w, b):
        return op(x, w), (x, w, b)

    def backward(saved, ct):
        x, w, b = saved
        _, vjp_w = jax.vjp(lambda w: op(x, w), w)
        _, vjp_x = jax.vjp(lambda x: op(x, b), x)
        return vjp_x(ct)[0], vjp_w(ct)[0], jnp.zeros_like(b)

    call.defvjp(forward, backward)
    return call(x, w, b)


def _conv_op(x, w, *, strides, padding):
    return jax.lax.conv_general_dilated(x, w.astype(x.dtype), strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _dense_op(x, w):
    return x @ w.astype(x.dtype)


class FeedbackConv(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, padding, *, use_bias: bool, kernel_init,
                 bias_init, rngs: nnx.Rngs):
        shape = (kernel, kernel, in_ch, out_ch)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape))
        self.feedback = FeedbackWeight(kernel_init(rngs.params(), shape))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_ch,))) if use_bias else None
        self.strides = (stride, stride)
        self.padding = tuple(tuple(p) for p in padding)

    def __call__(self, x):
        op = functools.partial(_conv_op, strides=self.strides, padding=self.padding)
        y = feedback_apply(op, x, self.kernel[...], self.feedback[...])
        return y if self.bias is None else y + self.bias[...].reshape((1,) * (y.ndim - 1) + (-1,))


class FeedbackDense(nnx.Module):
    def __init__(self, in_dim: int, out_dim: int, *, use_bias: bool, kernel_init, bias_init, rngs: nnx.Rngs):
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_dim, out_dim)))
        self.feedback = FeedbackWeight(kernel_init(rngs.params(), (in_dim, out_dim)))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_dim,))) if use_bias else None

    def __call__(self, x):
        y = feedback_apply(_dense_op, x, self.kernel[...], self.feedback[...])
        return y if self.bias is None else y + self.bias[...].reshape((1,) * (y.ndim - 1) + (-1,))
