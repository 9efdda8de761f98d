"""Reference cache: the one-pass precompute equals full-logit log-probs of every example (padding skipped); the
disk cache is reused for the same model and data and recomputed when either changes; batches get the cached
values by example id with the wrapped iterator's position; the loss with cached reference log-probs equals the
loss with a frozen reference copy."""

import json
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from bfpo.errors import DataError
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import init_params
from bfpo.reference_cache import (ReferenceCache, WithReference, compute_reference_logprobs, load_or_compute,
                                  params_fingerprint)
from bfpo.train_params import ParamLayout
from bfpo.train_step import PreferenceConfig, make_eval_metrics
from runtime.batches import IndexedBatches

sys.path.insert(0, str(Path(__file__).parent))
from test_train_step import CFG, numpy_logprobs, preference_stream  # noqa: E402

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

N = 10  # examples: batches of 4, the last one holds 2 real pairs and 2 padding rows


def dataset_batches(seed=0):
    """Fixed evaluation-style batches over N examples: ids 0..N-1 once each, the last batch padded with -1."""
    out = []
    for start in range(0, N, 4):
        batch = preference_stream(seed + start, pairs=4, padded=max(0, start + 4 - N))
        batch["example_id"] = np.where(batch["pair_mask"], np.arange(start, start + 4), -1).astype(np.int32)
        out.append(batch)
    return out


@pytest.fixture(scope="module")
def reference():
    return jax.jit(lambda: init_params(CFG, seed=0))()


@pytest.fixture(scope="module")
def computed(reference):
    return compute_reference_logprobs(CFG, reference, dataset_batches(), N, chunk=4)


def test_precompute_equals_full_logit_logprobs_of_every_example(reference, computed):
    chosen, rejected = computed
    expected_c, expected_r = np.full(N, np.nan), np.full(N, np.nan)
    for batch in dataset_batches():
        real = batch["pair_mask"]
        expected_c[batch["example_id"][real]] = numpy_logprobs(reference, batch["chosen"])[real]
        expected_r[batch["example_id"][real]] = numpy_logprobs(reference, batch["rejected"])[real]
    np.testing.assert_allclose(chosen, expected_c, rtol=1e-5)
    np.testing.assert_allclose(rejected, expected_r, rtol=1e-5)


def test_precompute_rejects_a_pass_that_misses_or_repeats_examples(reference):
    batches = dataset_batches()
    with pytest.raises(DataError, match="never appeared"):
        compute_reference_logprobs(CFG, reference, batches[:-1], N, chunk=4)
    with pytest.raises(DataError, match="repeat"):
        compute_reference_logprobs(CFG, reference, batches + batches[:1], N, chunk=4)


def test_cache_is_reused_and_invalidated_by_model_or_data(tmp_path, reference, computed):
    calls = []

    def compute():
        calls.append(1)
        return computed

    model_fp = params_fingerprint(CFG, reference)
    first = load_or_compute(tmp_path, model_fingerprint=model_fp, data_fingerprint="data-A", compute=compute)
    again = load_or_compute(tmp_path, model_fingerprint=model_fp, data_fingerprint="data-A", compute=compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(again.chosen, first.chosen)
    header = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert header["model_fingerprint"] == model_fp and header["num_examples"] == N

    load_or_compute(tmp_path, model_fingerprint=model_fp, data_fingerprint="data-B", compute=compute)
    assert len(calls) == 2
    nudged = jax.tree_util.tree_map_with_path(lambda path, x: x + 1e-3 if "'norm'" in str(path) else x, reference)
    other_fp = params_fingerprint(CFG, nudged)
    assert other_fp != model_fp
    assert params_fingerprint(LlamaConfig.tiny().with_execution(remat="full"), reference) != model_fp
    load_or_compute(tmp_path, model_fingerprint=other_fp, data_fingerprint="data-A", compute=compute)
    assert len(calls) == 3
    load_or_compute(tmp_path, model_fingerprint=model_fp, data_fingerprint="data-A", compute=compute)
    assert len(calls) == 3


def test_lookup_wrapper_adds_reference_by_id_and_delegates_position(computed):
    cache = ReferenceCache(*computed, header={"key": "k"})
    batches = dataset_batches()
    wrapped = WithReference(IndexedBatches(lambda i: {"safety": batches[i % 3]}), {"safety": cache})
    next(wrapped)
    second = next(wrapped)["safety"]
    ids = batches[1]["example_id"]
    np.testing.assert_array_equal(second["reference_chosen"], computed[0][ids])
    np.testing.assert_array_equal(second["reference_rejected"], computed[1][ids])
    assert wrapped.get_state() == {"index": 2}
    wrapped.set_state({"index": 2})
    last = next(wrapped)["safety"]
    assert np.all(last["reference_chosen"][~last["pair_mask"]] == 0.0)
    with pytest.raises(DataError, match="outside"):
        cache.lookup(np.array([N]))


def test_cached_reference_gives_the_frozen_copy_loss(reference, computed):
    policy = jax.jit(lambda: init_params(CFG, seed=1))()
    cache = ReferenceCache(*computed, header={"key": "k"})
    batch = {"safety": dataset_batches()[2]}  # the padded batch
    cached = next(WithReference(iter([batch]), {"safety": cache}))
    frozen = make_eval_metrics(CFG, PreferenceConfig(layout=ParamLayout(reference="frozen")))
    from_cache = make_eval_metrics(CFG, PreferenceConfig(layout=ParamLayout(reference="batch")))
    m_frozen = jax.device_get(jax.jit(frozen)({"policy": policy, "reference": reference}, batch))
    m_cache = jax.device_get(jax.jit(from_cache)({"policy": policy}, cached))
    assert set(m_frozen) == set(m_cache)
    chex.assert_trees_all_close(m_cache, m_frozen, rtol=1e-5, atol=1e-4)
    assert float(m_cache["loss"].count) == 2
