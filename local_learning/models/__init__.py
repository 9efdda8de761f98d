"""Models as flat lists of blocks plus a classifier, ready to be cut into gradient-isolated modules."""

from __future__ import annotations

from flax import nnx

from local_learning.errors import ConfigError
from local_learning.models.resnet import ResNetConfig, resnet_blocks
from local_learning.models.vit import ViTConfig, vit_blocks

ModelConfig = ResNetConfig | ViTConfig


def build_blocks(cfg: ModelConfig, *, rngs: nnx.Rngs) -> tuple[list[nnx.Module], nnx.Module]:
    """(blocks, classifier) of any supported model; each block is called as ``block(x, train=...)``."""
    if isinstance(cfg, ResNetConfig):
        return resnet_blocks(cfg, rngs=rngs)
    if isinstance(cfg, ViTConfig):
        return vit_blocks(cfg, rngs=rngs)
    raise ConfigError(f"model config of type {type(cfg).__name__}: expected ResNetConfig or ViTConfig")


__all__ = ["ModelConfig", "ResNetConfig", "ViTConfig", "build_blocks"]
