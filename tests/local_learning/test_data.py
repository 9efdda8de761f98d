"""Data: CIFAR pickle fixtures (folder and archive), digits parsing, the TFDS path, augmentation, batch streams."""

import gzip
import pickle
import tarfile

import numpy as np
import pytest

from local_learning import DataError
from local_learning import data as data_lib


def write_cifar10(directory, n=6, seed=0, bad_label=False):
    rng = np.random.default_rng(seed)
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        chw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        if bad_label and name == "test_batch":
            labels[0] = 10
        (folder / name).write_bytes(pickle.dumps({b"data": chw.reshape(n, 3072), b"labels": labels}))
        arrays[name] = (chw.transpose(0, 2, 3, 1), np.asarray(labels))
    return folder, arrays


def test_cifar_from_folder_and_archive(tmp_path):
    folder, arrays = write_cifar10(tmp_path / "a")
    train, test = data_lib.load_cifar(tmp_path / "a")
    assert len(train) == 30 and len(test) == 6
    np.testing.assert_array_equal(train.images[6:12], arrays["data_batch_2"][0])
    np.testing.assert_array_equal(test.labels, arrays["test_batch"][1])
    # The same files inside the standard archive.
    archive_dir = tmp_path / "b"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    train2, test2 = data_lib.load_cifar(archive_dir)
    np.testing.assert_array_equal(train2.images, train.images)
    np.testing.assert_array_equal(test2.labels, test.labels)


def test_cifar_errors_name_the_file(tmp_path):
    folder, _ = write_cifar10(tmp_path / "a")
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4"):
        data_lib.load_cifar(tmp_path / "a")
    with pytest.raises(DataError, match="no CIFAR-100 data"):
        data_lib.load_cifar(tmp_path / "a", 100)
    write_cifar10(tmp_path / "c", bad_label=True)
    with pytest.raises(DataError, match="label 10 is outside the class range"):
        data_lib.load_cifar(tmp_path / "c")


def test_digits_parsing_and_upsampling(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 17, (20, 64))
    labels = np.arange(20) % 10
    path = tmp_path / "digits.csv.gz"
    with gzip.open(path, "wt") as f:
        for p, y in zip(pixels, labels):
            f.write(",".join(str(v) for v in [*p, y]) + "\n")
    train, test = data_lib.load_digits(16, path=path, test_fraction=0.25)
    assert len(train) == 15 and len(test) == 5
    assert train.images.shape == (15, 16, 16, 3)
    images = np.concatenate([train.images, test.images])
    all_labels = np.concatenate([train.labels, test.labels])
    order = np.random.default_rng(0).permutation(20)
    original = np.concatenate([order[5:], order[:5]])
    np.testing.assert_array_equal(all_labels, labels[original])
    # Pixel (r, c) of the 8x8 image fills the 2x2 patch at (2r, 2c), scaled from 0..16 to 0..255.
    first = pixels[original[0]].reshape(8, 8)
    np.testing.assert_array_equal(images[0, ::2, ::2, 1], np.round(first * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(images[0, 1::2, 1::2, 0], images[0, ::2, ::2, 2])


def test_real_digits_when_scikit_learn_is_installed():
    try:
        path = data_lib.digits_csv_path()
    except DataError:
        pytest.skip("scikit-learn is not installed")
    train, test = data_lib.load_digits(32, path=path)
    assert len(train) + len(test) == 1797
    assert set(np.unique(train.labels)) == set(range(10))


def test_pad_crop_flip_against_a_per_example_loop():
    images = np.random.default_rng(2).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    out = data_lib.pad_crop_flip(images, np.random.default_rng(7), pad=2)
    rng = np.random.default_rng(7)
    dy, dx, flip = rng.integers(0, 5, 5), rng.integers(0, 5, 5), rng.random(5) < 0.5
    for i in range(5):
        expected = np.pad(images[i], ((2, 2), (2, 2), (0, 0)))[dy[i]:dy[i] + 6, dx[i]:dx[i] + 6]
        if flip[i]:
            expected = expected[:, ::-1]
        np.testing.assert_array_equal(out[i], expected)


def test_batches_cover_each_epoch_once_and_are_pure_in_the_index():
    images = np.random.default_rng(3).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    source = data_lib.ArraySource(images, np.arange(10, dtype=np.int32) % 3, 3, "toy")
    batches = data_lib.ImageBatches(source, batch_size=4, seed=5)
    first_epoch = np.concatenate([batches.indices(i) for i in range(3)])[:10]
    assert sorted(first_epoch) == list(range(10))
    again = data_lib.ImageBatches(source, batch_size=4, seed=5).iterator(start=2)
    a, b = batches(2), next(again)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].dtype == np.float32 and a["label"].dtype == np.int32
    evals = list(data_lib.eval_batches(source, 4, data_lib.CIFAR10_MEAN_STD))
    assert [int(e["mask"].sum()) for e in evals] == [4, 4, 2]


def test_tfds_data_source_path_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
        source = data_lib.TfdsSource("cifar10", "train", data_dir=None, image_size=16, num_classes=10)
        assert len(source) == 7
        images, labels = source.get(np.arange(3))
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 10


def test_rand_augment_operations_against_numpy():
    from local_learning import augment

    image = np.random.default_rng(4).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    # Solarize at magnitude 5: pixels >= 128 are inverted.
    out = augment.rand_augment(image, np.random.default_rng(0), num_ops=1, magnitude=5, ops=("Solarize",))
    np.testing.assert_array_equal(out, np.where(image >= 128, 255 - image, image))
    # Posterize at magnitude 10 keeps the top 4 bits.
    out = augment.rand_augment(image, np.random.default_rng(0), num_ops=1, magnitude=10, ops=("Posterize",))
    np.testing.assert_array_equal(out, image & 0xF0)
    # Magnitude 0 leaves geometric and enhance operations the identity.
    out = augment.rand_augment(image, np.random.default_rng(0), num_ops=3, magnitude=0,
                               ops=("Rotate", "ShearX", "TranslateY", "Brightness", "Identity"))
    np.testing.assert_array_equal(out, image)
    full = augment.rand_augment(np.repeat(image, 4, axis=0), np.random.default_rng(1))
    assert full.shape == (4, 8, 8, 3) and full.dtype == np.uint8
    with pytest.raises(DataError, match="magnitude"):
        augment.rand_augment(image, np.random.default_rng(0), magnitude=11)
