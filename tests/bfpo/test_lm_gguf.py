"""GGUF: our dequantisers equal the gguf package's; a llama.cpp-style file (permuted Q/K, Q8_0/Q4_0/Q4_1/F16
tensors) gives the same logits as transformers' own GGUF loading; tokenizer and chat template come from the
file; errors name the tensor and the file."""

import sys
from pathlib import Path

import chex
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from gguf import quants  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from lm_reference import (  # noqa: E402
    CHAT_TEMPLATE,
    hf_logits,
    llama_cpp_permute,
    random_hf_model,
    transformers_from_gguf,
    write_tiny_gguf,
)

from bfpo import ModelError  # noqa: E402
from bfpo.model import gguf_quants  # noqa: E402
from bfpo.model.load_gguf import load_gguf, tokenizer_from_gguf, unpermute_rotary_rows  # noqa: E402

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

QTYPES = {"token_embd": "Q8_0", "attn_q": "Q4_0", "attn_k": "Q4_1", "ffn": "Q8_0", "output.weight": "F16",
          "attn_v": "Q4_1"}


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "F16", "BF16"])
def test_dequantisers_equal_the_gguf_package(name):
    qtype = getattr(gguf.GGMLQuantizationType, name)
    size, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (3, 4 * nbytes), dtype=np.uint8)
    blocks = raw.reshape(-1, nbytes)
    # Random bytes are valid blocks except where a float16 scale lands on inf/NaN: write finite scales there.
    for offset in {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q4_K": [0, 2], "Q6_K": [208]}.get(name, []):
        blocks[:, offset:offset + 2] = rng.uniform(-2, 2, (len(blocks), 1)).astype(np.float16).view(np.uint8)
    if name in ("F16", "BF16"):
        raw = raw.view(np.uint16) & np.uint16(0x3FFF)  # finite values
        raw = raw.view(np.uint8)
    expected = quants.dequantize(raw.view(np.float16) if name == "F16" else raw, qtype)
    got = gguf_quants.dequantize(raw, name, expected.shape)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_unpermute_inverts_the_llama_cpp_permutation():
    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(6 * 8, 5)
    np.testing.assert_array_equal(unpermute_rotary_rows(llama_cpp_permute(w, 6), 6), w)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    ref = random_hf_model("llama", seed=5)
    ref.config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(ref, path, QTYPES)
    return path


@pytest.fixture(scope="module")
def tiny_qwen2_gguf(tmp_path_factory):
    ref = random_hf_model("qwen2", seed=7)
    ref.config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    path = tmp_path_factory.mktemp("gguf") / "qwen2.gguf"
    write_tiny_gguf(ref, path, QTYPES)
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_logits_equal_transformers_gguf_loading(arch, request):
    path = request.getfixturevalue("tiny_gguf" if arch == "llama" else "tiny_qwen2_gguf")
    ref = transformers_from_gguf(path)
    ours = load_gguf(path)
    # llama: untied head and permuted Q/K; qwen2: tied head, q/k/v biases, no permutation.
    assert ours.config.tie_word_embeddings == ours.config.attention_bias == (arch == "qwen2")
    tokens = np.random.default_rng(1).integers(0, 264, (2, 12))
    expected = hf_logits(ref, tokens)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(tokens))), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_tokenizer_and_chat_template_from_the_file(tiny_gguf):
    import transformers

    tok = tokenizer_from_gguf(tiny_gguf)
    ref = transformers.AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    for text in ["hello there", "the hell of it", "Ünïcode ok"]:
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False)
        assert tok.decode(tok.encode(text)) == text
    assert tok.hf.chat_template == CHAT_TEMPLATE
    ids = tok.encode_chat([{"role": "user", "content": "hello"}])
    assert ids[0] == 1 and 2 in ids and tok.stop_ids == (0, 2)


def test_unsupported_type_and_missing_tensor_name_tensor_and_file(tmp_path):
    ref = random_hf_model("llama", seed=6)
    bad = tmp_path / "q5.gguf"
    write_tiny_gguf(ref, bad, {"blk.1.ffn_up": "Q5_0"})
    with pytest.raises(ModelError, match=r"q5.gguf: tensor 'blk.1.ffn_up.weight' has quantisation type Q5_0"):
        load_gguf(bad)
    missing = tmp_path / "missing.gguf"
    write_tiny_gguf(ref, missing, {}, skip=("blk.0.attn_v.weight",))
    with pytest.raises(ModelError, match=r"missing.gguf: tensor for 'model.layers.0.self_attn.v_proj.weight'"):
        load_gguf(missing)


@pytest.fixture(scope="module")
def deep_gguf(tmp_path_factory):
    """Eight layers: more than any small cache of recent tensors holds."""
    ref = random_hf_model("llama", seed=8, num_layers=8)
    ref.config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    path = tmp_path_factory.mktemp("gguf") / "deep.gguf"
    write_tiny_gguf(ref, path, QTYPES)
    return path


@pytest.mark.parametrize("axes", [{"fsdp": 4, "tensor": 2}, {"data": 8}, {"data": 2, "tensor": 4}])
def test_a_mesh_load_dequantises_each_tensor_once(deep_gguf, axes, monkeypatch):
    import jax
    from collections import Counter

    from bfpo.model.gguf_file import GGUFFile
    from runtime import make_mesh

    one_device = jax.device_get(nnx_params(load_gguf(deep_gguf)))
    calls = Counter()
    real = GGUFFile.dequantized

    def counted(self, name):
        calls[name] += 1
        return real(self, name)

    monkeypatch.setattr(GGUFFile, "dequantized", counted)
    mesh = make_mesh(axes)
    params = nnx_params(load_gguf(deep_gguf, mesh))
    assert calls and set(calls.values()) == {1}, calls
    assert len(calls) == len(GGUFFile(deep_gguf).tensors)
    assert all(leaf.sharding.mesh.shape == mesh.shape for leaf in jax.tree.leaves(params))
    chex.assert_trees_all_equal(jax.device_get(params), one_device)


def nnx_params(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


def test_the_exported_directory_keeps_every_stop_token(tiny_gguf, tmp_path):
    from bfpo.model.load_hf import save_hf
    from bfpo.tokenize import Tokenizer

    tok = tokenizer_from_gguf(tiny_gguf)
    assert len(tok.stop_ids) == 2  # the GGUF's eos and its second stop token
    out = save_hf(load_gguf(tiny_gguf), tmp_path / "hf", tokenizer=tok)
    assert Tokenizer.from_directory(out).stop_ids == tok.stop_ids
