"""Harmful fine-tuning defences as pure update rules: Booster's direction against its formula (separate gradient
calls, and a quadratic's closed form), Lisa's schedule against the official trainer's switching logic replayed
step by step, its proximal term, and its anchors across a resume."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bfpo.defences.booster import NORM_EPS, BoosterConfig, booster_gradient
from bfpo.defences.lisa import (ALIGNMENT, FINETUNE, LisaConfig, LisaState, init_state, lisa_objective, phase,
                                proximal_term, record_switch)
from bfpo.defences.repnoise import RepNoiseConfig, gaussian_mmd, repnoise_loss
from bfpo.errors import BFPOError


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"w": jax.random.normal(k1, (4, 3)), "b": jax.random.normal(k2, (3,))}


def _loss(seed):
    x = jax.random.normal(jax.random.PRNGKey(seed), (8, 4))
    y = jax.random.normal(jax.random.PRNGKey(seed + 100), (8, 3))
    return lambda p: jnp.mean(jnp.square(jnp.tanh(x @ p["w"] + p["b"][None, :]) - y))


def test_booster_direction_equals_its_formula():
    params, f, h = _params(), _loss(1), _loss(2)
    cfg = BoosterConfig(lam=5.0, alpha=0.1)
    value, grads, metrics = booster_gradient(f, h, params, cfg)
    g_h = jax.grad(h)(params)
    norm = np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(g_h)))
    moved = jax.tree.map(lambda w, g: w - 0.1 * g / (norm + NORM_EPS), params, g_h)
    expected = jax.tree.map(lambda a, b, c: a + 5.0 * (b - c), jax.grad(f)(params), g_h, jax.grad(h)(moved))
    chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-7)
    assert float(value) == pytest.approx(float(f(params)), rel=1e-6)
    assert float(metrics["harmful_loss_reduction"].total) == pytest.approx(float(h(params) - h(moved)), rel=1e-4)


def test_booster_on_a_quadratic_matches_the_closed_form():
    """h(w) = w'Aw/2: grad h(w) - grad h(w') = alpha A (A w) / ||A w||; f(w) = ||w - c||^2 / 2."""
    a = jnp.asarray([[2.0, 0.5], [0.5, 1.0]])
    c = jnp.asarray([1.0, -1.0])
    w = jnp.asarray([0.3, 0.7])
    cfg = BoosterConfig(lam=2.0, alpha=0.05)
    _, g, _ = booster_gradient(lambda w: 0.5 * jnp.sum((w - c) ** 2), lambda w: 0.5 * w @ a @ w, w, cfg)
    aw = a @ w
    expected = (w - c) + 2.0 * 0.05 * (a @ aw) / (jnp.linalg.norm(aw) + NORM_EPS)
    chex.assert_trees_all_close(g, expected, rtol=1e-6)


def test_booster_with_lambda_zero_is_the_alignment_gradient():
    params, f, h = _params(), _loss(1), _loss(2)
    _, g, _ = booster_gradient(f, h, params, BoosterConfig(lam=0.0))
    chex.assert_trees_all_close(g, jax.grad(f)(params))


def _official_phases(cfg: LisaConfig, steps: int) -> list[int]:
    """The official trainer's status machine (status, clock, steps), replayed: the phase each step runs in."""
    status = "alignment" if cfg.alignment_steps else "finetune"
    clock, out = 0, []
    for step in range(steps):
        if status == "alignment":
            if clock % cfg.alignment_steps == 0 and step != 0 and cfg.finetune_steps != 0:
                status, clock = "finetune", 0
        elif clock % cfg.finetune_steps == 0 and step != 0 and cfg.alignment_steps != 0:
            status, clock = "alignment", 0
        out.append(ALIGNMENT if status == "alignment" else FINETUNE)
        clock += 1
    return out


@pytest.mark.parametrize("ka, kf", [(3, 5), (1, 1), (4, 0), (0, 2), (100, 900)])
def test_lisa_schedule_matches_the_official_switching(ka, kf):
    cfg = LisaConfig(alignment_steps=ka, finetune_steps=kf)
    n = 2 * (ka + kf) + 7
    assert [int(phase(t, cfg)) for t in range(n)] == _official_phases(cfg, n)


def _run(cfg, total, params, state, start, stop, f, h, lr=0.1):
    step_fn = jax.jit(lambda p, s, t: _one_step(p, s, t, cfg, total, f, h, lr))
    for t in range(start, stop):
        params, state = step_fn(params, state, t)
    return params, state


def _one_step(params, state, t, cfg, total, f, h, lr):
    state = record_switch(state, params, t, cfg)
    g = jax.grad(lambda p: lisa_objective(f, h, p, state, t, cfg, total))(params)
    return jax.tree.map(lambda p, d: p - lr * d, params, g), state


