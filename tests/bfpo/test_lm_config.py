"""Presets have the published parameter counts, build abstractly and shard on the test meshes; invalid configs
name the field at fault."""

import dataclasses

import jax
import pytest
from flax import nnx

from bfpo import ModelError
from bfpo.model.config import LlamaConfig, RopeScaling
from bfpo.model.llama import LlamaForCausalLM
from runtime import make_mesh
from runtime import sharding as sh

# Published sizes: SmolLM2-135M 134.5M, Mistral-7B-v0.1 7.24B, Llama-3.1-8B 8.03B, Qwen2.5-0.5B 494M.
PUBLISHED = {"smollm2_135m": 134_515_008, "mistral_7b": 7_241_732_096, "llama3_8b": 8_030_261_248,
             "qwen2_0_5b": 494_032_768}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_presets_have_the_published_size_and_shard(preset):
    cfg = getattr(LlamaConfig, preset)()
    assert cfg.num_params == PUBLISHED[preset]
    abstract = nnx.state(nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(abstract)) == PUBLISHED[preset]
    sh.state_shardings(abstract, make_mesh({"fsdp": 8}))  # every annotated dimension divides
    if preset in ("mistral_7b", "llama3_8b"):
        sh.state_shardings(abstract, make_mesh({"fsdp": 2, "tensor": 4}))


@pytest.mark.parametrize("field, value, message", [
    ("num_kv_heads", 3, "LlamaConfig.num_heads=8 is not a multiple of num_kv_heads=3"),
    ("head_dim", 7, "LlamaConfig.head_dim=7: rotary embeddings need an even head_dim"),
    ("sliding_window", 0, "LlamaConfig.sliding_window=0"),
    ("vocab_size", 0, "LlamaConfig.vocab_size=0"),
    ("execution", "fast", "LlamaConfig.execution='fast': expected an ExecutionConfig"),
])
def test_invalid_fields_are_named(field, value, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(LlamaConfig.tiny(), **{field: value})


@pytest.mark.parametrize("field, value, message", [
    ("dtype", "int8", "ExecutionConfig.dtype='int8'"),
    ("remat", "some", "ExecutionConfig.remat='some'"),
    ("causal_blocks", 0, "ExecutionConfig.causal_blocks=0"),
    ("attention_query_chunk", 0, "ExecutionConfig.attention_query_chunk=0"),
    ("kernels", "cuda", "ExecutionConfig.kernels='cuda'"),
    ("attention_block", 100, "ExecutionConfig.attention_block=100"),
])
def test_invalid_execution_fields_are_named(field, value, message):
    with pytest.raises(ModelError, match=message):
        LlamaConfig.tiny().with_execution(**{field: value})


def test_execution_is_not_part_of_a_checkpoints_config():
    """The architecture round-trips through config.json whatever the execution; the stored dtype is the one
    written."""
    from bfpo.model.hf_layout import config_from_hf, config_to_hf

    run = LlamaConfig.tiny().with_execution(remat="full", kernels="reference", param_dtype="bfloat16")
    raw = config_to_hf(run)
    assert raw["torch_dtype"] == "bfloat16" and "remat" not in raw
    assert config_from_hf(raw) == LlamaConfig.tiny().with_execution(dtype="bfloat16", param_dtype="bfloat16")


def test_rope_scaling_validation():
    with pytest.raises(ModelError, match="RopeScaling.original_max_position_embeddings is required"):
        RopeScaling(kind="llama3", factor=8.0)
    with pytest.raises(ModelError, match="RopeScaling.kind='ntk'"):
        RopeScaling(kind="ntk", factor=2.0)


@pytest.mark.parametrize("extra", [{"truncate": False}, {"mscale": 0.707}, {"mscale_all_dim": 1.0}])
def test_yarn_settings_the_model_does_not_compute_are_refused(extra):
    """Each of these changes the frequencies or the attention scale in transformers; loaded silently, the logits
    would differ (max abs 1.7 on a real checkpoint), so the loader names the field instead."""
    from bfpo.model.hf_layout import config_from_hf, config_to_hf

    raw = config_to_hf(LlamaConfig.tiny())
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    assert config_from_hf({**raw, "rope_scaling": {**yarn, "truncate": True}}).rope_scaling.kind == "yarn"
    key = next(iter(extra))
    with pytest.raises(ModelError, match=rf"config.json: rope scaling field '{key}' .* is not modelled"):
        config_from_hf({**raw, "rope_scaling": {**yarn, **extra}})
