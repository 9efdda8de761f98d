"""RandAugment (Cubuk et al., 2020): for each image, N operations drawn uniformly from a fixed list, each
applied at magnitude M of 10 (the DeiT recipe uses N = 2, M = 9), with PIL. Geometric operations fill with grey
(128); signed operations (rotate, shear, translate, enhance) take a random sign.

    op            magnitude M -> parameter
    Rotate        30 * M / 10 degrees
    ShearX/Y      0.3 * M / 10
    TranslateX/Y  0.45 * M / 10 of the image size
    Color, Contrast, Brightness, Sharpness   factor 1 + 0.9 * M / 10 (times a random sign)
    Solarize      threshold 256 - 256 * M / 10
    Posterize     8 - int(4 * M / 10) bits
    AutoContrast, Equalize, Identity         no parameter

RandomErasing (Zhong et al., AAAI 2020, Alg. 1), pure JAX with an explicit key: with probability p, an image of
H x W pixels gets one rectangle replaced by random values. Up to ``attempts`` candidates are drawn,

    S_e ~ U(s_l, s_h) * H * W        (target area)
    log r_e ~ U(log r_1, log r_2)    (aspect ratio h/w; log-uniform, so r and 1/r are equally likely)
    h = round(sqrt(S_e * r_e)),  w = round(sqrt(S_e / r_e)),

and the first with 1 <= h <= H, 1 <= w <= W and s_l H W <= h w <= s_h H W is used (none: the image is kept);
its top-left corner is uniform over the positions that keep the box inside the image. Values (in the
normalised space, after ``data.normalize``): ``pixel`` N(0, 1) per pixel and channel, ``channel`` N(0, 1) per
channel, ``zero``. DeiT uses p = 0.25, area (0.02, 1/3), ratio (0.3, 1/0.3), ``pixel``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from local_learning.errors import ConfigError, DataError

OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize", "Contrast",
       "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")
FILL = (128, 128, 128)


def apply_op(image: Image.Image, op: str, magnitude: float, sign: float) -> Image.Image:
    """One RandAugment operation at ``magnitude`` in [0, 10]; ``sign`` is +1 or -1 for the signed operations."""
    m = magnitude / 10.0
    w, h = image.size
    if op == "Identity":
        return image
    if op == "AutoContrast":
        return ImageOps.autocontrast(image)
    if op == "Equalize":
        return ImageOps.equalize(image)
    if op == "Rotate":
        return image.rotate(sign * 30.0 * m, fillcolor=FILL)
    if op == "Solarize":
        return ImageOps.solarize(image, int(256 - 256 * m))
    if op == "Posterize":
        return ImageOps.posterize(image, max(1, 8 - int(4 * m)))
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        enhancer = getattr(ImageEnhance, op)(image)
        return enhancer.enhance(max(0.0, 1.0 + sign * 0.9 * m))
    if op == "ShearX":
        return image.transform(image.size, Image.AFFINE, (1, sign * 0.3 * m, 0, 0, 1, 0), fillcolor=FILL)
    if op == "ShearY":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, sign * 0.3 * m, 1, 0), fillcolor=FILL)
    if op == "TranslateX":
        return image.transform(image.size, Image.AFFINE, (1, 0, sign * 0.45 * m * w, 0, 1, 0), fillcolor=FILL)
    if op == "TranslateY":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, 0, 1, sign * 0.45 * m * h), fillcolor=FILL)
    raise DataError(f"RandAugment operation {op!r}: expected one of {OPS}")


def rand_augment(images: np.ndarray, rng: np.random.Generator, *, num_ops: int = 2, magnitude: float = 9.0,
                 ops: Sequence[str] = OPS) -> np.ndarray:
    """uint8 [N, H, W, 3] -> uint8 [N, H, W, 3], each image with its own ``num_ops`` random operations."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"rand_augment needs uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
    if not 0 <= magnitude <= 10:
        raise DataError(f"rand_augment: magnitude={magnitude} must lie in [0, 10]")
    out = np.empty_like(images)
    for i, array in enumerate(images):
        image = Image.fromarray(array)
        for _ in range(num_ops):
            op = ops[int(rng.integers(len(ops)))]
            sign = 1.0 if rng.random() < 0.5 else -1.0
            image = apply_op(image, op, magnitude, sign)
        out[i] = np.asarray(image)
    return out


