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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from local_learning.errors import DataError

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