def test_lisa_anchors_follow_the_switches_and_resume_exactly():
    cfg = LisaConfig(alignment_steps=3, finetune_steps=4, rho=0.5, warmup_fraction=0.2)
    total, f, h = 20, _loss(1), _loss(2)
    p0 = _params()
    # Anchors: after steps 0-2 (alignment) the alignment anchor is the weights entering step 3.
    p3, s3 = _run(cfg, total, p0, init_state(p0), 0, 3, f, h)
    s3_switched = record_switch(s3, p3, 3, cfg)
    chex.assert_trees_all_close(s3_switched.alignment_anchor, p3)
    chex.assert_trees_all_close(s3_switched.finetune_anchor, p0)
    # A run stopped at step 11 and resumed from (params, state) ends where the uninterrupted run ends.
    whole = _run(cfg, total, p0, init_state(p0), 0, total, f, h)
    half = _run(cfg, total, p0, init_state(p0), 0, 11, f, h)
    resumed = _run(cfg, total, *half, 11, total, f, h)
    chex.assert_trees_all_equal(resumed, whole)


def test_lisa_objective_is_the_phase_loss_plus_the_proximal_term():
    cfg = LisaConfig(alignment_steps=2, finetune_steps=3, rho=2.0, warmup_fraction=0.5)
    f, h, p = _loss(1), _loss(2), _params()
    anchor_a = jax.tree.map(lambda x: x + 0.1, p)
    anchor_f = jax.tree.map(lambda x: x - 0.3, p)
    state = LisaState(alignment_anchor=anchor_a, finetune_anchor=anchor_f)

    def sq(a):
        return sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(a)))

    # total 10: the term is on for step > 5. Step 1 alignment (off); step 7 finetune (on, towards the alignment anchor).
    assert float(lisa_objective(f, h, p, state, 1, cfg, 10)) == pytest.approx(float(f(p)), rel=1e-6)
    assert float(lisa_objective(f, h, p, state, 7, cfg, 10)) == pytest.approx(float(h(p)) + sq(anchor_a), rel=1e-5)
    # Step 5 + 5 = 10 is alignment again (cycle 5), on, towards the finetune anchor.
    assert float(lisa_objective(f, h, p, state, 10, cfg, 10)) == pytest.approx(float(f(p)) + sq(anchor_f), rel=1e-5)
    assert float(proximal_term(p, anchor_f, 2.0)) == pytest.approx(sq(anchor_f), rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"lam": -1.0}, {"alpha": 0.0}])
def test_booster_config_refuses_bad_values(kwargs):
    with pytest.raises(BFPOError, match="BoosterConfig"):
        BoosterConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"alignment_steps": -1}, {"alignment_steps": 0, "finetune_steps": 0},
                                    {"rho": -0.5}, {"warmup_fraction": 1.5}, {"finetune_steps": 2.5}])
def test_lisa_config_refuses_bad_values(kwargs):
    with pytest.raises(BFPOError, match="LisaConfig"):
        LisaConfig(**kwargs)


def _numpy_mmd(x, y, mul=2.0, num=5):
    """The kernel sum over explicit pairwise distances, in float64."""
    z = np.concatenate([x.reshape(len(x), -1), y.reshape(len(y), -1)]).astype(np.float64)
    d = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    n = len(z)
    bw = d.sum() / (n * n - n) / mul ** (num // 2)
    k = sum(np.exp(-d / (bw * mul ** i)) for i in range(num))
    b = len(x)
    return float(np.mean(k[:b, :b] + k[b:, b:] - k[:b, b:] - k[b:, :b]))


def test_mmd_equals_a_numpy_kernel_sum():
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, (6, 3, 4)).astype(np.float32)
    y = rng.normal(size=(6, 3, 4)).astype(np.float32)
    assert float(gaussian_mmd(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(_numpy_mmd(x, y), rel=1e-4, abs=1e-6)
    assert float(gaussian_mmd(jnp.asarray(y), jnp.asarray(y))) == pytest.approx(0.0, abs=1e-6)


def test_mmd_gradient_treats_the_bandwidth_as_a_constant():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    d = ((jnp.concatenate([x, y])[:, None] - jnp.concatenate([x, y])[None]) ** 2).sum(-1)
    bw = float(jnp.sum(d) / 56) / 4.0

    def fixed(x):
        z = jnp.concatenate([x, y])
        dd = ((z[:, None] - z[None]) ** 2).sum(-1)
        k = sum(jnp.exp(-dd / (bw * 2.0 ** i)) for i in range(5))
        return jnp.mean(k[:4, :4] + k[4:, 4:] - k[:4, 4:] - k[4:, :4])

    chex.assert_trees_all_close(jax.grad(gaussian_mmd)(x, y), jax.grad(fixed)(x), rtol=1e-4, atol=1e-6)


def test_repnoise_loss_combines_its_terms():
    key = jax.random.PRNGKey(3)
    hidden = [jax.random.normal(jax.random.PRNGKey(i), (2, 5, 4)) for i in range(3)]
    mask = jnp.asarray([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]], bool)
    cfg = RepNoiseConfig(beta=0.5, alpha=2.0)
    loss, parts = repnoise_loss(jnp.asarray(1.5), hidden, mask, [jnp.asarray(2.0), jnp.asarray(4.0)], key, cfg)
    expected_noise = np.mean([float(gaussian_mmd(
        h * mask[:, :, None], jax.random.normal(jax.random.fold_in(key, i), h.shape) * mask[:, :, None]))
        for i, h in enumerate(hidden)])
    assert float(parts["noise_mmd"]) == pytest.approx(expected_noise, rel=1e-5)
    assert float(loss) == pytest.approx(1.5 + 0.5 * expected_noise - 2.0 * np.log(1.0 + 3.0), rel=1e-5)
