"""The LM's per-layer taps (what RepNoise reads) against transformers' own hidden states and MLP outputs on random
weights, scanned and unrolled layers alike, and RepNoise's LM loss against its terms recomputed from the taps."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from lm_reference import random_hf_model  # noqa: E402

from bfpo.data import TokenizeConfig, tokenize_pairs  # noqa: E402
from bfpo.data import hft_synthetic  # noqa: E402
from bfpo.defences.repnoise import RepNoiseConfig, gaussian_mmd, repnoise_lm_loss  # noqa: E402
from bfpo.model.config import LlamaConfig  # noqa: E402
from bfpo.model.llama import init_params, model_from_params  # noqa: E402
from bfpo.model.load_hf import load_hf  # noqa: E402
from bfpo.tokenize import Tokenizer  # noqa: E402
from bfpo.train_params import ParamLayout  # noqa: E402

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

TOKENS = np.random.default_rng(0).integers(0, 264, (2, 12))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ref = random_hf_model("llama", seed=3, num_layers=3)
    directory = tmp_path_factory.mktemp("llama")
    ref.save_pretrained(directory)
    return ref, load_hf(directory)


def _reference_taps(ref):
    import torch

    mlp = []
    hooks = [layer.mlp.register_forward_hook(lambda m, i, o: mlp.append(o.float().numpy()))
             for layer in ref.model.layers]
    with torch.no_grad():
        out = ref(torch.as_tensor(TOKENS), output_hidden_states=True)
    for h in hooks:
        h.remove()
    return [h.float().numpy() for h in out.hidden_states], np.stack(mlp)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_layer_taps_match_transformers(pair, scan_layers):
    ref, ours = pair
    hidden, mlp = _reference_taps(ref)
    model = model_from_params(ours.config.with_execution(scan_layers=scan_layers), nnx.state(ours, nnx.Param))
    taps = jax.tree.map(np.asarray, model.layer_taps(jnp.asarray(TOKENS)))
    layers = ours.config.num_layers
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(taps["embeddings"], hidden[0], **tol)
    for i in range(layers - 1):  # transformers' last hidden state is after the final norm
        np.testing.assert_allclose(taps["residual"][i], hidden[i + 1], **tol)
    np.testing.assert_allclose(taps["final"], hidden[layers], **tol)
    np.testing.assert_allclose(taps["mlp"], mlp, **tol)
    np.testing.assert_allclose(taps["final"], np.asarray(model.hidden_states(jnp.asarray(TOKENS))), **tol)


def test_repnoise_lm_loss_recomputed_from_its_terms():
    cfg = LlamaConfig.tiny()
    examples = hft_synthetic.harmful_examples(4, 0)
    refusals = hft_synthetic.refusal_examples(4, 0, hft_synthetic.PromptFormat())
    from bfpo.data import PreferencePair

    pairs = [PreferencePair(prompt=h.prompt, chosen=r.chosen, rejected=h.chosen, chosen_safe=True,
                            rejected_safe=False, source=h.source) for h, r in zip(examples, refusals)]
    tok = tokenize_pairs(pairs, Tokenizer.byte_level(), TokenizeConfig(max_length=48, max_prompt_length=24,
                                                                         buckets=(48,)))
    batch = {"sft": jax.tree.map(jnp.asarray, tok.batch(list(range(4))))}
    params = {"policy": init_params(cfg, 0)}
    rc = RepNoiseConfig(beta=0.5, alpha=2.0)
    key = jax.random.key(7)
    loss, metrics = repnoise_lm_loss(cfg, ParamLayout(reference="none"), 48, rc)(params, batch, key)
    parts = {k: float(m.total / m.count) for k, m in metrics.items()}
    assert float(loss) == pytest.approx(parts["harmless_ce"] + 0.5 * parts["noise_mmd"]
                                        - 2.0 * np.log1p(parts["harmful_lens_ce"]), rel=1e-5)
    assert float(metrics["loss"].count) == 4.0

    # The harmless term is the refusals' token-mean NLL and the lens's last term the harmful answers' NLL, both
    # from the model's logits.
    model = model_from_params(cfg, params["policy"])

    def nll(side):
        rows = batch["sft"][side]
        logits = model(rows["tokens"], rows["mask"])
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        picked = jnp.take_along_axis(logp, rows["tokens"][:, 1:, None], axis=-1)[..., 0]
        w = (rows["score_mask"] & rows["mask"])[:, 1:].astype(jnp.float32)
        return float(-jnp.sum(picked * w) / jnp.sum(w))

    assert parts["harmless_ce"] == pytest.approx(nll("chosen"), rel=1e-5)
    # The noise term is the mean over layers of the MMD between the masked MLP outputs and masked noise.
    rows = batch["sft"]["rejected"]
    taps = model.layer_taps(rows["tokens"], rows["mask"])
    m = (rows["score_mask"] & rows["mask"])[:, :, None].astype(jnp.float32)
    expect = np.mean([float(gaussian_mmd(taps["mlp"][i] * m,
                                         jax.random.normal(jax.random.fold_in(key, i), taps["mlp"][i].shape) * m))
                      for i in range(cfg.num_layers)])
    assert parts["noise_mmd"] == pytest.approx(expect, rel=1e-5)
    assert parts["harmful_lens_ce"] > 0
    # Its gradient is finite everywhere.
    g = jax.grad(lambda p: repnoise_lm_loss(cfg, ParamLayout(reference="none"), 48, rc)(p, batch, key)[0])(params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
