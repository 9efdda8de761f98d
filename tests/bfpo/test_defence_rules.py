"""The defences as parts of the train step: Booster's and Vaccine's gradient rules against their pure directions
(count-weighted, frozen leaves left out), Lisa's proximal gradient in the optimizer chain against the proximal
objective's own gradient replayed step by step (and across a resume), and the SFT loss's attention offsets."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from bfpo.defences.booster import BoosterConfig, booster_gradient, booster_rule
from bfpo.defences.lisa import LisaConfig, init_state, lisa_objective, phase_name, proximal_gradient, record_switch
from bfpo.defences.vaccine import VaccineConfig, vaccine_gradient, vaccine_rule
from bfpo.errors import BFPOError
from runtime.metrics import Metric
from runtime.train_state import merge_by_mask


def _params():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    return {"w": jax.random.normal(k1, (4, 3)), "b": jax.random.normal(k2, (3,)), "frozen": jax.random.normal(k3, (3,))}


def _batch(seed, rows=8):
    return {"x": jax.random.normal(jax.random.PRNGKey(seed), (rows, 4)),
            "y": jax.random.normal(jax.random.PRNGKey(seed + 100), (rows, 3))}


def _mean_loss(p, b, offsets=None):
    z = b["x"] @ p["w"] + p["b"][None, :] + p["frozen"][None, :]
    if offsets is not None:
        z = z + offsets
    return jnp.mean(jnp.square(jnp.tanh(z) - b["y"]))


def _loss_fn(stream):
    """A train-step loss over ``batch[stream]`` with count = rows (and optional offsets on the pre-activation)."""

    def loss_fn(params, batch, rng, offsets=None):
        del rng
        b = batch[stream]
        value = _mean_loss(params, b, offsets)
        count = jnp.asarray(b["x"].shape[0], jnp.float32)
        return value, {"loss": Metric(total=value * count, count=count)}

    return loss_fn


def _weighted(loss_fn):
    def weighted(train, frozen, batch, rng):
        value, metrics = loss_fn(merge_by_mask(train, frozen), batch, rng)
        return value * metrics["loss"].count, metrics

    return weighted


def _split(params):
    return ({"w": params["w"], "b": params["b"], "frozen": None},
            {"w": None, "b": None, "frozen": params["frozen"]})


def test_booster_rule_is_the_count_weighted_booster_direction():
    params = _params()
    train, frozen = _split(params)
    batch = {"sft": _batch(1, rows=6), "harmful": _batch(2)}
    cfg = BoosterConfig(lam=3.0, alpha=0.2)
    grads, metrics = booster_rule(_loss_fn("harmful"), cfg)(_weighted(_loss_fn("sft")))(
        train, frozen, batch, jax.random.key(0))
    trainable = {"w": params["w"], "b": params["b"]}
    with_frozen = lambda t: {**t, "frozen": params["frozen"]}  # noqa: E731
    _, expected, _ = booster_gradient(lambda t: _mean_loss(with_frozen(t), batch["sft"]),
                                      lambda t: _mean_loss(with_frozen(t), batch["harmful"]), trainable, cfg)
    assert grads["frozen"] is None
    chex.assert_trees_all_close({"w": grads["w"], "b": grads["b"]}, jax.tree.map(lambda g: 6.0 * g, expected),
                                rtol=1e-5, atol=1e-6)
    assert float(metrics["harmful_loss"].total) == pytest.approx(float(_mean_loss(params, batch["harmful"])), rel=1e-6)
    assert float(metrics["loss"].count) == 6.0


def test_vaccine_rule_is_the_count_weighted_vaccine_direction():
    params = _params()
    train, frozen = _split(params)
    batch = {"sft": _batch(3, rows=5)}
    cfg = VaccineConfig(rho=0.7)
    rule = vaccine_rule(_loss_fn("sft"), lambda b: b["sft"]["y"].shape, cfg)
    grads, metrics = rule(None)(train, frozen, batch, jax.random.key(0))
    trainable = {"w": params["w"], "b": params["b"]}
    with_frozen = lambda t: {**t, "frozen": params["frozen"]}  # noqa: E731
    value, expected, ref = vaccine_gradient(lambda t, o: _mean_loss(with_frozen(t), batch["sft"], o), trainable,
                                            (5, 3), cfg)
    assert grads["frozen"] is None
    chex.assert_trees_all_close({"w": grads["w"], "b": grads["b"]}, jax.tree.map(lambda g: 5.0 * g, expected),
                                rtol=1e-5, atol=1e-6)
    assert float(metrics["perturbed_loss"].total) == pytest.approx(float(value), rel=1e-6)
    assert float(metrics["representation_grad_norm"].total) == pytest.approx(
        float(ref["representation_grad_norm"].total), rel=1e-6)
    # The perturbation raises the loss (a first-order ascent step of norm rho).
    assert float(metrics["perturbed_loss"].total) > float(metrics["clean_loss"].total)


def _lisa_reference(cfg, total, params, state, start, stop, f, h, lr):
    """Plain gradient descent on the proximal objective (``lisa_objective``), the anchors by ``record_switch``."""
    for t in range(start, stop):
        state = record_switch(state, params, t, cfg)
        g = jax.grad(lambda p: lisa_objective(f, h, p, state, t, cfg, total))(params)
        params = jax.tree.map(lambda p, d: p - lr * d, params, g)
    return params


def _lisa_in_the_chain(cfg, total, params, opt_state, start, stop, f, h, tx):
    """The trainer's form: the phase's data by the host schedule, the proximal term from the optimizer chain."""
    for t in range(start, stop):
        loss = f if phase_name(t, cfg) == "alignment" else h
        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, opt_state


def test_lisa_proximal_gradient_in_the_optimizer_chain_equals_the_proximal_objective():
    cfg = LisaConfig(alignment_steps=3, finetune_steps=4, rho=0.5, warmup_fraction=0.2)
    total, lr = 20, 0.1
    p0 = {"w": _params()["w"], "b": _params()["b"]}
    f = lambda p: _mean_loss({**p, "frozen": jnp.zeros(3)}, _batch(1))  # noqa: E731
    h = lambda p: _mean_loss({**p, "frozen": jnp.zeros(3)}, _batch(2))  # noqa: E731
    tx = optax.chain(proximal_gradient(cfg, total), optax.sgd(lr))
    whole, _ = _lisa_in_the_chain(cfg, total, p0, tx.init(p0), 0, total, f, h, tx)
    chex.assert_trees_all_close(whole, _lisa_reference(cfg, total, p0, init_state(p0), 0, total, f, h, lr),
                                rtol=1e-5, atol=1e-6)
    # Stopped at step 9 and resumed from (params, optimizer state): the uninterrupted run's weights, bit for bit.
    half = _lisa_in_the_chain(cfg, total, p0, tx.init(p0), 0, 9, f, h, tx)
    resumed, _ = _lisa_in_the_chain(cfg, total, *half, 9, total, f, h, tx)
    chex.assert_trees_all_equal(resumed, whole)


def test_lisa_proximal_gradient_needs_the_parameters():
    tx = proximal_gradient(LisaConfig(), 10)
    p = {"w": jnp.ones(2)}
    with pytest.raises(Exception, match="needs the parameters"):
        tx.update(p, tx.init(p))


@pytest.mark.unsharded
def test_sft_loss_with_zero_offsets_is_the_sft_loss():
    from bfpo.data import TokenizeConfig, tokenize_pairs
    from bfpo.model.config import LlamaConfig
    from bfpo.model.llama import init_params
    from bfpo.sft import SFTConfig, sft_examples, sft_loss, sft_offsets_shape
    from bfpo.tokenize import Tokenizer
    from bfpo.train_params import ParamLayout

    cfg = LlamaConfig.tiny()
    pairs = tokenize_pairs(sft_examples(4, 0, SFTConfig()), Tokenizer.byte_level(),
                           TokenizeConfig(max_length=48, max_prompt_length=24, buckets=(48,)))
    batch = {"sft": jax.tree.map(jnp.asarray, pairs.batch(list(range(4))))}
    params = {"policy": init_params(cfg, 0)}
    loss = sft_loss(cfg, ParamLayout(reference="none"), 48)
    shape = sft_offsets_shape(cfg)(batch)
    assert shape == (cfg.num_layers, 4, 48, cfg.hidden_size)
    plain, _ = loss(params, batch, None)
    zero, _ = loss(params, batch, None, jnp.zeros(shape))
    moved, _ = loss(params, batch, None, 0.5 * jnp.ones(shape))
    assert float(zero) == pytest.approx(float(plain), rel=1e-6)
    assert abs(float(moved) - float(plain)) > 1e-3


def test_the_registry_names_every_defence_by_stage_and_the_pipeline_offers_exactly_those():
    from bfpo.defences import registry
    from experiments.configs.hft import ALIGNMENTS, FINETUNE_DEFENCES, parse_method

    assert registry.defences_of("alignment") == ("booster", "vaccine", "repnoise")
    assert registry.defences_of("fine-tuning") == ("lisa", "format_matched")
    assert ALIGNMENTS == ("sft", "bfpo", *registry.defences_of("alignment"))
    assert FINETUNE_DEFENCES == registry.defences_of("fine-tuning")
    assert registry.get_defence("booster").step_form is booster_rule
    assert registry.get_defence("lisa").step_form is proximal_gradient
    for name, d in registry.DEFENCES.items():
        assert d.stage in registry.STAGES and d.source
        method = name if d.stage == "alignment" else f"sft+{name}"
        assert parse_method(method) == ((name, None) if d.stage == "alignment" else ("sft", name))
    with pytest.raises(BFPOError, match="defence='tar'"):
        registry.get_defence("tar")
    with pytest.raises(BFPOError, match="stage='pretraining'"):
        registry.defences_of("pretraining")
