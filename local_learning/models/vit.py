"""Vision Transformer (Dosovitskiy et al., 2021) in the DeiT configuration (Touvron et al., 2021), as a flat list
of blocks (the patch embedding, then every pre-norm transformer block) plus a classifier.

    z_0 = [x_cls; x_p^1 E; ...; x_p^N E] + E_pos
    z'_l = z_{l-1} + MSA(LN(z_{l-1})),   z_l = z'_l + MLP(LN(z'_l))
    logits = Linear(LN(z_L)[cls])         (or the mean over tokens when ``pool="mean"``)

DeiT-S: patch 16, width 384, 12 blocks, 6 heads, MLP ratio 4. Shapes: B batch, T tokens, D width, H heads,
K head width.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from local_learning.errors import ConfigError
from local_learning.models.layers import dense, layer_norm
from runtime.sharding import constrain, logical

trunc_normal = nnx.initializers.truncated_normal(0.02)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: int = 4
    num_classes: int = 1000
    pool: Literal["cls", "mean"] = "cls"

    def __post_init__(self):
        for name in ("image_size", "patch_size", "in_channels", "width", "depth", "num_heads", "mlp_ratio",
                     "num_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ViTConfig.{name}={getattr(self, name)}: must be at least 1")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"ViTConfig.image_size={self.image_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.width % self.num_heads:
            raise ConfigError(f"ViTConfig.width={self.width} is not divisible by num_heads={self.num_heads}")
        if self.pool not in ("cls", "mean"):
            raise ConfigError(f"ViTConfig.pool={self.pool!r}: expected 'cls' or 'mean'")

    @property
    def num_blocks(self) -> int:
        return 1 + self.depth

    @classmethod
    def deit_s(cls, num_classes: int = 1000) -> "ViTConfig":
        return cls(num_classes=num_classes)

    @classmethod
    def deit_ti(cls, num_classes: int = 1000) -> "ViTConfig":
        return cls(width=192, num_heads=3, num_classes=num_classes)

    @classmethod
    def tiny(cls, num_classes: int = 10, image_size: int = 8) -> "ViTConfig":
        return cls(image_size=image_size, patch_size=4, width=16, depth=3, num_heads=2, mlp_ratio=2,
                   num_classes=num_classes)


def _tokens(x_BxTxD):
    return constrain(x_BxTxD, ("batch", "seq", "act_embed"))


class PatchEmbed(nnx.Module):
    """Non-overlapping patches, a linear embedding, the class token and learned position embeddings."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        p, d = cfg.patch_size, cfg.width
        self.patch = p
        self.proj = dense(p * p * cfg.in_channels, d, ("patch", "embed"), rngs=rngs)
        num_tokens = (cfg.image_size // p) ** 2 + 1
        self.cls = nnx.Param(logical(trunc_normal, None, None, "embed")(rngs.params(), (1, 1, d)))
        self.pos = nnx.Param(logical(trunc_normal, None, "seq", "embed")(rngs.params(), (1, num_tokens, d)))

    def __call__(self, x_BxHxWxC, *, train: bool):
        del train
        b, h, w, c = x_BxHxWxC.shape
        p = self.patch
        x = x_BxHxWxC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)
        x = self.proj(x)
        cls = jnp.broadcast_to(self.cls[...], (b, 1, x.shape[-1]))
        return _tokens(jnp.concatenate([cls, x], axis=1) + self.pos[...])


class Attention(nnx.Module):
    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        init = trunc_normal
        self.q = dense(width, width, ("embed", "heads"), kernel_init=init, rngs=rngs)
        self.k = dense(width, width, ("embed", "heads"), kernel_init=init, rngs=rngs)
        self.v = dense(width, width, ("embed", "heads"), kernel_init=init, rngs=rngs)
        self.out = dense(width, width, ("heads", "embed"), kernel_init=init, rngs=rngs)

    def __call__(self, x_BxTxD):
        b, t, d = x_BxTxD.shape
        h = self.num_heads
        split = lambda y: y.reshape(b, t, h, d // h)  # noqa: E731
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = split(self.q(x_BxTxD)), split(self.k(x_BxTxD)), split(self.v(x_BxTxD))
        scores_BxHxTxT = jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxK, k_BxTxHxK) / jnp.sqrt(d // h).astype(x_BxTxD.dtype)
        attn = jax.nn.softmax(scores_BxHxTxT, axis=-1)
        y = jnp.einsum("bhqs,bshk->bqhk", attn, v_BxTxHxK).reshape(b, t, d)
        return self.out(y)


class TransformerBlock(nnx.Module):
    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        d = cfg.width
        self.norm1 = layer_norm(d, rngs=rngs)
        self.attn = Attention(d, cfg.num_heads, rngs=rngs)
        self.norm2 = layer_norm(d, rngs=rngs)
        self.fc1 = dense(d, d * cfg.mlp_ratio, ("embed", "mlp"), kernel_init=trunc_normal, rngs=rngs)
        self.fc2 = dense(d * cfg.mlp_ratio, d, ("mlp", "embed"), kernel_init=trunc_normal, rngs=rngs)

    def __call__(self, x_BxTxD, *, train: bool):
        del train
        x = x_BxTxD + self.attn(self.norm1(x_BxTxD))
        y = jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False)
        y = constrain(y, ("batch", "seq", "act_mlp"))
        return _tokens(x + self.fc2(y))


class TokenClassifier(nnx.Module):
    """LayerNorm, then the class token (``pool="cls"``) or the token mean, then a linear layer.

    Used both as the ViT's own classifier and, with ``pool="mean"``, as the local head of a ViT module.
    """

    def __init__(self, width: int, num_classes: int, pool: str, *, rngs: nnx.Rngs):
        self.pool = pool
        self.norm = layer_norm(width, rngs=rngs)
        self.fc = dense(width, num_classes, ("embed", "classes"), kernel_init=trunc_normal,
                        rngs=rngs)

    def __call__(self, h_BxTxD, *, train: bool):
        del train
        y = self.norm(h_BxTxD)
        pooled = y[:, 0] if self.pool == "cls" else jnp.mean(y, axis=1)
        return self.fc(pooled)


def vit_blocks(cfg: ViTConfig, *, rngs: nnx.Rngs) -> tuple[list[nnx.Module], nnx.Module]:
    """(blocks, classifier): the patch embedding and every transformer block in order, and the classifier."""
    blocks: list[nnx.Module] = [PatchEmbed(cfg, rngs=rngs)]
    blocks += [TransformerBlock(cfg, rngs=rngs) for _ in range(cfg.depth)]
    return blocks, TokenClassifier(cfg.width, cfg.num_classes, cfg.pool, rngs=rngs)
