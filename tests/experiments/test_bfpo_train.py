"""The BFPO launcher: on the synthetic safety task BFPO raises log pi(safe) - log pi(unsafe) (relative to the
reference) on held-out unsafe-chosen / safe-rejected pairs while DPO (helpfulness labels only) lowers it; a run
SIGKILLed after a checkpoint and resumed ends at the same parameters as an uninterrupted one; the export reloads
as the trained policy; presets and config errors."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
import tyro
from flax import nnx

from bfpo.errors import BFPOError
from bfpo.labeling import LabelingConfig
from bfpo.lora import LoRAConfig
from bfpo.train_params import ParamLayout
from bfpo.model.load_hf import load_hf
from bfpo.objectives import OBJECTIVES, BFPOConfig, DPOConfig, IPOConfig, ORPOConfig, ObjectiveConfigs
from experiments import bfpo_train
from experiments.tasks import bfpo as bfpo_task
from experiments.configs.bfpo_train import BFPOTrainConfig, StreamData, TrainConfigError
from experiments.run import RunConfig
from runtime import make_mesh
from runtime.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[2]
# The tiny preset (safety stream + safe/safe buffer) made small: tau = beta = 0.1 and all weights trainable make
# the effect clear in 30 steps; (fsdp 8) shards the parameters.
ARGS = ["tiny", "--objectives.bfpo.labeling.tau", "0.1", "--objectives.dpo.beta", "0.1", "--trainable=", "--optimizer.learning-rate", "3e-3",
        "--optimizer.schedule", "constant", "--streams", "safety=synthetic,pairs=128,batch_size=8",
        "buffer=synthetic,pairs=64,batch_size=8,fractions=1/0/0/0",
        "--eval-pairs", "32", "--run.steps", "30", "--run.checkpoint-every", "10", "--run.log-every", "10",
        "--run.eval-every", "0", "--run.mesh.data", "1", "--run.mesh.fsdp", "8", "--run.no-progress",
        "--run.no-tensorboard", "--run.no-plot"]


def config(out_dir, *extra) -> BFPOTrainConfig:
    return tyro.cli(bfpo_train.config_type(), args=[*ARGS, "--run.out-dir", str(out_dir), *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{objective: (config, task, prepared, summary, final parameter dict)}; the BFPO run exports its model."""
    out = {}
    for objective, extra in (("bfpo", ()), ("dpo", ("--no-export",))):
        cfg = config(tmp_path_factory.mktemp(objective), "--objective", objective, *extra)
        task, prepared = bfpo_task.make_task(cfg)
        summary = bfpo_task.train_and_export(cfg, task, prepared)
        out[objective] = (cfg, task, prepared, summary, jax.device_get(bfpo_task.final_params(cfg, task)))
    return out


def test_bfpo_prefers_the_safe_response_where_dpo_prefers_the_helpful_unsafe_one(runs):
    """h = [log pi(y_unsafe) - log pi_ref(y_unsafe)] - [log pi(y_safe) - log pi_ref(y_safe)] on held-out pairs whose
    more helpful response is unsafe: 0 before training (pi = pi_ref); BFPO drives it below 0, DPO above."""
    bfpo = runs["bfpo"][3].eval_metrics["safety/pairs/margin/unsafe_safe"]
    dpo = runs["dpo"][3].eval_metrics["safety/pairs/margin/unsafe_safe"]
    assert bfpo < -1.0 and dpo > 20.0, (bfpo, dpo)


def test_eval_hook_reports_heldout_preference_metrics(runs):
    ev = runs["bfpo"][3].eval_metrics
    assert {"loss", "safety/loss", "safety/safety/accuracy", "safety/pairs/margin/safe_safe"} <= set(ev)
    # BFPO's target on unsafe-chosen pairs is negative: there h < 0 counts as right.
    assert ev["safety/safety/accuracy/unsafe_safe"] > 0.5
    assert 0 < ev["safety/safety/accuracy"] <= 1 and np.isfinite(ev["loss"])


def test_export_reloads_as_the_trained_policy(runs):
    cfg, *_, params = runs["bfpo"]
    hf_dir = Path(cfg.run.out_dir) / "hf"
    assert (hf_dir / "tokenizer.json").exists() and (hf_dir / "config.json").exists()
    chex.assert_trees_all_equal(jax.device_get(nnx.state(load_hf(hf_dir), nnx.Param)), params["policy"])


