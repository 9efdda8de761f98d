"""Local (auxiliary) heads a_k that turn a module's output h_k into class logits for its local loss.

* ``conv`` (for feature maps h_BxHxWxC): the "1c2f" head of InfoPro (Wang et al., ICLR 2021): one 3x3
  convolution with BatchNorm and ReLU, global average pooling, a hidden linear layer with ReLU, a linear
  classifier. The convolution has 2C channels and stride 2 while C < ``conv_channels_cap`` and C channels
  with stride 1 beyond it (16 -> 32/s2, 32 -> 64/s2, 64 -> 64/s1 on CIFAR ResNets).
* ``token`` (for token sequences h_BxTxD): LayerNorm, mean over tokens, linear.
* ``linear`` (for either): global average pooling (or token mean) and a linear layer ("greedy" heads).

The last module has no auxiliary head: its head is the network's own classifier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from local_learning.errors import ConfigError
from local_learning.models.layers import batch_norm, conv, dense
from local_learning.models.vit import TokenClassifier


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadConfig:
    kind: Literal["auto", "conv", "token", "linear"] = "auto"
    """``auto``: ``conv`` for feature maps, ``token`` for token sequences."""
    hidden: int = 128
    conv_channels_cap: int = 64

    def __post_init__(self):
        if self.kind not in ("auto", "conv", "token", "linear"):
            raise ConfigError(f"HeadConfig.kind={self.kind!r}: expected 'auto', 'conv', 'token' or 'linear'")
        if self.hidden < 1 or self.conv_channels_cap < 1:
            raise ConfigError("HeadConfig.hidden and conv_channels_cap must be at least 1")


class ConvHead(nnx.Module):
    def __init__(self, in_ch: int, num_classes: int, *, hidden: int, cap: int, rngs: nnx.Rngs):
        out_ch, stride = (2 * in_ch, 2) if in_ch < cap else (in_ch, 1)
        self.conv = conv(in_ch, out_ch, 3, stride, rngs=rngs)
        self.bn = batch_norm(out_ch, rngs=rngs)
        self.fc1 = dense(out_ch, hidden, ("channels", "mlp"), rngs=rngs)
        self.fc2 = dense(hidden, num_classes, ("mlp", "classes"), rngs=rngs)

    def __call__(self, h_BxHxWxC, *, train: bool):
        y = jax.nn.relu(self.bn(self.conv(h_BxHxWxC), use_running_average=not train))
        y = jax.nn.relu(self.fc1(jnp.mean(y, axis=(1, 2))))
        return self.fc2(y)


class PoolHead(nnx.Module):
    """Mean over every axis between batch and features, then a linear layer."""

    def __init__(self, in_dim: int, num_classes: int, *, rngs: nnx.Rngs):
        self.fc = dense(in_dim, num_classes, ("channels", "classes"), rngs=rngs)

    def __call__(self, h, *, train: bool):
        del train
        return self.fc(jnp.mean(h, axis=tuple(range(1, h.ndim - 1))))


def make_aux_head(cfg: HeadConfig, feature_shape: Sequence[int], num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The local head for a module whose output has per-example shape ``feature_shape`` ((H, W, C) or (T, D))."""
    rank = len(feature_shape)
    kind = cfg.kind
    if kind == "auto":
        kind = "conv" if rank == 3 else "token"
    if kind == "conv":
        if rank != 3:
            raise ConfigError(f"HeadConfig.kind='conv' needs (H, W, C) features, got per-example shape {feature_shape}")
        return ConvHead(feature_shape[-1], num_classes, hidden=cfg.hidden, cap=cfg.conv_channels_cap, rngs=rngs)
    if kind == "token":
        if rank != 2:
            raise ConfigError(f"HeadConfig.kind='token' needs (T, D) features, got per-example shape {feature_shape}")
        return TokenClassifier(feature_shape[-1], num_classes, "mean", rngs=rngs)
    return PoolHead(feature_shape[-1], num_classes, rngs=rngs)
