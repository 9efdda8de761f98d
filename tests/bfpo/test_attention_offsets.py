"""The LM's per-layer attention-output offsets (the hook Vaccine trains against): zero offsets change nothing,
scanned and unrolled layers agree, the offsets' gradient is the loss's derivative along them (central differences),
and misuse is refused with a ModelError. Vaccine's direction against its definition."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bfpo.defences.vaccine import NORM_EPS, VaccineConfig, vaccine_gradient
from bfpo.errors import ModelError
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import KVCache, LlamaForCausalLM

pytestmark = pytest.mark.unsharded  # one device: the model's own forward, no mesh

B, T = 2, 6


def _model(scan_layers=True):
    cfg = LlamaConfig.tiny().with_execution(scan_layers=scan_layers)
    return LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))


def _tokens():
    return jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, 264)


def _offsets(cfg, seed=2, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), (cfg.num_layers, B, T, cfg.hidden_size))


def _loss(model, tokens, offsets):
    logits = model(tokens, attention_offsets_LxBxTxD=offsets)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def test_zero_offsets_change_nothing_and_both_layer_loops_agree():
    tokens = _tokens()
    scanned, unrolled = _model(True), _model(False)
    zeros = jnp.zeros((scanned.config.num_layers, B, T, scanned.config.hidden_size))
    chex.assert_trees_all_equal(scanned(tokens, attention_offsets_LxBxTxD=zeros), scanned(tokens))
    offsets = _offsets(scanned.config, scale=0.5)
    a = scanned(tokens, attention_offsets_LxBxTxD=offsets)
    chex.assert_trees_all_close(a, unrolled(tokens, attention_offsets_LxBxTxD=offsets), rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(a - scanned(tokens)))) > 1e-2  # the offsets do act


def test_offset_gradient_is_the_directional_derivative():
    model, tokens = _model(), _tokens()
    zeros = jnp.zeros((model.config.num_layers, B, T, model.config.hidden_size))
    g = jax.grad(lambda o: _loss(model, tokens, o))(zeros)
    direction = _offsets(model.config, seed=5)
    # The freshly initialised model's activations are small next to the offsets (the norms make the loss curve
    # quickly), so the central difference is extrapolated (Richardson): error O(h^4) instead of O(h^2).
    def central(h):
        return (_loss(model, tokens, h * direction) - _loss(model, tokens, -h * direction)) / (2 * h)

    h = 3e-3
    numeric = (4 * central(h / 2) - central(h)) / 3
    assert float(jnp.sum(g * direction)) == pytest.approx(float(numeric), rel=2e-3)


def test_vaccine_direction_equals_its_definition():
    model, tokens = _model(), _tokens()
    graphdef, params = nnx.split(model)
    shape = (model.config.num_layers, B, T, model.config.hidden_size)

    def loss_fn(p, offsets):
        return _loss(nnx.merge(graphdef, p), tokens, offsets)

    cfg = VaccineConfig(rho=2.0)
    value, grads, metrics = vaccine_gradient(loss_fn, params, shape, cfg)
    g = jax.grad(loss_fn, argnums=1)(params, jnp.zeros(shape))
    eps = 2.0 * g / (np.sqrt(float(jnp.sum(g * g))) + NORM_EPS)
    assert float(jnp.sqrt(jnp.sum(eps * eps))) == pytest.approx(2.0, rel=1e-5)
    chex.assert_trees_all_close(grads, jax.grad(loss_fn)(params, eps), rtol=1e-5, atol=1e-7)
    assert float(value) == pytest.approx(float(loss_fn(params, eps)), rel=1e-6)
    assert float(metrics["perturbed_loss"].total) > float(metrics["clean_loss"].total)  # eps ascends the loss


def test_misuse_is_refused():
    model, tokens = _model(), _tokens()
    with pytest.raises(ModelError, match="expected \\(layers, batch, tokens, hidden\\)"):
        model(tokens, attention_offsets_LxBxTxD=jnp.zeros((1, B, T, model.config.hidden_size)))
    cache = KVCache.empty(model.config, B, 8)
    offsets = jnp.zeros((model.config.num_layers, B, T, model.config.hidden_size))
    with pytest.raises(ModelError, match="full-sequence passes only"):
        model.backbone(tokens, jnp.zeros((B, T), jnp.int32), None, cache, attention_offsets_LxBxTxD=offsets)
    with pytest.raises(Exception, match="VaccineConfig.rho"):
        VaccineConfig(rho=0.0)
