"""Streams: epoch orders are pure functions of (seed, epoch), a stream (or a mix of streams) resumed from a
JSON round trip of get_state() yields exactly the batches of an uninterrupted one across epoch boundaries, length
grouping stays deterministic, and evaluation batches cover every example once."""

import json

import numpy as np
import pytest

from bfpo import DataError
from bfpo.data import MixedStreams, PreferenceStream, TokenizeConfig, evaluation_batches, tokenize_pairs
from bfpo.data import synthetic
from bfpo.tokenize import Tokenizer

CONFIG = TokenizeConfig(max_length=96, max_prompt_length=48, buckets=(56, 64, 72, 96))


@pytest.fixture(scope="module")
def safety():
    return tokenize_pairs(synthetic.make_pairs(50, seed=1), Tokenizer.byte_level(), CONFIG)


@pytest.fixture(scope="module")
def buffer():
    pairs = synthetic.make_pairs(20, seed=2, config=synthetic.SyntheticConfig(pair_type_fractions=(1, 0, 0, 0)))
    return tokenize_pairs(pairs, Tokenizer.byte_level(), CONFIG)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        flat_x, flat_y = flatten(x), flatten(y)
        assert flat_x.keys() == flat_y.keys()
        for key in flat_x:
            np.testing.assert_array_equal(flat_x[key], flat_y[key], err_msg=key)


def flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k2: v2 for k, v in tree.items() for k2, v2 in flatten(v, f"{prefix}/{k}").items()}
    return {prefix: tree}


def test_epoch_orders_are_pure_functions_of_seed_and_epoch(safety):
    a, b = PreferenceStream(safety, 8, seed=5), PreferenceStream(safety, 8, seed=5)
    assert a.steps_per_epoch == 6
    for epoch in range(3):
        order = a.epoch_order(epoch)
        np.testing.assert_array_equal(order, b.epoch_order(epoch))
        assert order.shape == (6, 8) and np.unique(order).size == 48 and order.max() < 50
    assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
    assert not np.array_equal(a.epoch_order(0), PreferenceStream(safety, 8, seed=6).epoch_order(0))
    ordered = PreferenceStream(safety, 8, seed=5, shuffle=False).epoch_order(3)
    np.testing.assert_array_equal(ordered.ravel(), np.arange(48))
    # The stream's batches are those orders, epoch after epoch.
    ids = np.stack([next(a)["example_id"] for _ in range(13)])
    np.testing.assert_array_equal(ids, np.concatenate([b.epoch_order(0), b.epoch_order(1), b.epoch_order(2)[:1]]))


@pytest.mark.parametrize("bucket_window", [1, 3])
@pytest.mark.parametrize("resume_at", [4, 6, 7])
def test_resumed_stream_equals_uninterrupted(safety, bucket_window, resume_at):
    total = 14  # two epoch boundaries at 6 steps per epoch
    uninterrupted = [next(s) for s in [PreferenceStream(safety, 8, seed=9, bucket_window=bucket_window)]
                     for _ in range(total)]
    first = PreferenceStream(safety, 8, seed=9, bucket_window=bucket_window)
    head = [next(first) for _ in range(resume_at)]
    state = json.loads(json.dumps(first.get_state()))
    resumed = PreferenceStream(safety, 8, seed=9, bucket_window=bucket_window)
    resumed.set_state(state)
    assert_same_batches(head + [next(resumed) for _ in range(total - resume_at)], uninterrupted)
    assert resumed.get_state()["epoch"] == 2


def test_length_grouping_is_deterministic_and_tighter(safety):
    grouped = PreferenceStream(safety, 8, seed=4, bucket_window=6)
    plain = PreferenceStream(safety, 8, seed=4)
    spread = lambda s, e: np.mean([np.ptp(safety.lengths[b]) for b in s.epoch_order(e)])  # noqa: E731
    for epoch in range(4):
        order = grouped.epoch_order(epoch)
        # Same examples as the plain order of that epoch, only regrouped.
        np.testing.assert_array_equal(np.sort(order.ravel()), np.sort(plain.epoch_order(epoch).ravel()))
        np.testing.assert_array_equal(order, PreferenceStream(safety, 8, seed=4, bucket_window=6).epoch_order(epoch))
    assert np.mean([spread(grouped, e) for e in range(4)]) < 0.5 * np.mean([spread(plain, e) for e in range(4)])


def test_set_state_refuses_other_data_or_settings(safety, buffer):
    state = PreferenceStream(safety, 8, seed=0).get_state()
    with pytest.raises(DataError, match="saved fingerprint="):
        PreferenceStream(buffer, 8, seed=0).set_state(state)
    with pytest.raises(DataError, match="saved seed=0 but this stream has seed=1"):
        PreferenceStream(safety, 8, seed=1).set_state(state)
    with pytest.raises(DataError, match="step=9 is not a position"):
        PreferenceStream(safety, 8, seed=0).set_state({**state, "step": 9})
    with pytest.raises(DataError, match="batch_size=64: the data has only 50 pairs"):
        PreferenceStream(safety, 64, seed=0)


def test_mixed_streams_resume_each_stream_and_restart_the_shorter(safety, buffer):
    make = lambda: MixedStreams({"safety": PreferenceStream(safety, 8, seed=0),  # noqa: E731
                                 "buffer": PreferenceStream(buffer, 4, seed=1)})
    uninterrupted = [next(m) for m in [make()] for _ in range(13)]
    first = make()
    head = [next(first) for _ in range(7)]
    state = json.loads(json.dumps(first.get_state()))
    assert (state["safety"]["epoch"], state["safety"]["step"]) == (1, 1)
    assert (state["buffer"]["epoch"], state["buffer"]["step"]) == (1, 2)  # 5 steps per epoch: restarted
    resumed = make()
    resumed.set_state(state)
    assert_same_batches(head + [next(resumed) for _ in range(6)], uninterrupted)
    assert all(set(batch) == {"safety", "buffer"} for batch in uninterrupted)
    assert uninterrupted[0]["buffer"]["pair_mask"].shape == (4,)
    with pytest.raises(DataError, match=r"saved streams \['safety'\]"):
        make().set_state({"safety": state["safety"]})


def test_evaluation_batches_cover_every_example_once(safety):
    batches = evaluation_batches(safety, 8)
    assert len(batches) == 7
    out = list(batches)
    assert all(b["pair_mask"].shape == (8,) for b in out)
    ids = np.concatenate([b["example_id"] for b in out])
    mask = np.concatenate([b["pair_mask"] for b in out])
    np.testing.assert_array_equal(ids[mask], np.arange(50))
    np.testing.assert_array_equal(ids[~mask], [-1] * 6)
    assert not out[-1]["chosen"]["mask"][2:].any()
    # The same batch, whichever way it is asked for.
    direct = safety.batch(range(48, 50), rows=8)
    assert_same_batches([out[-1]], [direct])
