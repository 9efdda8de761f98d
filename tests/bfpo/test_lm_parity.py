"""Our Llama/Qwen2/Mistral logits equal transformers' PyTorch logits on the same weights (saved with
save_pretrained, read by our safetensors loader), with every kernel family that runs here (the TPU kernels in
the Pallas interpreter); saving back gives files transformers reads identically."""

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from lm_reference import ARCHS, hf_logits, random_hf_model  # noqa: E402

from bfpo.model import hf_layout  # noqa: E402
from bfpo.model.kernels import tpu  # noqa: E402
from bfpo.model.llama import model_from_params  # noqa: E402
from bfpo.model.load_hf import load_hf, save_hf  # noqa: E402
from bfpo.tokenize import Tokenizer  # noqa: E402

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

TOKENS = np.random.default_rng(0).integers(0, 264, (2, 16))


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, tmp_path_factory):
    ref = random_hf_model(request.param, seed=ARCHS.index(request.param))
    directory = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(directory)
    return request.param, ref, directory, load_hf(directory)


@pytest.mark.parametrize("kernels", ["auto", "reference", "tpu"])
def test_logits_match_reference(pair, kernels):
    arch, ref, _, ours = pair
    expected = hf_logits(ref, TOKENS)
    model = model_from_params(ours.config.with_execution(kernels=kernels), nnx.state(ours, nnx.Param))
    with tpu.interpreted() if kernels == "tpu" else contextlib.nullcontext():
        got = np.asarray(model(jnp.asarray(TOKENS)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    cfg = ours.config
    assert cfg.attention_bias == (arch == "qwen2")
    assert cfg.tie_word_embeddings == (arch == "qwen2")
    assert cfg.sliding_window == (4 if arch == "mistral" else None)
    assert cfg.rope_scaling.kind == {"llama": "llama3", "qwen2": "yarn", "mistral": "linear"}[arch]


def test_saved_checkpoint_reads_back_in_transformers(pair, tmp_path):
    import transformers

    arch, ref, _, ours = pair
    tok = Tokenizer.byte_level()
    save_hf(ours, tmp_path, max_shard_bytes=60_000, tokenizer=tok)  # forces several shards and an index
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == arch
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    np.testing.assert_allclose(hf_logits(back, TOKENS), hf_logits(ref, TOKENS), rtol=1e-6, atol=1e-6)
    chat = [{"role": "user", "content": "Hi"}]
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == tok.chat_text(chat)
    # ...and our sharded-file loader reads the same parameters back.
    again = load_hf(tmp_path)
    a, b = nnx.state(again, nnx.Param), nnx.state(ours, nnx.Param)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_config_round_trips_through_config_json(pair):
    _, _, directory, ours = pair
    raw = hf_layout.config_to_hf(ours.config)
    assert hf_layout.config_from_hf(json.loads(json.dumps(raw))) == ours.config
