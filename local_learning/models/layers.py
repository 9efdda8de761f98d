"""Layer constructors shared by the models: every parameter carries logical axis names.

Convolutions use explicit symmetric padding (``k // 2`` on each side) so that strided layers see the same
windows as the reference ResNet definitions, whose padding is symmetric (``SAME`` pads asymmetrically for an
even input and a stride of 2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from local_learning.models import feedback
from runtime.sharding import logical

CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")

# He initialisation on the fan-out, as in the reference ResNets.
he_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, rngs: nnx.Rngs, use_bias: bool = False):
    """A convolution (a feedback-alignment one inside ``feedback.feedback_layers(True)``)."""
    pad = kernel // 2
    if feedback.enabled():
        return feedback.FeedbackConv(
            in_ch, out_ch, kernel, stride, ((pad, pad), (pad, pad)), use_bias=use_bias,
            kernel_init=logical(he_fan_out, *CONV_AXES),
            bias_init=logical(nnx.initializers.zeros_init(), "conv_out"), rngs=rngs)
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=logical(he_fan_out, *CONV_AXES),
        bias_init=logical(nnx.initializers.zeros_init(), "conv_out"),
        rngs=rngs,
    )


def batch_norm(ch: int, *, rngs: nnx.Rngs, zero_scale: bool = False) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here: the weight of the old statistic)."""
    scale_init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
    return nnx.BatchNorm(
        ch,
        momentum=0.9,
        epsilon=1e-5,
        scale_init=logical(scale_init, "channels"),
        bias_init=logical(nnx.initializers.zeros_init(), "channels"),
        rngs=rngs,
    )


def dense(in_dim: int, out_dim: int, axes: tuple[str | None, str | None], *, rngs: nnx.Rngs,
          kernel_init=None, use_bias: bool = True):
    """A linear layer (a feedback-alignment one inside ``feedback.feedback_layers(True)``)."""
    if feedback.enabled():
        return feedback.FeedbackDense(
            in_dim, out_dim, use_bias=use_bias,
            kernel_init=logical(kernel_init or nnx.initializers.lecun_normal(), *axes),
            bias_init=logical(nnx.initializers.zeros_init(), axes[1]), rngs=rngs)
    return nnx.Linear(
        in_dim,
        out_dim,
        use_bias=use_bias,
        kernel_init=logical(kernel_init or nnx.initializers.lecun_normal(), *axes),
        bias_init=logical(nnx.initializers.zeros_init(), axes[1]),
        rngs=rngs,
    )


def layer_norm(dim: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        dim,
        epsilon=1e-6,
        scale_init=logical(nnx.initializers.ones_init(), "norm"),
        bias_init=logical(nnx.initializers.zeros_init(), "norm"),
        rngs=rngs,
    )


def max_pool_3x3_s2(x_BxHxWxC: jax.Array) -> jax.Array:
    """3x3 max pool, stride 2, padding 1 (the ImageNet ResNet stem)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    return jax.lax.reduce_window(x_BxHxWxC, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pad)
