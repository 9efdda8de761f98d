"""The BFPO launcher with a bfloat16 model at the 7B recipes' learning rate: float32 masters of down_proj train every
weight and are what the checkpoint holds; the export writes the dtype asked for; bfloat16 masters are warned about."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tyro

from bfpo.lora import LoRAConfig
from bfpo.train_params import ParamLayout, build_params
from bfpo.model.llama import init_params
from experiments import bfpo_train
from experiments.tasks import bfpo as bfpo_task
from runtime import make_mesh
from runtime.precision import PrecisionWarning
from runtime.train_state import leaf_paths

ARGS = ["tiny", "--model.dtype", "bfloat16", "--model.param-dtype", "bfloat16", "--optimizer.learning-rate", "5e-7",
        "--optimizer.schedule", "constant", "--streams", "safety=synthetic,pairs=16,batch_size=8",
        "buffer=synthetic,pairs=16,batch_size=8,fractions=1/0/0/0",
        "--eval-pairs", "8", "--run.steps", "3", "--run.checkpoint-every", "3", "--run.log-every", "1",
        "--run.mesh.data", "1", "--run.mesh.fsdp", "8", "--run.no-progress", "--run.no-tensorboard", "--run.no-plot"]


def config(out_dir, *extra):
    return tyro.cli(bfpo_train.config_type(), args=[*ARGS, "--run.out-dir", str(out_dir), *extra])


def by_path(params) -> dict:
    return dict(zip(leaf_paths(params), jax.tree.leaves(jax.device_get(params))))


def test_bfloat16_model_trains_float32_masters_of_down_proj(tmp_path):
    cfg = config(tmp_path, "--export-dtype", "float32")
    task, prepared = bfpo_task.make_task(cfg)
    bfpo_task.train_and_export(cfg, task, prepared)
    final = by_path(bfpo_task.final_params(cfg, task))
    start = by_path(build_params(prepared.layout, init_params(prepared.model_cfg, cfg.run.seed), cfg.run.seed))
    trained = [p for p in final if "policy/" in p and "down_proj" in p]
    assert trained
    for path, value in final.items():
        assert value.dtype == (np.float32 if path in trained else jnp.bfloat16), path
    for path in trained:
        # lr 5e-7 is 250x below bfloat16's spacing at these weights; the masters still move every entry.
        assert np.mean(final[path] != start[path].astype(np.float32)) > 0.99, path
    header = json.loads(_safetensors_header(Path(cfg.run.out_dir) / "hf"))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F32"}


def test_bfloat16_masters_warn_with_the_numbers(tmp_path):
    cfg = config(tmp_path, "--run.precision.master", "stored", "--no-export", "--run.steps", "1")
    task, prepared = bfpo_task.make_task(cfg)
    expected = r"bfpo_train\[bfpo\]\] 1 of 1 trained parameter arrays .*down_proj.*spacing there 0\.000122, update 5e-07"
    with pytest.warns(PrecisionWarning, match=expected):
        bfpo_task.train_and_export(cfg, task, prepared)
    final = by_path(bfpo_task.final_params(cfg, task))
    assert {final[p].dtype for p in final if "down_proj" in p} == {np.dtype(jnp.bfloat16)}


def _safetensors_header(directory: Path) -> bytes:
    path = sorted(directory.glob("*.safetensors"))[0]
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(n)


@pytest.mark.parametrize("lora_rank", [0, 8])
def test_the_7b_preset_keeps_float32_masters_of_what_it_trains_and_bfloat16_frozen_weights(lora_rank):
    """Abstract only (no 7B allocation): the state the zephyr-7b preset would train on an 8-device mesh."""
    cfg = bfpo_train.BFPOTrainConfig.zephyr_7b(layout=ParamLayout(lora=LoRAConfig(rank=lora_rank)))
    model_cfg = bfpo_task.model_config(cfg)
    abstract, _ = bfpo_task.step_parts(cfg, model_cfg).state_spec(make_mesh({"fsdp": 8}))
    dtypes = {}
    for path, leaf, trained in zip(leaf_paths(abstract.params), jax.tree.leaves(abstract.params), abstract.trainable):
        dtypes.setdefault((trained, str(leaf.dtype)), []).append(path)
    assert set(dtypes) == {(True, "float32"), (False, "bfloat16")}, {k: v[:3] for k, v in dtypes.items()}
    trained = dtypes[(True, "float32")]
    assert all(("lora/" if lora_rank else "down_proj") in p for p in trained), trained
    assert {str(x.dtype) for x in jax.tree.leaves(abstract.opt_state) if x.ndim} == {"float32"}
    # The forward pass runs the dense weights in bfloat16; LoRA adapters are created in float32 and stay so.
    forward = {d for d, t in zip(abstract.forward_dtypes, abstract.trainable) if t}
    assert forward == ({"float32"} if lora_rank else {"bfloat16"})
    assert {d for d, t in zip(abstract.forward_dtypes, abstract.trainable) if not t} == {"bfloat16"}
