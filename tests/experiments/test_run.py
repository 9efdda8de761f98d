"""The shared loop: interrupted runs resume bit-identically; guard, logs, evals and errors behave as documented."""

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

from experiments.tasks import mlp_regression
from experiments.configs.mlp_regression import MLPRegressionConfig
from experiments.run import (EXIT_DIVERGED, EXIT_REFUSED, EXIT_STOPPED, NonFiniteMetricError, RunError, cli,
                             NonFiniteStateError, config_differences, train)
from runtime import make_mesh
from runtime.batches import IndexedBatches
from runtime.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--run.steps", "1500", "--run.checkpoint-every", "25", "--run.log-every", "25", "--run.eval-every", "500",
        "--run.no-progress", "--run.no-tensorboard", "--run.no-plot"]


def config(out_dir, *extra) -> MLPRegressionConfig:
    return tyro.cli(MLPRegressionConfig, args=[*ARGS, "--run.out-dir", str(out_dir), *extra])


def final_state(out_dir):
    cfg = config(out_dir)
    task = mlp_regression.make_task(cfg)
    abstract, shardings = task.state_spec(make_mesh(cfg.run.mesh))
    with Checkpointer(str(Path(out_dir) / "checkpoints")) as ckpt:
        state, meta = ckpt.restore(abstract, shardings)
    return jax.device_get(state), meta