def launch(out_dir, cache_dir, *extra):
    # A persistent compilation cache lets the resumed process reuse the killed one's executables.
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    cmd = [sys.executable, "-m", "experiments.bfpo_train", *ARGS, "--no-export", "--run.out-dir", str(out_dir), *extra]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoint_steps(out_dir) -> list[int]:
    d = Path(out_dir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def test_sigkill_then_resume_reaches_the_uninterrupted_parameters(runs, tmp_path):
    cfg, task, *_, uninterrupted = runs["bfpo"]
    out = tmp_path / "run"
    killed = launch(out, tmp_path / "jax_cache")
    try:
        deadline = time.monotonic() + 300
        while not checkpoint_steps(out) and time.monotonic() < deadline:
            assert killed.poll() is None, killed.stderr.read()[-3000:]
            time.sleep(0.002)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        killed.kill()
    assert killed.returncode == -signal.SIGKILL
    assert 0 < checkpoint_steps(out)[-1] < 30, "the run must die between checkpoints"

    resumed = launch(out, tmp_path / "jax_cache", "--run.resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps_done"] == 30
    # The reference cache written by the killed run is reused, not recomputed, by the resumed one.
    assert "reference log-probs" not in err
    params = jax.device_get(bfpo_task.final_params(config(out), task))
    chex.assert_trees_all_equal(params, uninterrupted)


# --- presets and errors ----------------------------------------------------------------------------------------

def test_paper_preset_carries_the_paper_hyperparameters():
    cfg = BFPOTrainConfig.zephyr_7b(model_dir="/models/zephyr", safety_path="/data/pku", buffer_path="/data/uf")
    pref = bfpo_task.preference_config(cfg)
    labeling = pref.objective_config.labeling
    assert (labeling.tau, labeling.b1, labeling.alpha) == (0.01, 3.0, 0.5)
    assert cfg.optimizer.learning_rate == 5e-7 and cfg.optimizer.warmup_ratio == 0.1
    assert cfg.optimizer.schedule == "cosine"
    assert sum(s.batch_size for s in cfg.streams[:1]) == 32 and [s.weight for s in cfg.streams] == [1.0, 1.0]
    assert pref.layout.trainable == "down_proj" and cfg.model.execution.param_dtype == "bfloat16"
    assert cfg.model.execution.remat == "full"
    dpo = bfpo_task.objective_config(BFPOTrainConfig.tiny(objective="dpo",
                                                          objectives=ObjectiveConfigs().with_config("dpo", beta=0.05)))
    assert dpo == DPOConfig(beta=0.05)


def test_every_objectives_every_parameter_is_a_flag_and_the_old_flat_flags_still_work(capsys):
    """``--help`` lists each registered objective's fields; ``--tau/--beta/--b1/--alpha/--average-log-probs``
    set what they set before (the field on every objective that has it) and print one deprecation line each."""
    with pytest.raises(SystemExit):
        tyro.cli(bfpo_train.config_type(), args=["tiny", "--help"])
    help_text = capsys.readouterr().out
    for name, objective in OBJECTIVES.items():
        for field in dataclasses.fields(objective.config):
            flag = f"--objectives.{name}.{field.name}".replace("_", "-")
            assert flag in help_text or f"--objectives.{name.replace('_', '-')}.labeling." in help_text, flag
    old = ["tiny", "--objective", "ipo", "--tau", "0.2", "--b1", "4", "--alpha=0.4", "--beta", "0.3",
           "--average-log-probs"]
    upgraded = bfpo_train.upgraded_args(old)
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 5 and all("deprecated" in n and "--objectives." in n for n in notes)
    cfg = tyro.cli(bfpo_train.config_type(), args=upgraded)
    assert cfg.objectives.ipo == IPOConfig(tau=0.2, average_log_probs=True)
    assert cfg.objectives.bfpo == BFPOConfig(labeling=LabelingConfig(tau=0.2, b1=4.0, alpha=0.4),
                                             average_log_probs=True)
    assert cfg.objectives.dpo == DPOConfig(beta=0.3) and cfg.objectives.orpo == ORPOConfig()
    assert bfpo_task.objective_config(cfg) == IPOConfig(tau=0.2, average_log_probs=True)


def test_the_parameter_layout_is_embedded_as_is_and_the_old_lora_flags_still_work(capsys):
    """``ParamLayout`` is the launcher's own field (``--reference``, ``--trainable``, ``--lora.rank``, ...); the
    flat ``--lora-rank/--lora-alpha/--lora-targets`` of earlier versions set the same fields, with a deprecation
    line naming the new flag."""
    with pytest.raises(SystemExit):
        tyro.cli(bfpo_train.config_type(), args=["tiny", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--reference", "--trainable", "--lora.rank", "--lora.alpha", "--lora.targets"):
        assert flag in help_text, flag
    new = tyro.cli(bfpo_train.config_type(), args=["tiny", "--reference", "base", "--lora.rank", "4",
                                                   "--lora.alpha", "8", "--lora.targets", "o_proj"])
    old = tyro.cli(bfpo_train.config_type(), args=bfpo_train.upgraded_args(
        ["tiny", "--reference", "base", "--lora-rank", "4", "--lora-alpha=8", "--lora-targets", "o_proj"]))
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == ["warning: --lora-rank is deprecated: use --lora.rank",
                     "warning: --lora-alpha is deprecated: use --lora.alpha",
                     "warning: --lora-targets is deprecated: use --lora.targets"]
    assert new == old and new.layout == ParamLayout(reference="base", lora=LoRAConfig(targets="o_proj", rank=4,
                                                                                      alpha=8.0))
    assert tyro.cli(bfpo_train.config_type(), args=["tiny", "--trainable="]).layout.trainable == ""
    with pytest.raises(BFPOError, match="reference='base' takes the base weights under LoRA"):
        tyro.cli(bfpo_train.config_type(), args=["tiny", "--reference", "base"])


def test_config_errors_name_the_field():
    with pytest.raises(TrainConfigError, match="batch_size=6 of stream 'safety' is not divisible by run.grad_accum=4"):
        BFPOTrainConfig(run=RunConfig(grad_accum=4), streams=(StreamData(batch_size=6),))
    with pytest.raises(TrainConfigError, match="names must differ"):
        BFPOTrainConfig(streams=(StreamData(), StreamData()))
    with pytest.raises(TrainConfigError, match="ModelSource.path is required"):
        from experiments.configs.bfpo_train import ModelSource

        ModelSource(kind="hf")


def test_kto_trains_on_batches_with_a_mismatched_side(tmp_path):
    with pytest.raises(TrainConfigError, match="objective='kto' with reference='batch'"):
        BFPOTrainConfig(objective="kto", layout=ParamLayout(reference="batch"))
    cfg = config(tmp_path, "--objective", "kto", "--reference", "frozen", "--run.steps", "3", "--no-export")
    task, prepared = bfpo_task.make_task(cfg)
    batch = next(iter(task.data))
    assert set(batch["safety"]) >= {"chosen", "rejected", "mismatched"}
    summary = bfpo_task.train_and_export(cfg, task, prepared)
    ev = summary.eval_metrics
    assert np.isfinite(ev["loss"]) and "safety/kto/reference_point" in ev, sorted(ev)
    # The frozen reference copy is not in the checkpoint; restoring rebuilds it from the source.
    with Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
        assert not ckpt.holds_frozen_params()
    params = jax.device_get(bfpo_task.final_params(cfg, task))
    mesh = make_mesh(cfg.run.mesh)
    chex.assert_trees_all_equal(params["reference"], jax.device_get(task.frozen_params(mesh)["reference"]))
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), params["policy"], params["reference"])
    assert any(jax.tree.leaves(moved))


def test_truncated_pairs_are_reported_with_the_budgets(tmp_path, capsys):
    cfg = config(tmp_path, "--max-length", "40", "--max-prompt-length", "24", "--buckets", "40")
    bfpo_task.make_task(cfg)
    out = capsys.readouterr().out
    assert "[bfpo_train] safety: 128 pairs; truncated:" in out, out
    assert "to --max-prompt-length 24 / --max-length 40" in out


def test_streams_are_one_list_and_synthetic_streams_are_announced(tmp_path, capsys):
    """``--streams`` replaces the preset's list (the tiny preset's synthetic buffer does not ride along with a user
    file), indexed flags of earlier versions are refused with the new form, and every synthetic stream is
    announced, naming the data it trains beside."""
    from experiments.configs.bfpo_train import format_stream, parse_stream

    data = tmp_path / "pairs.jsonl"
    cfg = tyro.cli(bfpo_train.config_type(), args=["tiny", "--streams", f"mine={data},split=train,batch_size=4"])
    assert cfg.streams == (StreamData(name="mine", path=str(data), split="train", batch_size=4),)
    for preset in (BFPOTrainConfig.zephyr_7b(), BFPOTrainConfig.tiny()):
        assert tuple(parse_stream(format_stream(s)) for s in preset.streams) == preset.streams
    with pytest.raises(TrainConfigError, match="a synthetic stream takes pairs=.*fractions="):
        parse_stream("buffer=synthetic,split=train")
    with pytest.raises(SystemExit) as e:
        bfpo_train.cli(bfpo_train.config_type(), lambda c: c, expected_errors=(TrainConfigError,),
                       upgrade=bfpo_task_upgrade(), args=["tiny", "--streams.0.path", str(data)])
    assert e.value.code == 2 and "streams are now given as one list" in capsys.readouterr().err
    mixed = dataclasses.replace(BFPOTrainConfig.tiny(), streams=(
        StreamData(name="mine", path=str(data)), StreamData(name="buffer", synthetic_pairs=64)))
    (line,) = bfpo_task.announce_streams(mixed)
    assert "stream 'buffer' is synthetic: 64 generated pairs" in line and "beside the data of 'mine'" in line
    assert "stream 'buffer' is synthetic" in capsys.readouterr().out


def bfpo_task_upgrade():
    from experiments.configs.bfpo_train import upgraded_args

    return upgraded_args
