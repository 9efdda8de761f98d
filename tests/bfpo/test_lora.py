"""LoRA: B = 0 leaves the model exactly the base; the merge is W + (alpha / r) A B per layer (NumPy); a step
moves only the adapters while the LoRA-off reference stays the base model; the exported merged model (safetensors,
reloaded) scores like the adapted forward; adapters shard along the axes they share with their kernel."""

import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from bfpo.errors import ModelError
from bfpo.logprobs import sequence_logprobs
from bfpo.lora import LoRAConfig, init_lora, merge_lora
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import init_params, model_from_params
from bfpo.model.load_hf import load_hf, save_hf
from bfpo.optim import OptimizerConfig, make_optimizer
from bfpo.train_params import ParamLayout, build_params, policy_params, reference_params, trainable_predicate
from bfpo.train_step import PreferenceConfig, make_preference_step
from runtime import make_mesh
from runtime import sharding as sh
from runtime.train_state import init_train_state, leaf_paths

sys.path.insert(0, str(Path(__file__).parent))
from test_train_step import preference_stream  # noqa: E402

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

CFG = LlamaConfig.tiny()
LORA = LoRAConfig(targets="down_proj|o_proj", rank=4, alpha=8.0)
LAYOUT = ParamLayout(reference="base", lora=LORA)
PREF = PreferenceConfig(objective="bfpo", layout=LAYOUT)
TX = make_optimizer(OptimizerConfig(learning_rate=1e-2, schedule="constant"), total_steps=10)
BATCH = {"safety": preference_stream(3)}


@jax.jit
def logprobs(params, side):
    return sequence_logprobs(model_from_params(CFG, params), side["tokens"], side["mask"], side["score_mask"])[0]


@pytest.fixture(scope="module")
def trained():
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    state, shardings = init_train_state(lambda: build_params(LAYOUT, init_params(CFG, 0)), TX, mesh, seed=0,
                                        trainable=trainable_predicate(LAYOUT))
    initial = jax.device_get(state.params)
    step = jax.jit(make_preference_step(CFG, PREF, TX), donate_argnums=0)
    with sh.activate(mesh):
        state, _ = step(state, BATCH)
    return initial, jax.device_get(state.params)


def test_zero_b_merges_to_the_base_exactly(trained):
    initial, _ = trained
    base = initial["base"]
    chex.assert_trees_all_equal(merge_lora(base, initial["lora"], LORA), base)
    chex.assert_trees_all_equal(logprobs(policy_params(LAYOUT, initial), BATCH["safety"]["chosen"]),
                                logprobs(base, BATCH["safety"]["chosen"]))


def test_merge_is_w_plus_scaled_a_b_per_layer(trained):
    _, params = trained
    merged = merge_lora(params["base"], params["lora"], LORA)
    down = params["lora"]["layers"]["mlp"]["down_proj"]["kernel"]
    a, b = np.asarray(down["a"].get_value(), np.float64), np.asarray(down["b"].get_value(), np.float64)
    w = np.asarray(params["base"]["layers"]["mlp"]["down_proj"]["kernel"].get_value(), np.float64)
    expected = np.stack([w[l] + (8.0 / 4) * a[l] @ b[l] for l in range(CFG.num_layers)])
    np.testing.assert_allclose(merged["layers"]["mlp"]["down_proj"]["kernel"].get_value(), expected, rtol=1e-5,
                               atol=1e-7)
    o = params["lora"]["layers"]["self_attn"]["o_proj"]["kernel"]
    assert o["a"].shape == (CFG.num_layers, CFG.num_heads, CFG.head_dim, 4)
    assert o["b"].shape == (CFG.num_layers, 4, CFG.hidden_size)


def test_step_moves_only_adapters_and_the_reference_stays_the_base(trained):
    initial, params = trained
    before = dict(zip(leaf_paths(initial), jax.tree.leaves(initial)))
    for path, value in zip(leaf_paths(params), jax.tree.leaves(params)):
        moved = not np.array_equal(value, before[path])
        # dL/dA = scale x^T (dL/dW_eff) B^T vanishes while B = 0, so the first step moves B only.
        assert moved == (path.startswith("lora/") and path.endswith("/b")), path
    side = BATCH["safety"]["rejected"]
    base_before = logprobs(initial["base"], side)
    chex.assert_trees_all_equal(logprobs(reference_params(LAYOUT, params), side), base_before)
    assert not np.allclose(logprobs(policy_params(LAYOUT, params), side), base_before)


def test_merged_export_scores_like_the_adapted_forward(trained, tmp_path):
    _, params = trained
    merged = policy_params(LAYOUT, jax.device_put(params))
    save_hf(model_from_params(CFG, merged), tmp_path / "hf")
    reloaded = nnx.state(load_hf(tmp_path / "hf"), nnx.Param)
    side = BATCH["safety"]["chosen"]
    np.testing.assert_allclose(logprobs(reloaded, side), logprobs(merged, side), rtol=1e-6)


def test_adapters_shard_along_their_kernels_axes():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    adapters = jax.eval_shape(lambda: init_lora(init_params(CFG, 0), LORA))
    specs = {p: s.spec for p, s in zip(leaf_paths(adapters), jax.tree.leaves(sh.state_shardings(adapters, mesh)))}
    assert specs == {
        "layers/mlp/down_proj/kernel/a": P(None, "tensor", None),  # [L, F, r]: F as in the kernel
        "layers/mlp/down_proj/kernel/b": P(None, None, "fsdp"),  # [L, r, D]
        "layers/self_attn/o_proj/kernel/a": P(None, "tensor", None, None),  # [L, H, E, r]
        "layers/self_attn/o_proj/kernel/b": P(None, None, "fsdp"),
    }


def test_targets_matching_nothing_name_the_kernels():
    with pytest.raises(ModelError, match="matches no projection kernel"):
        init_lora(jax.eval_shape(lambda: init_params(CFG, 0)), LoRAConfig(targets="norm", rank=4))
    with pytest.raises(ModelError, match="LoRAConfig.rank"):
        LoRAConfig(rank=-1)
    with pytest.raises(ModelError, match="LoRAConfig.rank=0: adapters are off"):
        init_lora(jax.eval_shape(lambda: init_params(CFG, 0)), LoRAConfig(rank=0))