ERASE_VALUES = ("pixel", "channel", "zero")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomErasingConfig:
    probability: float = 0.0
    """p: the chance that an image gets a rectangle erased (0 turns RandomErasing off)."""
    area: tuple[float, float] = (0.02, 1.0 / 3.0)
    """(s_l, s_h): the erased fraction of the image area."""
    aspect: tuple[float, float] = (0.3, 1.0 / 0.3)
    """(r_1, r_2): the range of the rectangle's height / width."""
    values: str = "pixel"
    """``pixel``: N(0, 1) per pixel and channel; ``channel``: N(0, 1) per channel; ``zero``."""
    attempts: int = 10

    def __post_init__(self):
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError(f"RandomErasingConfig.probability={self.probability}: must lie in [0, 1]")
        lo, hi = self.area
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"RandomErasingConfig.area={self.area}: expected 0 < s_l <= s_h <= 1")
        r1, r2 = self.aspect
        if not 0.0 < r1 <= r2:
            raise ConfigError(f"RandomErasingConfig.aspect={self.aspect}: expected 0 < r_1 <= r_2")
        if self.values not in ERASE_VALUES:
            raise ConfigError(f"RandomErasingConfig.values={self.values!r}: expected one of {ERASE_VALUES}")
        if self.attempts < 1:
            raise ConfigError(f"RandomErasingConfig.attempts={self.attempts}: must be at least 1")

    @property
    def active(self) -> bool:
        return self.probability > 0


def erasing_box(key: jax.Array, height: int, width: int, cfg: RandomErasingConfig) -> jax.Array:
    """int32 [5] = (erase, top, left, h, w) of one image; ``erase`` is 0 or 1 (then the box is unused)."""
    k_apply, k_area, k_ratio, k_top, k_left = jax.random.split(key, 5)
    total = height * width
    area = jax.random.uniform(k_area, (cfg.attempts,), minval=cfg.area[0], maxval=cfg.area[1]) * total
    log_r = jax.random.uniform(k_ratio, (cfg.attempts,), minval=math.log(cfg.aspect[0]),
                               maxval=math.log(cfg.aspect[1]))
    h = jnp.round(jnp.sqrt(area * jnp.exp(log_r))).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(area / jnp.exp(log_r))).astype(jnp.int32)
    # Rounding moves h * w; checking the rounded area keeps the erased fraction inside [s_l, s_h] exactly.
    hw = h * w
    ok = ((h >= 1) & (h <= height) & (w >= 1) & (w <= width)
          & (hw >= math.ceil(cfg.area[0] * total - 1e-9)) & (hw <= math.floor(cfg.area[1] * total + 1e-9)))
    first = jnp.argmax(ok)
    h, w = h[first], w[first]
    erase = ok[first] & (jax.random.uniform(k_apply) < cfg.probability)
    top = jax.random.randint(k_top, (), 0, jnp.maximum(height - h + 1, 1))
    left = jax.random.randint(k_left, (), 0, jnp.maximum(width - w + 1, 1))
    return jnp.stack([erase.astype(jnp.int32), top, left, h, w])


def erase_box(image_HxWxC: jax.Array, box: jax.Array, fill_HxWxC: jax.Array) -> jax.Array:
    """``image`` with ``fill`` inside ``box`` = (erase, top, left, h, w) when erase is 1."""
    erase, top, left, h, w = box
    rows = jnp.arange(image_HxWxC.shape[0])[:, None]
    cols = jnp.arange(image_HxWxC.shape[1])[None, :]
    inside = (erase > 0) & (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return jnp.where(inside[..., None], fill_HxWxC.astype(image_HxWxC.dtype), image_HxWxC)


@functools.partial(jax.jit, static_argnames="cfg")
def random_erasing(key: jax.Array, images_BxHxWxC: jax.Array, cfg: RandomErasingConfig) -> tuple[jax.Array, jax.Array]:
    """(images with RandomErasing applied, boxes int32 [B, 5]); each image draws from its own fold of ``key``."""
    b, height, width, channels = images_BxHxWxC.shape
    keys = jax.random.split(key, b)

    def one(k, image):
        k_box, k_fill = jax.random.split(k)
        box = erasing_box(k_box, height, width, cfg)
        shape = {"pixel": (height, width, channels), "channel": (1, 1, channels)}.get(cfg.values)
        fill = jnp.zeros((1, 1, channels)) if shape is None else jax.random.normal(k_fill, shape)
        return erase_box(image, box, jnp.broadcast_to(fill, image.shape)), box

    return jax.vmap(one)(keys, images_BxHxWxC)