def checkpoint_steps(out_dir) -> list[int]:
    d = Path(out_dir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def launch(out_dir, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "experiments.mlp_regression", *ARGS, "--run.out-dir", str(out_dir), *extra]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc, out_dir, at_least: int, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = checkpoint_steps(out_dir)
        if steps and steps[-1] >= at_least:
            return steps[-1]
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {at_least}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("timed out waiting for a checkpoint")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    summary = train(config(out).run, mlp_regression.make_task(config(out)))
    assert summary.steps_done == 1500 and summary.stopped == "completed"
    return final_state(out)


def test_sigkill_then_resume_is_bit_identical(tmp_path, uninterrupted):
    proc = launch(tmp_path)
    try:
        killed_after = wait_for_checkpoint(proc, tmp_path, at_least=100)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint_steps(tmp_path)[-1] < 1500, "the run must have been killed before it finished"
    resumed = launch(tmp_path, "--run.resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    state, meta = final_state(tmp_path)
    ref_state, ref_meta = uninterrupted
    assert killed_after >= 100 and int(state.step) == 1500
    chex.assert_trees_all_equal(state, ref_state)
    assert meta["data"] == ref_meta["data"] == {"index": 1500}
    # The steps the killed run logged after its last checkpoint were run again: each is logged once.
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(25, 1501, 25))


def test_sigterm_checkpoints_and_stops_cleanly_then_resumes_identically(tmp_path, uninterrupted):
    proc = launch(tmp_path)
    try:
        wait_for_checkpoint(proc, tmp_path, at_least=50)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_STOPPED, err[-3000:]  # not 0: a scheduler sees the run is to be requeued
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "signal" and summary["steps_done"] < 1500
    assert checkpoint_steps(tmp_path)[-1] == summary["steps_done"]
    assert "SIGTERM at step" in err + out
    cfg = config(tmp_path, "--run.resume")
    resumed = train(cfg.run, mlp_regression.make_task(cfg))
    assert resumed.steps_done == 1500
    chex.assert_trees_all_equal(final_state(tmp_path)[0], uninterrupted[0])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A short run with every output on, its step wrapped to fail on a second trace."""
    out = tmp_path_factory.mktemp("small")
    cfg = MLPRegressionConfig.smoke(str(out), eval_every=10, checkpoint_every=10)
    task = mlp_regression.make_task(cfg)
    task = dataclasses.replace(task, step_fn=chex.assert_max_traces(task.step_fn, n=1))
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, tensorboard=True, plot=True))
    return out, cfg, train(cfg.run, task)


def test_run_writes_metrics_events_plot_and_summary(small_run):
    out, cfg, summary = small_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    eval_steps = [r["step"] for r in records if r["split"] == "eval"]
    assert train_steps == [5, 10, 15, 20]
    assert eval_steps == [10, 20]
    assert all({"loss", "grad_norm", "steps_per_second"} <= set(r) for r in records if r["split"] == "train")
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert summary.plot and Path(summary.plot).stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["steps_done"] == 20
    assert checkpoint_steps(out) == [10, 20]
    assert summary.eval_metrics["loss"] < records[0]["loss"]


def test_existing_run_directory_needs_resume(small_run):
    out, cfg, _ = small_run
    with pytest.raises(RunError, match=r"already holds a checkpoint \(step 20\); pass --run.resume"):
        train(cfg.run, mlp_regression.make_task(cfg))


def test_exit_status_tells_a_diverged_run_from_refused_input(tmp_path, capsys):
    from experiments import mlp_regression as launcher

    def exit_code(*extra):
        with pytest.raises(SystemExit) as e:
            cli(MLPRegressionConfig, launcher.main, args=[*ARGS, "--run.out-dir", str(tmp_path / str(len(extra))),
                                                          "--run.steps", "30", *extra])
        return e.value.code

    assert exit_code("--learning-rate", "1e39") == EXIT_DIVERGED
    assert capsys.readouterr().err.startswith("error: step")
    (tmp_path / "taken" / "checkpoints" / "5").mkdir(parents=True)  # a run directory that is not this run's
    with pytest.raises(SystemExit) as e:
        cli(MLPRegressionConfig, launcher.main, args=[*ARGS, "--run.out-dir", str(tmp_path / "taken")])
    assert e.value.code == EXIT_REFUSED


def test_a_state_that_overflowed_is_never_checkpointed(tmp_path):
    """lr 1e39: the first update overflows while the metrics, computed before it, are finite. The guard checks
    the state it is about to save, names the first bad leaf, and writes no checkpoint."""
    cfg = config(tmp_path, "--learning-rate", "1e39", "--run.checkpoint-every", "1", "--run.log-every", "100")
    with pytest.raises(NonFiniteStateError, match=r"step 1: the state to checkpoint holds a non-finite value "
                                                  r"\(first in params/.*\).*latest checkpoint: step None"):
        train(cfg.run, mlp_regression.make_task(cfg))
    assert checkpoint_steps(tmp_path) == []


def test_resume_message_names_the_fields_that_differ():
    """A resume differs from its checkpoint in ``run.resume`` alone, which says nothing: only real changes are
    named, with their old and new values."""
    old = {"run": {"resume": False, "steps": 100}, "optimizer": {"learning_rate": 1e-3}, "gone": 1}
    assert config_differences(old, {**old, "run": {"resume": True, "steps": 100}}) == ""
    new = {"run": {"resume": True, "steps": 200}, "optimizer": {"learning_rate": 2e-3}, "added": "x"}
    assert config_differences(old, new) == ("added (new) = 'x', gone (gone, was 1), optimizer.learning_rate 0.001 -> "
                                            "0.002, run.steps 100 -> 200")
    many = {f"f{i}": i for i in range(12)}
    assert config_differences(many, {k: v + 1 for k, v in many.items()}).endswith(", and 4 more")


def test_nan_guard_names_the_step_and_metric(tmp_path):
    cfg = MLPRegressionConfig.smoke(str(tmp_path), checkpoint_every=2, log_every=100)
    task = mlp_regression.make_task(cfg)
    clean = mlp_regression.make_batch_fn(cfg, cfg.batch_size)

    def poisoned(index):
        batch = clean(index)
        if index == 6:
            batch["y"] = batch["y"].copy()
            batch["y"][3, 1] = np.inf
        return batch

    task = dataclasses.replace(task, data=IndexedBatches(poisoned))
    with pytest.raises(NonFiniteMetricError, match=r"step 7: metric '(loss|abs_error)' is inf.*latest checkpoint: step 6"):
        train(cfg.run, task)
    assert checkpoint_steps(tmp_path)[-1] == 6


def test_metric_without_counted_values_is_absent_not_nan(tmp_path):
    """A metric whose count is 0 in a window (a pair type absent from the batch) neither trips the NaN guard nor
    appears as NaN in the logs; a non-finite total still does."""
    from experiments.run import _check_finite
    from runtime.metrics import HostAccumulator, Metric

    checkpointer = Checkpointer(str(tmp_path / "ckpt"))
    empty = {"absent": Metric(total=np.float32(0), count=np.float32(0)), "loss": Metric(np.float32(2), np.float32(4))}
    _check_finite(3, empty, checkpointer)
    window = HostAccumulator()
    window.add(empty)
    assert window.means() == {"loss": 0.5}
    with pytest.raises(NonFiniteMetricError, match="step 3: metric 'absent'"):
        _check_finite(3, {"absent": Metric(total=np.float32(np.nan), count=np.float32(0))}, checkpointer)
    checkpointer.close()
