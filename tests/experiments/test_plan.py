"""The planner: launchers' real steps compiled for TPU and H100 targets without the hardware, with per-device
memory that matches the shardings, finite projections, a configuration that cannot fit reported as such, and
one-line errors for what the user must change."""

import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tyro
from flax import nnx

from bfpo.data import TokenizeConfig, tokenize_pairs
from bfpo.errors import BFPOError
from bfpo.data import synthetic
from bfpo.data.tokenized import batch_spec
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import KVCache, LlamaForCausalLM, positions_from_mask
from bfpo.tokenize import Tokenizer
from experiments import bfpo_train, lm_generate, local_learning_train, plan
from experiments.tasks import local_learning as local_task
from experiments.configs.lm_generate import LMGeneratePlanConfig
from runtime.accelerators import TargetError
from runtime.errors import MeshError
from runtime.flops import count_flops
from runtime.mesh import MeshConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reports():
    return {
        "bfpo": plan.plan("bfpo_train", "tiny", "tpu-v5e-4"),
        "bfpo_fsdp": plan.plan("bfpo_train", "tiny", "h100x8", mesh=MeshConfig(data=1, fsdp=8), model_flops=False),
        "digits": plan.plan("local_learning_train", "digits", "tpu-v5e-4", model_flops=False),
        "bfpo_h100": plan.plan("bfpo_train", "tiny", "h100x8"),
    }


def _positive_and_finite(r):
    values = [r["memory"]["total"], r["memory"]["argument"], r["flops"]["per_device"], r["flops"]["model_per_device"],
              r["traffic"]["bytes"], r["roofline"]["step_s"], *r["projected"].values()]
    assert all(math.isfinite(v) and v > 0 for v in values), values
    assert 0 < r["projected"]["mfu"] <= 1
    assert r["memory"]["fits"] and r["kind"] == "projection"
    assert r["flops"]["unknown_trip_loops"] == 0 and r["traffic"]["unknown_trip_loops"] == 0


@pytest.mark.parametrize("name", ["bfpo", "digits", "bfpo_h100"])
def test_presets_compile_with_finite_positive_figures(reports, name):
    _positive_and_finite(reports[name])


def test_tiny_bfpo_counts_its_loops(reports):
    """The tiny preset scans its 2 layers and its log-prob chunks: XLA's cost analysis, which counts each loop body
    once, reports fewer FLOPs than every iteration needs."""
    r = reports["bfpo"]
    assert r["flops"]["xla_cost_analysis_flops"] < r["flops"]["per_device"]


def test_sharded_argument_bytes_equal_parameters_plus_optimizer_per_device(reports):
    """On 8 H100s with fsdp = 8 every weight matrix has an "embed" dimension split 8 ways and the RMSNorm scales
    are replicated; AdamW keeps two float32 moments of the trained down_proj; the batch is split over the 8
    devices. With data = 8 each device holds everything but its eighth of the batch. (A TPU's figure is larger:
    its tile layouts pad the tiny model's 4 x 8 head blocks to 8 x 128.)"""
    cfg = LlamaConfig.tiny()
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    norms = (2 * layers + 1) * d
    spec = {name: batch_spec(8, 72, reference=True) for name in ("safety", "buffer")}
    batch = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(spec)) / 8
    sharded = 4 * ((cfg.num_params - norms) / 8 + norms) + 2 * 4 * layers * f * d / 8 + batch
    replicated = 4 * cfg.num_params + 2 * 4 * layers * f * d + batch
    for name, hand in (("bfpo_fsdp", sharded), ("bfpo_h100", replicated)):
        memory = reports[name]["memory"]
        np.testing.assert_allclose(memory["argument"], hand, rtol=0.01, err_msg=name)
        np.testing.assert_allclose(memory["argument_bytes_from_shardings"], hand, rtol=0.01, err_msg=name)


def test_a_configuration_that_cannot_fit_is_reported_with_its_largest_buffers():
    """A 4-layer MLP of width W, replicated on every chip with its AdamW moments: W = 32768 needs 48 GiB on each
    16 GiB v5e chip, and the TPU compiler refuses the program (the report says so with the compiler's own figure);
    W = 65536 needs 192 GiB on each 79 GiB H100, which the GPU compiler compiles and reports."""
    for target, width in (("tpu-v5e-4", 32768), ("h100x8", 65536)):
        args = ["--student.hidden", str(width), "--student.depth", "4", "--teacher.hidden", "8"]
        r = plan.plan("mlp_regression", "default", target, args, model_flops=False)
        assert not r["memory"]["fits"], target
        largest = r["largest_arguments"][0]
        assert largest["bytes"] == width * width * 4 and "kernel" in largest["name"], largest
        assert "DOES NOT FIT" in plan.format_report(r)
        if target == "h100x8":
            assert r["memory"]["total"] > 3 * 3 * width * width * 4
        else:
            assert r["memory"]["compiler_refused"] and "HBM" in r["memory"]["compiler_message"]


