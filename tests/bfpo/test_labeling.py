"""The labeling function's four pair-type targets, its global ranking, and config validation."""

import itertools

import numpy as np
import pytest

from bfpo import BFPOError
from bfpo.labeling import (CATEGORIES, PAIR_TYPES, LabelingConfig, category_scores, global_ranking,
                           labeling_value, pair_type_index, pair_type_values, target_margin)

S_W = np.array([1, 1, 0, 0])
S_L = np.array([1, 0, 1, 0])


def test_defaults_give_the_papers_four_targets():
    cfg = LabelingConfig()
    assert (cfg.b1, cfg.alpha, cfg.tau, cfg.b3) == (3.0, 0.5, 0.01, 0.5)
    np.testing.assert_allclose(labeling_value(S_W, S_L, cfg), [0.5, 1.0, -1.0, -0.5])
    np.testing.assert_allclose(target_margin(S_W, S_L, cfg), [50.0, 100.0, -100.0, -50.0], rtol=1e-6)
    assert pair_type_values(cfg) == pytest.approx(dict(zip(PAIR_TYPES, [0.5, 1.0, -1.0, -0.5])))


def test_safe_safe_target_is_ipo_for_any_tau():
    for tau in (0.01, 0.1, 1.0):
        np.testing.assert_allclose(target_margin(1, 1, LabelingConfig(tau=tau)), 1 / (2 * tau), rtol=1e-6)


@pytest.mark.parametrize("b1,alpha", [(3.0, 0.5), (2.0, 0.3), (5.0, 0.9), (1.5, 0.1)])
def test_matches_the_numpy_formula_and_a_latent_score_per_category(b1, alpha):
    cfg = LabelingConfig(b1=b1, alpha=alpha, tau=0.1)
    b3 = 1 / (b1 - 1)
    np.testing.assert_allclose(labeling_value(S_W, S_L, cfg), b3 * (b1 * S_W - S_L) - alpha, rtol=1e-6)
    u = category_scores(cfg)
    for s_w, s_l in itertools.product((0, 1), repeat=2):
        helpful = u["helpful_safe" if s_w else "helpful_unsafe"]
        unhelpful = u["unhelpful_safe" if s_l else "unhelpful_unsafe"]
        assert helpful - unhelpful == pytest.approx(b3 * (b1 * s_w - s_l) - alpha)
    # 0 < alpha < 1: any safe response beats any unsafe one; among unsafe ones the helpful one is worst.
    assert global_ranking(cfg) == CATEGORIES


def test_default_category_scores():
    assert category_scores(LabelingConfig()) == pytest.approx(
        {"helpful_safe": 0.0, "unhelpful_safe": -0.5, "unhelpful_unsafe": -1.0, "helpful_unsafe": -1.5})


def test_pair_type_index_follows_pair_types_order():
    np.testing.assert_array_equal(pair_type_index(S_W, S_L), [0, 1, 2, 3])
    np.testing.assert_array_equal(pair_type_index(np.array([True, False]), np.array([False, False])), [1, 3])


@pytest.mark.parametrize("field,value", [("b1", 1.0), ("b1", 0.5), ("b1", float("nan")), ("alpha", float("inf")),
                                         ("tau", 0.0), ("tau", -0.1), ("tau", "0.1")])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(BFPOError, match=f"LabelingConfig.{field}="):
        LabelingConfig(**{field: value})
