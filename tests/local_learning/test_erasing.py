"""RandomErasing: statistics of the erased boxes against the configured ranges, the erased pixels against a NumPy
mask of the box, p = 0 is the identity, and the wiring into the batch stream and the DeiT preset."""

import jax
import numpy as np
import pytest

from local_learning import ConfigError
from local_learning import data as data_lib
from local_learning.augment import RandomErasingConfig, random_erasing

H, W, C, N = 12, 16, 3, 600
CFG = RandomErasingConfig(probability=0.5, area=(0.05, 0.3), aspect=(0.5, 2.0))


@pytest.fixture(scope="module")
def erased():
    images = np.random.default_rng(0).standard_normal((N, H, W, C)).astype(np.float32)
    out, boxes = random_erasing(jax.random.key(1), images, CFG)
    return images, np.asarray(out), np.asarray(boxes)


def box_mask(top, left, h, w):
    mask = np.zeros((H, W), bool)
    mask[top:top + h, left:left + w] = True
    return mask


def test_boxes_lie_inside_the_image_with_area_and_aspect_in_range(erased):
    _, _, boxes = erased
    erase, top, left, h, w = boxes.T
    on = erase == 1
    # About p of the images are erased (a failed draw of every attempt is rare at these ranges): 4 sigma.
    assert abs(on.mean() - CFG.probability) < 4 * np.sqrt(0.25 / N)
    assert np.all((top[on] >= 0) & (left[on] >= 0) & (top[on] + h[on] <= H) & (left[on] + w[on] <= W))
    fraction = h[on] * w[on] / (H * W)
    assert fraction.min() >= CFG.area[0] and fraction.max() <= CFG.area[1]
    # Rounding h and w to integers moves the ratio by at most a factor (x + 0.5) / (x - 0.5) on each side.
    slack = ((h[on] + 0.5) / np.maximum(h[on] - 0.5, 0.5)) * ((w[on] + 0.5) / np.maximum(w[on] - 0.5, 0.5))
    ratio = h[on] / w[on]
    assert np.all(ratio >= CFG.aspect[0] / slack) and np.all(ratio <= CFG.aspect[1] * slack)
    # The boxes really spread over the range, not one size.
    assert fraction.max() - fraction.min() > 0.15 and ratio.max() > 1.2 and ratio.min() < 0.8


def test_exactly_the_box_is_replaced(erased):
    images, out, boxes = erased
    for image, result, (e, top, left, h, w) in zip(images, out, boxes):
        mask = box_mask(top, left, h, w) if e else np.zeros((H, W), bool)
        np.testing.assert_array_equal(result[~mask], image[~mask])
        assert np.all(result[mask] != image[mask])
    # Per-pixel values are standard normal.
    values = np.concatenate([r[box_mask(*b[1:])].ravel() for r, b in zip(out, boxes) if b[0]])
    assert abs(values.mean()) < 0.05 and abs(values.std() - 1.0) < 0.05


def test_probability_zero_is_the_identity_and_other_fills():
    images = np.random.default_rng(2).standard_normal((16, H, W, C)).astype(np.float32)
    same, boxes = random_erasing(jax.random.key(3), images, RandomErasingConfig(probability=0.0))
    np.testing.assert_array_equal(np.asarray(same), images)
    assert not np.asarray(boxes)[:, 0].any()
    zero, boxes = random_erasing(jax.random.key(3), images, RandomErasingConfig(probability=1.0, values="zero"))
    zero, boxes = np.asarray(zero), np.asarray(boxes)
    assert boxes[:, 0].all()
    for z, b in zip(zero, boxes):
        assert np.all(z[box_mask(*b[1:])] == 0)
    chan, boxes = random_erasing(jax.random.key(3), images, RandomErasingConfig(probability=1.0, values="channel"))
    for c, b in zip(np.asarray(chan), np.asarray(boxes)):
        inside = c[box_mask(*b[1:])]
        np.testing.assert_array_equal(inside, np.broadcast_to(inside[0], inside.shape))
    with pytest.raises(ConfigError, match="area"):
        RandomErasingConfig(area=(0.5, 0.2))
    with pytest.raises(ConfigError, match="probability"):
        RandomErasingConfig(probability=1.5)


def test_batch_stream_erases_after_normalisation_and_stays_pure():
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    source = data_lib.ArraySource(images, np.arange(20, dtype=np.int32) % 4, 4, "toy")
    plain = data_lib.ImageBatches(source, batch_size=8, seed=1, augment="none")
    cfg = RandomErasingConfig(probability=1.0, area=(0.1, 0.4))
    erasing = data_lib.ImageBatches(source, batch_size=8, seed=1, augment="none", erasing=cfg)
    a, b = plain(3), erasing(3)
    changed = np.any(a["image"] != b["image"], axis=-1)
    assert changed.any(axis=(1, 2)).all()
    # Each example differs from the un-erased one on one rectangle only.
    for m in changed:
        rows, cols = np.nonzero(m)
        assert m[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    np.testing.assert_array_equal(b["image"], erasing(3)["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_deit_preset_uses_random_erasing():
    from experiments.configs.local_learning import LocalLearningConfig

    cfg = LocalLearningConfig.deit_s_k4()
    assert cfg.data.random_erasing.probability == 0.25 and cfg.data.random_erasing.values == "pixel"
    assert not LocalLearningConfig.digits().data.random_erasing.active
