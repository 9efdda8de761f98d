"""ResNets as a flat list of blocks (stem, then every residual block) plus a classifier, for splitting into modules.

CIFAR ResNet-6n+2 (He et al., 2016, Sec. 4.2): a 3x3 stem with 16 channels, three stages of n basic blocks with
16/32/64 channels (stride 2 at the first block of stages 2 and 3), global average pooling and a linear
classifier; ResNet-32 has n = 5, ResNet-110 has n = 18. Shortcuts that change shape are 1x1 convolutions with
BatchNorm (option B), as in the InfoPro and DGL code bases.

ImageNet ResNet-50/101 (He et al., 2016, Table 1): a 7x7/2 stem with max pooling, bottleneck blocks
(1x1, 3x3, 1x1 with expansion 4) in stages of [3, 4, 6, 3] / [3, 4, 23, 3] blocks with widths 64..512, stride 2
on the 3x3 convolution of each later stage's first block.

Every block is called as ``block(x_BxHxWxC, train=...)``; its BatchNorm statistics are its own variables, so a
module made of some blocks carries exactly the statistics it updates.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from local_learning.errors import ConfigError
from local_learning.models.layers import batch_norm, conv, dense, max_pool_3x3_s2
from runtime.sharding import constrain


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResNetConfig:
    block: Literal["basic", "bottleneck"] = "basic"
    stem: Literal["cifar", "imagenet"] = "cifar"
    stage_blocks: tuple[int, ...] = (5, 5, 5)
    widths: tuple[int, ...] = (16, 32, 64)
    """Channels of each stage (the bottleneck's inner width; its output has 4x)."""
    stem_width: int = 16
    num_classes: int = 10
    image_size: int = 32
    in_channels: int = 3
    zero_init_residual: bool = False
    """Start each residual branch at zero (the last BatchNorm scale is 0)."""

    def __post_init__(self):
        if self.block not in ("basic", "bottleneck"):
            raise ConfigError(f"ResNetConfig.block={self.block!r}: expected 'basic' or 'bottleneck'")
        if self.stem not in ("cifar", "imagenet"):
            raise ConfigError(f"ResNetConfig.stem={self.stem!r}: expected 'cifar' or 'imagenet'")
        if len(self.stage_blocks) != len(self.widths) or not self.stage_blocks:
            raise ConfigError(
                f"ResNetConfig.stage_blocks={self.stage_blocks} and widths={self.widths} must be non-empty and "
                "of equal length"
            )
        for name in ("stem_width", "num_classes", "image_size", "in_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ResNetConfig.{name}={getattr(self, name)}: must be at least 1")
        if min(self.stage_blocks) < 1 or min(self.widths) < 1:
            raise ConfigError("ResNetConfig.stage_blocks/widths: every entry must be at least 1")

    @property
    def num_blocks(self) -> int:
        """Blocks in the flat list: the stem plus every residual block."""
        return 1 + sum(self.stage_blocks)

    @classmethod
    def cifar(cls, depth: int, num_classes: int = 10, **kw) -> "ResNetConfig":
        if (depth - 2) % 6 or depth < 8:
            raise ConfigError(f"CIFAR ResNet depth={depth}: must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...)")
        n = (depth - 2) // 6
        return cls(stage_blocks=(n, n, n), num_classes=num_classes, **kw)

    @classmethod
    def resnet32(cls, num_classes: int = 10) -> "ResNetConfig":
        return cls.cifar(32, num_classes)

    @classmethod
    def resnet110(cls, num_classes: int = 10) -> "ResNetConfig":
        return cls.cifar(110, num_classes)

    @classmethod
    def resnet50(cls, num_classes: int = 1000) -> "ResNetConfig":
        return cls(block="bottleneck", stem="imagenet", stage_blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512),
                   stem_width=64, num_classes=num_classes, image_size=224, zero_init_residual=True)

    @classmethod
    def resnet101(cls, num_classes: int = 1000) -> "ResNetConfig":
        return cls(block="bottleneck", stem="imagenet", stage_blocks=(3, 4, 23, 3), widths=(64, 128, 256, 512),
                   stem_width=64, num_classes=num_classes, image_size=224, zero_init_residual=True)

    @classmethod
    def tiny(cls, num_classes: int = 10, image_size: int = 8) -> "ResNetConfig":
        """Four blocks of a few channels: for tests."""
        return cls(stage_blocks=(1, 1, 1), widths=(4, 8, 8), stem_width=4, num_classes=num_classes,
                   image_size=image_size)


