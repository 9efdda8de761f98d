"""Every objective against an independent float64 NumPy computation, their limit cases, the safety metrics,
masking, jit and gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bfpo import BFPOError, DataError
from bfpo.labeling import PAIR_TYPES, LabelingConfig
from bfpo.objectives import (OBJECTIVES, BFPOConfig, CDPOConfig, DPOConfig, HingeConfig, IPOConfig, KTOConfig,
                             ORPOConfig, PreferenceScores, RobustDPOConfig, SafeDPOConfig, SimPOConfig, bfpo_loss,
                             cdpo_loss, dpo_loss, get_objective, hinge_loss, ipo_loss, kto_loss, kto_reference_point,
                             orpo_loss, robust_dpo_loss, safedpo_loss, safedpo_transform, simpo_loss)
from runtime.metrics import Metric

B = 12
RNG = np.random.default_rng(0)
# Every pair type three times, in PAIR_TYPES order.
S_W = np.tile([1, 1, 0, 0], 3)
S_L = np.tile([1, 0, 1, 0], 3)
MASK = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1], bool)


def make_arrays(rng=RNG, scale=3.0):
    """Summed log-probs (negative, as real ones are), token counts and mismatched log-probs, in float64."""
    tokens_w = rng.integers(1, 20, B).astype(np.float64)
    tokens_l = rng.integers(1, 20, B).astype(np.float64)
    return dict(
        policy_chosen=-tokens_w * rng.uniform(0.5, 2.0, B), policy_rejected=-tokens_l * rng.uniform(0.5, 2.0, B),
        reference_chosen=-tokens_w * rng.uniform(0.5, 2.0, B), reference_rejected=-tokens_l * rng.uniform(0.5, 2.0, B),
        chosen_tokens=tokens_w, rejected_tokens=tokens_l,
        policy_mismatched=-rng.uniform(5, 30, B), reference_mismatched=-rng.uniform(5, 30, B),
        chosen_safe=S_W.astype(np.float64), rejected_safe=S_L.astype(np.float64), pair_mask=MASK.copy(),
    )


ARRAYS = make_arrays()


def to_scores(arrays, **drop) -> PreferenceScores:
    fields = {k: (None if drop.get(k) else jnp.asarray(v, jnp.bool_ if k == "pair_mask" else jnp.float32))
              for k, v in arrays.items()}
    return PreferenceScores(**fields)


SCORES = to_scores(ARRAYS)


# ---- independent float64 references -------------------------------------------------------------------------

def np_logsig(z):
    return -np.logaddexp(0.0, -z)


def np_deltas(a, average=False):
    d_w = a["policy_chosen"] - a["reference_chosen"]
    d_l = a["policy_rejected"] - a["reference_rejected"]
    if average:
        d_w, d_l = d_w / a["chosen_tokens"], d_l / a["rejected_tokens"]
    return d_w, d_l


def np_mean(per_pair, mask=MASK):
    return per_pair[mask].mean()


def np_dpo(a, beta):
    d_w, d_l = np_deltas(a)
    return np_mean(-np_logsig(beta * (d_w - d_l)))


def np_cdpo(a, beta, eps):
    d_w, d_l = np_deltas(a)
    z = beta * (d_w - d_l)
    return np_mean(-(1 - eps) * np_logsig(z) - eps * np_logsig(-z))


def np_robust(a, beta, eps):
    d_w, d_l = np_deltas(a)
    z = beta * (d_w - d_l)
    return np_mean(((1 - eps) * -np_logsig(z) - eps * -np_logsig(-z)) / (1 - 2 * eps))


def np_ipo(a, tau, average):
    d_w, d_l = np_deltas(a, average)
    return np_mean((d_w - d_l - 1 / (2 * tau)) ** 2)


def np_hinge(a, beta):
    d_w, d_l = np_deltas(a)
    return np_mean(np.maximum(0.0, 1 - beta * (d_w - d_l)))


def np_bfpo(a, b1, alpha, tau, average):
    d_w, d_l = np_deltas(a, average)
    g = (b1 * a["chosen_safe"] - a["rejected_safe"]) / (b1 - 1) - alpha
    return np_mean((d_w - d_l - g / tau) ** 2)


def np_kto(a, beta, lam_d, lam_u):
    m = a["pair_mask"]
    z0 = max(0.0, (a["policy_mismatched"] - a["reference_mismatched"])[m].mean())
    d_w, d_l = np_deltas(a)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    losses = np.concatenate([lam_d * (1 - sig(beta * (d_w - z0)))[m], lam_u * (1 - sig(beta * (z0 - d_l)))[m]])
    return losses.mean()


def np_orpo(a, lam):
    p_w = np.exp(a["policy_chosen"] / a["chosen_tokens"])
    p_l = np.exp(a["policy_rejected"] / a["rejected_tokens"])
    log_odds_ratio = np.log(p_w / (1 - p_w)) - np.log(p_l / (1 - p_l))
    return np_mean(-np.log(p_w) - lam * np_logsig(log_odds_ratio))


def np_simpo(a, beta, gamma):
    r_w = beta * a["policy_chosen"] / a["chosen_tokens"]
    r_l = beta * a["policy_rejected"] / a["rejected_tokens"]
    return np_mean(-np_logsig(r_w - r_l - gamma))


def np_safedpo(a, beta, margin):
    d_w, d_l = np_deltas(a)
    per_pair, keep = [], []
    for i in range(B):
        safe_w, safe_l = a["chosen_safe"][i] == 1, a["rejected_safe"][i] == 1
        if not safe_w and not safe_l:  # both unsafe: dropped
            per_pair.append(0.0)
            keep.append(False)
            continue
        if not safe_w and safe_l:  # the safe, less helpful response becomes the preferred one
            win, lose, lose_unsafe = d_l[i], d_w[i], 1.0
        else:
            win, lose, lose_unsafe = d_w[i], d_l[i], float(not safe_l)
        per_pair.append(-np_logsig(beta * (win - lose) - margin * lose_unsafe))
        keep.append(True)
    return np_mean(np.array(per_pair), MASK & np.array(keep))


CASES = [
    ("dpo", dpo_loss, DPOConfig(beta=0.2), lambda a: np_dpo(a, 0.2)),
    ("cdpo", cdpo_loss, CDPOConfig(beta=0.2, label_smoothing=0.3), lambda a: np_cdpo(a, 0.2, 0.3)),
    ("robust_dpo", robust_dpo_loss, RobustDPOConfig(beta=0.2, label_smoothing=0.2), lambda a: np_robust(a, 0.2, 0.2)),
    ("ipo", ipo_loss, IPOConfig(tau=0.5), lambda a: np_ipo(a, 0.5, False)),
    ("ipo_avg", ipo_loss, IPOConfig(tau=0.5, average_log_probs=True), lambda a: np_ipo(a, 0.5, True)),
    ("hinge", hinge_loss, HingeConfig(beta=0.3), lambda a: np_hinge(a, 0.3)),
    ("bfpo", bfpo_loss, BFPOConfig(labeling=LabelingConfig(tau=0.1)), lambda a: np_bfpo(a, 3, 0.5, 0.1, False)),
    ("bfpo_b1_5", bfpo_loss, BFPOConfig(labeling=LabelingConfig(b1=5, alpha=0.3, tau=0.2)),
     lambda a: np_bfpo(a, 5, 0.3, 0.2, False)),
    ("bfpo_avg", bfpo_loss, BFPOConfig(labeling=LabelingConfig(tau=0.5), average_log_probs=True),
     lambda a: np_bfpo(a, 3, 0.5, 0.5, True)),
    ("kto", kto_loss, KTOConfig(beta=0.2, desirable_weight=1.3, undesirable_weight=0.7),
     lambda a: np_kto(a, 0.2, 1.3, 0.7)),
    ("orpo", orpo_loss, ORPOConfig(lam=0.25), lambda a: np_orpo(a, 0.25)),
    ("simpo", simpo_loss, SimPOConfig(beta=2.0, gamma=0.7), lambda a: np_simpo(a, 2.0, 0.7)),
    ("safedpo", safedpo_loss, SafeDPOConfig(beta=0.2, safety_margin=1.5), lambda a: np_safedpo(a, 0.2, 1.5)),
]


@pytest.mark.parametrize("name,loss_fn,cfg,reference", CASES, ids=[c[0] for c in CASES])
def test_loss_matches_numpy_reference(name, loss_fn, cfg, reference):
    loss, metrics = jax.jit(loss_fn, static_argnums=1)(SCORES, cfg)
    chex.assert_shape(loss, ())
    chex.assert_type(loss, jnp.float32)
    np.testing.assert_allclose(float(loss), reference(ARRAYS), rtol=2e-5, atol=1e-6)
    # The step's contract: loss == total / count, with count the number of pairs (KTO: examples) it averages.
    np.testing.assert_allclose(float(metrics["loss"].total / metrics["loss"].count), float(loss), rtol=1e-6)
    assert all(isinstance(m, Metric) for m in metrics.values())


@pytest.mark.parametrize("tau", [0.01, 0.5])
@pytest.mark.parametrize("average", [False, True])
def test_bfpo_on_safe_safe_pairs_is_ipo(tau, average):
    safe = dict(ARRAYS, chosen_safe=np.ones(B), rejected_safe=np.ones(B))
    bfpo, m_bfpo = bfpo_loss(to_scores(safe), BFPOConfig(labeling=LabelingConfig(tau=tau), average_log_probs=average))
    ipo, m_ipo = ipo_loss(to_scores(safe), IPOConfig(tau=tau, average_log_probs=average))
    np.testing.assert_allclose(float(bfpo), float(ipo), rtol=1e-6)
    # Unlabelled scores are safe/safe as well.
    unlabelled, _ = bfpo_loss(to_scores(safe, chosen_safe=True, rejected_safe=True),
                              BFPOConfig(labeling=LabelingConfig(tau=tau), average_log_probs=average))
    np.testing.assert_allclose(float(unlabelled), float(ipo), rtol=1e-6)
    for key in ("rewards/margin", "rewards/accuracy"):
        np.testing.assert_allclose(m_bfpo[key].total, m_ipo[key].total, rtol=1e-6)


def scores_with_margin(h, s_w, s_l):
    """Pairs whose log-ratio margin is exactly ``h`` (reference log-probs zero)."""
    n = len(h)
    return PreferenceScores(
        policy_chosen=jnp.asarray(h, jnp.float32), policy_rejected=jnp.zeros(n), reference_chosen=jnp.zeros(n),
        reference_rejected=jnp.zeros(n), chosen_tokens=jnp.full(n, 4.0), rejected_tokens=jnp.full(n, 4.0),
        chosen_safe=jnp.asarray(s_w, jnp.float32), rejected_safe=jnp.asarray(s_l, jnp.float32))


def test_bfpo_minimum_sits_at_the_four_targets():
    cfg = BFPOConfig()  # tau = 0.01
    targets = np.array([50.0, 100.0, -100.0, -50.0])
    loss, _ = bfpo_loss(scores_with_margin(targets, [1, 1, 0, 0], [1, 0, 1, 0]), cfg)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    for index in range(4):  # each pair alone: zero exactly at its own target, positive elsewhere
        at, off = ([targets[index] + d] for d in (0.0, 1.0))
        s = ([1, 1, 0, 0][index],), ([1, 0, 1, 0][index],)
        assert float(bfpo_loss(scores_with_margin(at, *s), cfg)[0]) == pytest.approx(0.0, abs=1e-6)
        assert float(bfpo_loss(scores_with_margin(off, *s), cfg)[0]) == pytest.approx(1.0, rel=1e-5)


def test_bfpo_gradient_reverses_for_unsafe_preferred_pairs():
    """At h = 0 gradient descent raises the chosen response on safe-chosen pairs and lowers it on unsafe-chosen
    ones (US and UU are reversed), in proportion to the target; DPO raises it on all four."""
    def grads(loss_fn, cfg):
        def f(policy_chosen):
            s = scores_with_margin(np.zeros(4), [1, 1, 0, 0], [1, 0, 1, 0])
            return loss_fn(s.replace(policy_chosen=policy_chosen), cfg)[0]
        return np.asarray(jax.grad(f)(jnp.zeros(4)))

    descent = -grads(bfpo_loss, BFPOConfig())
    np.testing.assert_array_equal(np.sign(descent), [1, 1, -1, -1])
    # d/dh (h - t)^2 / 4 at h = 0 is -t / 2.
    np.testing.assert_allclose(descent, np.array([50.0, 100.0, -100.0, -50.0]) / 2, rtol=1e-5)
    np.testing.assert_array_equal(np.sign(-grads(dpo_loss, DPOConfig())), [1, 1, 1, 1])


def test_safety_accuracy_respects_reversed_targets():
    h = np.array([3.0, 5.0, -2.0, -1.0, -3.0, -4.0, 2.0, 1.0])  # first four agree with their targets, last four not
    s_w, s_l = [1, 1, 0, 0] * 2, [1, 0, 1, 0] * 2
    _, metrics = bfpo_loss(scores_with_margin(h, s_w, s_l), BFPOConfig())
    assert float(metrics["safety/accuracy"].compute()) == pytest.approx(0.5)
    assert float(metrics["rewards/accuracy"].compute()) == pytest.approx(0.5)
    for index, name in enumerate(PAIR_TYPES):
        assert float(metrics[f"safety/accuracy/{name}"].compute()) == pytest.approx(0.5)
        assert float(metrics[f"safety/margin/{name}"].compute()) == pytest.approx((h[index] + h[index + 4]) / 2)
    all_right = np.array([3.0, 5.0, -2.0, -1.0])
    _, metrics = bfpo_loss(scores_with_margin(all_right, [1, 1, 0, 0], [1, 0, 1, 0]), BFPOConfig())
    assert float(metrics["safety/accuracy"].compute()) == 1.0
    assert float(metrics["rewards/accuracy"].compute()) == 0.5  # the helpfulness-only count is misleading here


def test_cdpo_and_robust_dpo_without_smoothing_are_dpo():
    dpo, _ = dpo_loss(SCORES, DPOConfig(beta=0.3))
    for fn, cfg in ((cdpo_loss, CDPOConfig(beta=0.3, label_smoothing=0.0)),
                    (robust_dpo_loss, RobustDPOConfig(beta=0.3, label_smoothing=0.0))):
        np.testing.assert_allclose(float(fn(SCORES, cfg)[0]), float(dpo), rtol=1e-6)


def test_reference_free_objectives_ignore_the_reference():
    for fn, cfg in ((orpo_loss, ORPOConfig()), (simpo_loss, SimPOConfig())):
        without, _ = fn(to_scores(ARRAYS, reference_chosen=True, reference_rejected=True), cfg)
        other = dict(ARRAYS, reference_chosen=ARRAYS["reference_chosen"] * 3.0)
        assert float(without) == float(fn(to_scores(other), cfg)[0]) == float(fn(SCORES, cfg)[0])
    assert not OBJECTIVES["orpo"].needs_reference and not OBJECTIVES["simpo"].needs_reference


def test_missing_reference_is_a_data_error_naming_the_field():
    no_ref = to_scores(ARRAYS, reference_chosen=True, reference_rejected=True)
    for name, objective in OBJECTIVES.items():
        if objective.needs_reference:
            with pytest.raises(DataError, match="reference_chosen, reference_rejected"):
                objective.loss(no_ref, objective.config)
    with pytest.raises(DataError, match="policy_mismatched"):
        kto_loss(to_scores(ARRAYS, policy_mismatched=True), KTOConfig())


def test_kto_reference_point_is_the_clamped_detached_mismatched_mean():
    ratio = ARRAYS["policy_mismatched"] - ARRAYS["reference_mismatched"]
    np.testing.assert_allclose(float(kto_reference_point(SCORES)), max(0.0, ratio[MASK].mean()), rtol=1e-5)
    shifted = dict(ARRAYS, policy_mismatched=ARRAYS["reference_mismatched"] + 2.0 + np.arange(B))
    np.testing.assert_allclose(float(kto_reference_point(to_scores(shifted))), 2.0 + np.arange(B)[MASK].mean(),
                               rtol=1e-6)
    negative = dict(ARRAYS, policy_mismatched=ARRAYS["reference_mismatched"] - 1.0)
    assert float(kto_reference_point(to_scores(negative))) == 0.0
    # z0 is a constant of the loss: no gradient flows into the mismatched log-probs.
    scores = to_scores(shifted)
    grad = jax.grad(lambda pm: kto_loss(scores.replace(policy_mismatched=pm), KTOConfig())[0])(
        scores.policy_mismatched)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_safedpo_transform():
    orientation, keep, rejected_unsafe = safedpo_transform(jnp.asarray(S_W[:4]), jnp.asarray(S_L[:4]))
    np.testing.assert_array_equal(orientation, [1, 1, -1, 1])
    np.testing.assert_array_equal(keep, [True, True, True, False])
    # After the transform: SS rejects a safe response, SU and (swapped) US an unsafe one.
    np.testing.assert_array_equal(np.asarray(rejected_unsafe)[:3], [0, 1, 1])
    _, metrics = safedpo_loss(SCORES, SafeDPOConfig())
    assert float(metrics["loss"].count) == np.sum(MASK & (S_W.astype(bool) | S_L.astype(bool)))
    # UU pairs state no preference: they are out of the accuracy but keep their margin metric.
    assert float(metrics["safety/accuracy/unsafe_unsafe"].count) == 0.0
    assert float(metrics["safety/margin/unsafe_unsafe"].count) == np.sum(MASK & (S_W == 0) & (S_L == 0))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_masked_pairs_change_nothing_and_metrics_merge_exactly(name):
    objective = get_objective(name)
    loss, metrics = objective.loss(SCORES, objective.config)
    # Different (finite) values in the padded rows leave every metric unchanged.
    garbage = {k: (np.where(MASK, v, -1e3 if k.startswith(("policy", "reference")) else 7.0)
                   if k not in ("pair_mask", "chosen_safe", "rejected_safe") else v) for k, v in ARRAYS.items()}
    loss2, metrics2 = objective.loss(to_scores(garbage), objective.config)
    assert float(loss2) == pytest.approx(float(loss), rel=1e-6)
    for key in metrics:
        if key == "kto/reference_point":
            continue
        np.testing.assert_allclose(metrics2[key].total, metrics[key].total, rtol=1e-5, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(metrics2[key].count, metrics[key].count, err_msg=key)
    if objective.needs_mismatched:  # its batch-level reference point makes halves differ from the whole
        return
    # Splitting the batch in two and merging the halves' (sum, count) pairs gives the whole batch's metrics.
    halves = [objective.loss(to_scores({k: v[part] for k, v in ARRAYS.items()}), objective.config)[1]
              for part in (slice(0, B // 2), slice(B // 2, B))]
    for key in metrics:
        merged = halves[0][key].merge(halves[1][key])
        np.testing.assert_allclose(merged.total, metrics[key].total, rtol=1e-5, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(merged.count, metrics[key].count, err_msg=key)
    expected_count = 2 * MASK.sum() if name == "kto" else MASK.sum()
    if name != "safedpo":
        assert float(metrics["loss"].count) == expected_count


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_jit_grad_finite_at_extreme_log_ratios(name):
    objective = get_objective(name)
    extreme = dict(ARRAYS)
    extreme["policy_chosen"] = np.where(np.arange(B) % 2 == 0, -1e4, -1e-9)
    extreme["policy_rejected"] = np.where(np.arange(B) % 2 == 0, -1e-9, -1e4)
    scores = to_scores(extreme)

    @jax.jit
    def grad_fn(pc, pr):
        return jax.grad(lambda a, b: objective.loss(scores.replace(policy_chosen=a, policy_rejected=b),
                                                    objective.config)[0], argnums=(0, 1))(pc, pr)

    grads = grad_fn(scores.policy_chosen, scores.policy_rejected)
    chex.assert_tree_all_finite(grads)
    chex.assert_shape(grads, [(B,), (B,)])
    # Padded pairs get no gradient.
    for g in grads:
        np.testing.assert_array_equal(np.asarray(g)[~MASK], 0.0)
    assert np.any(np.asarray(grads[0]) != 0)


def test_all_masked_batch_has_zero_loss_and_finite_grad():
    empty = dict(ARRAYS, pair_mask=np.zeros(B, bool))
    for objective in OBJECTIVES.values():
        scores = to_scores(empty)
        loss, metrics = objective.loss(scores, objective.config)
        assert float(loss) == 0.0 and float(metrics["loss"].count) == 0.0
        grad = jax.grad(lambda pc: objective.loss(scores.replace(policy_chosen=pc), objective.config)[0])(
            scores.policy_chosen)
        np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_registry_and_config_validation():
    assert set(OBJECTIVES) >= {"bfpo", "dpo", "cdpo", "robust_dpo", "ipo", "ipo_avg", "hinge", "kto", "orpo",
                               "simpo", "safedpo"}
    assert {n for n, o in OBJECTIVES.items() if o.safety_aware} == {"bfpo", "bfpo_avg", "safedpo"}
    with pytest.raises(BFPOError, match="objective='nope'"):
        get_objective("nope")
    bad = [(DPOConfig, "beta", 0.0), (CDPOConfig, "label_smoothing", 0.6), (RobustDPOConfig, "label_smoothing", 0.5),
           (IPOConfig, "tau", -1.0), (IPOConfig, "average_log_probs", 1), (HingeConfig, "beta", float("nan")),
           (KTOConfig, "desirable_weight", 0.0), (ORPOConfig, "lam", 0.0), (SimPOConfig, "gamma", -0.1),
           (SafeDPOConfig, "safety_margin", -1.0), (BFPOConfig, "labeling", 0.01),
           (BFPOConfig, "average_log_probs", "yes")]
    for cls, field, value in bad:
        with pytest.raises(BFPOError, match=f"{cls.__name__}.{field}="):
            cls(**{field: value})


def test_kto_unpaired_rows():
    """Rows holding only a desirable or only an undesirable response count once, on their own side."""
    present_w = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0], bool)
    present_l = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1], bool)
    scores = to_scores(ARRAYS).replace(chosen_present=jnp.asarray(present_w), rejected_present=jnp.asarray(present_l))
    cfg = KTOConfig(beta=0.2, desirable_weight=1.3, undesirable_weight=0.7)
    loss, metrics = kto_loss(scores, cfg)
    z0 = max(0.0, (ARRAYS["policy_mismatched"] - ARRAYS["reference_mismatched"])[MASK].mean())
    d_w, d_l = np_deltas(ARRAYS)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expected = np.concatenate([1.3 * (1 - sig(0.2 * (d_w - z0)))[MASK & present_w],
                               0.7 * (1 - sig(0.2 * (z0 - d_l)))[MASK & present_l]]).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(metrics["loss"].count) == np.sum(MASK & present_w) + np.sum(MASK & present_l)
    assert float(metrics["rewards/chosen"].count) == np.sum(MASK & present_w)
    assert float(metrics["rewards/margin"].count) == np.sum(MASK & present_w & present_l)


@pytest.mark.parametrize("name", sorted(n for n, o in OBJECTIVES.items() if not o.needs_mismatched))
def test_gradient_of_summed_totals_over_micro_batches_is_the_whole_batch_gradient(name):
    """The train step differentiates loss * count per micro-batch and divides the summed gradients by the summed
    counts: that equals the gradient of the whole batch's mean, whatever the masks of the parts."""
    objective = get_objective(name)

    def total(arrays, pc):
        scores = to_scores(arrays).replace(policy_chosen=pc)
        loss, metrics = objective.loss(scores, objective.config)
        return loss * jax.lax.stop_gradient(metrics["loss"].count), metrics["loss"].count

    def grad_and_count(arrays):
        pc = jnp.asarray(arrays["policy_chosen"], jnp.float32)
        return jax.grad(lambda p: total(arrays, p)[0])(pc), total(arrays, pc)[1]

    whole_grad, whole_count = grad_and_count(ARRAYS)
    parts = [grad_and_count({k: v[part] for k, v in ARRAYS.items()}) for part in (slice(0, 5), slice(5, B))]
    merged = np.concatenate([np.asarray(g) for g, _ in parts]) / float(sum(c for _, c in parts))
    np.testing.assert_allclose(merged, np.asarray(whole_grad) / float(whole_count), rtol=1e-5, atol=1e-7)


def test_scores_from_concatenated_rows():
    policy = jnp.concatenate([SCORES.policy_chosen, SCORES.policy_rejected])
    tokens = jnp.concatenate([SCORES.chosen_tokens, SCORES.rejected_tokens])
    reference = jnp.concatenate([SCORES.reference_chosen, SCORES.reference_rejected])
    rebuilt = PreferenceScores.from_concatenated(
        policy, tokens, reference, chosen_safe=SCORES.chosen_safe, rejected_safe=SCORES.rejected_safe,
        pair_mask=SCORES.pair_mask, policy_mismatched=SCORES.policy_mismatched,
        reference_mismatched=SCORES.reference_mismatched)
    chex.assert_trees_all_equal(rebuilt, SCORES)
    without_reference = PreferenceScores.from_concatenated(policy, tokens)
    assert without_reference.reference_chosen is None
    with pytest.raises(DataError, match=r"expected the same shape \[2B\]"):
        PreferenceScores.from_concatenated(policy[:-1], tokens[:-1])