def test_the_abstract_batches_match_the_real_ones():
    cfg = tyro.cli(bfpo_train.config_type(), args=["tiny"])
    pairs = synthetic.make_pairs(16, 0)
    tok = tokenize_pairs(pairs, Tokenizer.byte_level(), TokenizeConfig(max_length=cfg.max_length,
                                                                     max_prompt_length=cfg.max_prompt_length,
                                                                     buckets=cfg.buckets))
    real = tok.batch(list(range(8)))
    spec = batch_spec(8, real["chosen"]["tokens"].shape[1])
    as_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), real)
    assert jax.tree.structure(as_spec) == jax.tree.structure(spec)
    assert jax.tree.leaves(as_spec) == jax.tree.leaves(spec)
    ll = tyro.cli(local_learning_train.config_type(), args=["digits"])
    train_src, _, mean_std = local_task.load_data(ll.data, ll.model.image_size)
    from local_learning import data as data_lib

    batch = next(data_lib.ImageBatches(train_src, ll.batch_size, seed=0, augment="none", mean_std=mean_std).iterator())
    as_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), batch)
    assert as_spec == local_learning_train.batch_spec(ll)


def test_alternatives_are_valid_configs_that_change_what_they_say():
    cfg = tyro.cli(bfpo_train.config_type(), args=["mistral-7b", "--run.mesh.data", "2", "--run.mesh.fsdp", "2"])
    alts = dict(bfpo_train.plan_alternatives(cfg, {"data": 2, "fsdp": 2, "tensor": 1}))
    assert alts["--run.mesh.data 1 --run.mesh.fsdp 4 --run.mesh.tensor 1"].run.mesh == MeshConfig(data=1, fsdp=4)
    assert alts["--run.grad-accum 8"].run.grad_accum == 8
    assert alts["--model.attention-query-chunk 256"].model.execution.attention_query_chunk == 256
    assert "--model.remat full" not in alts  # the preset already rematerialises


def test_errors_name_what_to_change():
    with pytest.raises(TargetError, match="known targets"):
        plan.plan("bfpo_train", "tiny", "tpu-v9-4")
    with pytest.raises(MeshError, match="use 3 devices, but there are 4"):
        plan.plan("bfpo_train", "tiny", "tpu-v5e-4", mesh=MeshConfig(data=3))
    with pytest.raises(plan.PlanError, match="presets"):
        plan.plan("bfpo_train", "nope", "tpu-v5e-4")
    with pytest.raises(plan.PlanError, match="bfpo_compare' has no step of its own to plan: it runs bfpo_train"):
        plan.plan("bfpo_compare", "default", "tpu-v5e-4")
    with pytest.raises(BFPOError, match="architecture 'num_params': not a LlamaConfig preset; one of tiny"):
        plan.plan("lm_generate", "mistral_7b", "tpu-v5e-4", ["--architecture", "num_params"])
    with pytest.raises(bfpo_train.TrainConfigError, match="--model.architecture"):
        plan.plan("bfpo_train", "mistral-7b", "tpu-v5e-4", ["--model.architecture="])


def test_cli_errors_are_one_line():
    out = subprocess.run([sys.executable, "-m", "experiments.plan", "--launcher", "bfpo_train", "--preset", "tiny",
                          "--target", "tpu-v9"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "known targets" in out.stderr


@pytest.mark.unsharded  # the reference counts FLOPs of the abstract programs
def test_generation_is_planned_at_its_longest_with_the_kv_cache_and_the_batch_padded_to_its_shards():
    args = ["--max-new-tokens", "8", "--prompt-length", "16", "--batch", "3"]
    r = plan.plan("lm_generate", "smollm2", "tpu-v5e-4", args, model_flops=False)
    assert r["program"] == "lm_generate[4x16+8]" and r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert r["work_per_step"] == {"tokens": 32, "sequences": 4} and r["memory"]["fits"]
    # Independent reference: the prefill and one decode step counted as straight-line programs, no loop.
    cfg = lm_generate.plan_model_config(LMGeneratePlanConfig())
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))))

    def run(state, t):
        mask = jnp.ones((4, t), bool)
        return nnx.merge(graphdef, state).decode(jnp.zeros((4, t), jnp.int32), mask, positions_from_mask(mask),
                                                 KVCache.empty(cfg, 4, 16 + 8), last_only=True)

    prefill, step = (count_flops(lambda s, t=t: run(s, t), state).total for t in (16, 1))
    assert r["flops"]["unknown_trip_loops"] == 1 and r["flops"]["unknown_trip_loops_counted"] == 8
    np.testing.assert_allclose(r["flops"]["global"], prefill + 8 * step, rtol=1e-6)
    # The float32 weights split four ways (the compiled arguments add the TPU's tile padding); the cache of 24
    # slots per row lives in the program's buffers.
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state))
    np.testing.assert_allclose(r["memory"]["argument_bytes_from_shardings"], n_params * 4 / 4, rtol=0.02)
    assert r["memory"]["argument"] >= r["memory"]["argument_bytes_from_shardings"]
    cache = 2 * cfg.num_layers * 4 * 24 * cfg.num_kv_heads * cfg.head_dim * 4
    assert r["memory"]["temp"] + r["memory"]["output"] >= cache / 4
