"""The safetensors loader: dtype conversion, sharded placement, and errors that name the tensor and the file."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from bfpo import ModelError
from bfpo.model import safetensors_io
from bfpo.model.config import LlamaConfig
from bfpo.model.execution import ExecutionConfig
from bfpo.model.llama import LlamaForCausalLM
from bfpo.model.load_hf import load_hf, save_hf
from runtime import make_mesh

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

CFG = LlamaConfig.tiny(tie_word_embeddings=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = LlamaForCausalLM(CFG, rngs=nnx.Rngs(3))
    directory = save_hf(model, tmp_path_factory.mktemp("tiny"))
    return model, directory


def params_of(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def rewrite(directory, edit):
    """Rewrites model.safetensors with ``edit(dict name -> array)`` applied."""
    f = safetensors_io.SafetensorsFile(directory / "model.safetensors")
    tensors = edit({name: np.array(f.get(name)) for name in f.keys()})
    safetensors_io.write(directory / "model.safetensors",
                         [(n, a.shape, a.dtype) for n, a in tensors.items()], tensors.__getitem__)


@pytest.fixture
def copy(saved, tmp_path):
    for p in saved[1].iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    return tmp_path


def test_loads_onto_a_mesh_with_target_shardings_and_dtype(saved):
    model, directory = saved
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    loaded = load_hf(directory, mesh, execution=ExecutionConfig(param_dtype="bfloat16"))
    assert loaded.config == CFG.with_execution(param_dtype="bfloat16")
    q = loaded.layers.self_attn.q_proj.kernel[...]
    assert q.dtype == jax.numpy.bfloat16
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (2, 32, 2, 8)
    for got, want in zip(params_of(loaded), params_of(model)):
        np.testing.assert_array_equal(got, want.astype(ml_dtypes.bfloat16))


def test_saves_bfloat16_files(saved, tmp_path):
    model, _ = saved
    save_hf(model, tmp_path, dtype="bfloat16")
    f = safetensors_io.SafetensorsFile(tmp_path / "model.safetensors")
    assert f.header["model.layers.1.mlp.down_proj.weight"]["dtype"] == "BF16"
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    np.testing.assert_array_equal(
        f.get("model.layers.1.mlp.down_proj.weight"),
        np.asarray(model.layers.mlp.down_proj.kernel[...][1]).T.astype(ml_dtypes.bfloat16))
    loaded = load_hf(tmp_path)  # a bfloat16 checkpoint computes in bfloat16 unless told otherwise
    assert (loaded.config.execution.dtype, loaded.config.execution.param_dtype) == ("bfloat16", "bfloat16")
    for got, want in zip(params_of(loaded), params_of(model)):
        np.testing.assert_array_equal(got, want.astype(ml_dtypes.bfloat16))


def test_missing_tensor_names_tensor_and_file(copy):
    rewrite(copy, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.self_attn.k_proj.weight"})
    with pytest.raises(ModelError, match=r"'model.layers.1.self_attn.k_proj.weight' .* missing from .*model.safetensors"):
        load_hf(copy)


def test_unexpected_tensor_names_tensor_and_file(copy):
    rewrite(copy, lambda t: {**t, "model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)})
    with pytest.raises(ModelError, match=r"model.safetensors: unexpected tensor 'model.layers.0.self_attn.o_proj.bias'"):
        load_hf(copy)


def test_shape_mismatch_names_tensor_and_file(copy):
    rewrite(copy, lambda t: {**t, "model.norm.weight": np.ones(63, np.float32)})
    with pytest.raises(ModelError, match=r"model.safetensors: tensor 'model.norm.weight' has shape \(63,\), "
                                         r"the config expects \(64,\)"):
        load_hf(copy)


def test_bad_config_names_file_and_field(copy):
    raw = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**raw, "num_key_value_heads": 3}))
    with pytest.raises(ModelError, match=r"config.json: LlamaConfig.num_heads=8 is not a multiple of num_kv_heads=3"):
        load_hf(copy)


@pytest.mark.parametrize("config,match", [
    ([1, 2], "expected a JSON object, got a list"),
    ("drop hidden_size", "hidden_size is missing"),
    ({"num_hidden_layers": "2"}, "num_hidden_layers='2' must be a positive integer"),
    ({"head_dim": 2.0}, "head_dim=2.0 must be a positive integer"),
])
def test_malformed_config_is_a_model_error_naming_the_field(copy, config, match):
    raw = json.loads((copy / "config.json").read_text())
    if config == "drop hidden_size":
        config = {k: v for k, v in raw.items() if k != "hidden_size"}
    elif isinstance(config, dict):
        config = {**raw, **config}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=rf"config.json: {match}"):
        load_hf(copy)


@pytest.mark.parametrize("index,match", [("{not json", "not valid JSON"), ("[]", "expected a 'weight_map' object"),
                                         ('{"weight_map": {"x": 3}}', "expected a 'weight_map' object")])
def test_malformed_index_is_a_model_error(copy, index, match):
    (copy / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ModelError, match=rf"model.safetensors.index.json: {match}"):
        load_hf(copy)


def test_hub_id_offline_asks_for_a_local_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="not a local directory .* pass that directory"):
        load_hf("no-such-org/no-such-model-3f9c")


def test_bfloat16_model_tracks_float32(saved):
    model, directory = saved
    low = load_hf(directory, execution=ExecutionConfig(dtype="bfloat16", param_dtype="bfloat16"))
    tokens = jax.numpy.asarray(np.random.default_rng(0).integers(0, 264, (2, 10)))
    forward = jax.jit(lambda m, t: m(t))
    full, half = np.asarray(forward(model, tokens)), np.asarray(forward(low, tokens))
    assert half.dtype == np.float32  # logits are always float32
    assert np.abs(half - full).max() < 0.02 * np.abs(full).max()
    assert np.abs(half - full).max() > 0  # it really ran in bfloat16


def test_a_layer_count_beyond_the_files_is_refused_before_naming_every_layer(copy):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**12}))
    with pytest.raises(ModelError, match=r"config.json: num_hidden_layers=1000000000000, but .* hold only \d+ tensors"):
        load_hf(copy)
