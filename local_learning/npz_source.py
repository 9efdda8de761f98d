"""The user's own labelled images from one ``.npz`` file (for CIFAR-shaped data of your own, or any arrays).

Keys: ``x_train``, ``y_train``, ``x_test``, ``y_test`` (the convention of ``keras.datasets`` arrays saved with
``np.savez``). Images are [N, H, W, 3], or grey [N, H, W] / [N, H, W, 1] (repeated to 3 channels, as the digits
and MNIST sources do, since the models take 3), square, either uint8 pixels (0..255,
normalised by the per-channel mean and std of the training images) or float32 values used as they are (finite;
the same normalisation follows). Labels are integers in [0, num_classes). Nothing is converted silently: other
dtypes, shapes or labels are refused naming the file and key.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from local_learning.data import ArraySource, check_labels
from local_learning.errors import DataError

KEYS = ("x_train", "y_train", "x_test", "y_test")


def _images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[3] not in (1, 3):
        raise DataError(f"{path}: {key} must be square images [N, H, W, 3], [N, H, W, 1] or [N, H, W], "
                        f"got shape {x.shape}")
    if x.dtype == np.float64 or x.dtype == np.float16:
        raise DataError(f"{path}: {key} is {x.dtype}; store uint8 pixels or float32 values")
    if x.dtype not in (np.uint8, np.float32):
        raise DataError(f"{path}: {key} has dtype {x.dtype}; expected uint8 (0..255) or float32")
    if x.dtype == np.float32 and not np.all(np.isfinite(x)):
        n = int(np.sum(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
        first = int(np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0])
        raise DataError(f"{path}: {key} holds non-finite values in {n} images (first: index {first})")
    return np.repeat(x, 3, axis=-1) if x.shape[3] == 1 else x


def _labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {key} must be integer labels [N], got {y.dtype} {y.shape}")
    if len(y) != n:
        raise DataError(f"{path}: {key} has {len(y)} labels for {n} images")
    return y.astype(np.int32)


def load_npz(path: str | Path, num_classes: int, *, image_size: int | None = None) -> tuple[ArraySource, ArraySource]:
    """(train, test) from ``path``; ``image_size``, when given, must be the images' side."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: npz file not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file: {e}") from e
    with archive:
        missing = [k for k in KEYS if k not in archive.files]
        if missing:
            raise DataError(f"{path}: missing key(s) {missing}; found {sorted(archive.files)}, expected {list(KEYS)}")
        try:
            arrays = {k: archive[k] for k in KEYS}
        except ValueError as e:  # object arrays need pickle, which is refused
            raise DataError(f"{path}: {e}") from e
    out = []
    for split in ("train", "test"):
        x = _images(path, f"x_{split}", arrays[f"x_{split}"])
        y = _labels(path, f"y_{split}", arrays[f"y_{split}"], len(x))
        if image_size is not None and x.shape[1] != image_size:
            raise DataError(f"{path}: x_{split} images are {x.shape[1]}x{x.shape[2]}, the config says "
                            f"image_size={image_size}")
        name = f"{path.name}/{split}"
        try:
            check_labels(y, num_classes, name)
        except DataError as e:
            raise DataError(f"{path}: y_{split}: {e}") from e
        out.append(ArraySource(x, y, num_classes, name))
    train, test = out
    if train.images.shape[1:] != test.images.shape[1:] or train.images.dtype != test.images.dtype:
        raise DataError(f"{path}: x_train {train.images.dtype} {train.images.shape[1:]} and x_test "
                        f"{test.images.dtype} {test.images.shape[1:]} differ")
    return train, test