def _act(x):
    return constrain(x, ("batch", "height", "width", "channels"))


class CifarStem(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        self.conv = conv(in_ch, out_ch, 3, rngs=rngs)
        self.bn = batch_norm(out_ch, rngs=rngs)

    def __call__(self, x, *, train: bool):
        return _act(jax.nn.relu(self.bn(self.conv(x), use_running_average=not train)))


class ImageNetStem(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        self.conv = conv(in_ch, out_ch, 7, 2, rngs=rngs)
        self.bn = batch_norm(out_ch, rngs=rngs)

    def __call__(self, x, *, train: bool):
        return _act(max_pool_3x3_s2(jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))))


class Shortcut(nnx.Module):
    """1x1 projection + BatchNorm where the residual changes shape."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = conv(in_ch, out_ch, 1, stride, rngs=rngs)
        self.bn = batch_norm(out_ch, rngs=rngs)

    def __call__(self, x, *, train: bool):
        return self.bn(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, *, zero_init: bool, rngs: nnx.Rngs):
        self.conv1 = conv(in_ch, out_ch, 3, stride, rngs=rngs)
        self.bn1 = batch_norm(out_ch, rngs=rngs)
        self.conv2 = conv(out_ch, out_ch, 3, rngs=rngs)
        self.bn2 = batch_norm(out_ch, rngs=rngs, zero_scale=zero_init)
        self.shortcut = Shortcut(in_ch, out_ch, stride, rngs=rngs) if stride != 1 or in_ch != out_ch else None

    def __call__(self, x, *, train: bool):
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        y = self.bn2(self.conv2(y), use_running_average=not train)
        skip = x if self.shortcut is None else self.shortcut(x, train=train)
        return _act(jax.nn.relu(y + skip))


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, *, zero_init: bool, rngs: nnx.Rngs):
        out_ch = width * self.expansion
        self.conv1 = conv(in_ch, width, 1, rngs=rngs)
        self.bn1 = batch_norm(width, rngs=rngs)
        self.conv2 = conv(width, width, 3, stride, rngs=rngs)
        self.bn2 = batch_norm(width, rngs=rngs)
        self.conv3 = conv(width, out_ch, 1, rngs=rngs)
        self.bn3 = batch_norm(out_ch, rngs=rngs, zero_scale=zero_init)
        self.shortcut = Shortcut(in_ch, out_ch, stride, rngs=rngs) if stride != 1 or in_ch != out_ch else None

    def __call__(self, x, *, train: bool):
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=not train))
        y = self.bn3(self.conv3(y), use_running_average=not train)
        skip = x if self.shortcut is None else self.shortcut(x, train=train)
        return _act(jax.nn.relu(y + skip))


class PoolLinear(nnx.Module):
    """Global average pooling and a linear classifier: the network's own last layer."""

    def __init__(self, in_ch: int, num_classes: int, *, rngs: nnx.Rngs):
        self.fc = dense(in_ch, num_classes, ("channels", "classes"), rngs=rngs)

    def __call__(self, h_BxHxWxC, *, train: bool):
        del train
        return self.fc(jnp.mean(h_BxHxWxC, axis=(1, 2)))


def resnet_blocks(cfg: ResNetConfig, *, rngs: nnx.Rngs) -> tuple[list[nnx.Module], nnx.Module]:
    """(blocks, classifier): the stem and every residual block in order, and the pooling + linear classifier."""
    stem_cls = CifarStem if cfg.stem == "cifar" else ImageNetStem
    blocks: list[nnx.Module] = [stem_cls(cfg.in_channels, cfg.stem_width, rngs=rngs)]
    ch = cfg.stem_width
    for stage, (count, width) in enumerate(zip(cfg.stage_blocks, cfg.widths)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            if cfg.block == "basic":
                blocks.append(BasicBlock(ch, width, stride, zero_init=cfg.zero_init_residual, rngs=rngs))
                ch = width
            else:
                blocks.append(Bottleneck(ch, width, stride, zero_init=cfg.zero_init_residual, rngs=rngs))
                ch = width * Bottleneck.expansion
    return blocks, PoolLinear(ch, cfg.num_classes, rngs=rngs)
