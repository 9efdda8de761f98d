"""Faults on disk: an unreadable latest checkpoint gives way to the one before it, a checkpoint never restores to a
state other than the one saved, one run at a time writes into a run directory, and its log holds each step once."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.mlp_regression import MLPRegressionConfig
from experiments.run import EXIT_COMPLETED, EXIT_REFUSED, train
from experiments.run_dir import RunDirectoryBusy, RunDirectoryLock, keep_rows_up_to
from experiments.tasks import mlp_regression
from runtime import make_mesh
from runtime.checkpoint import Checkpointer
from runtime.errors import UnreadableCheckpointError
from runtime.train_state import TrainState

REPO = Path(__file__).resolve().parents[2]


def smoke(out_dir, steps, **run) -> MLPRegressionConfig:
    cfg = MLPRegressionConfig.smoke(str(out_dir), **{"checkpoint_every": 2, "tensorboard": False, "plot": False,
                                                     **run})
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, steps=steps))


def final_params(out_dir, cfg):
    task = mlp_regression.make_task(cfg)
    abstract, shardings = task.state_spec(make_mesh(cfg.run.mesh))
    with Checkpointer(str(Path(out_dir) / "checkpoints")) as ckpt:
        state, _ = ckpt.restore(abstract, shardings)
    return jax.device_get(state.params)


def largest_data_file(checkpoint: Path) -> Path:
    return max((p for p in (checkpoint / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    cfg = smoke(out, 6)
    train(cfg.run, mlp_regression.make_task(cfg))
    return final_params(out, cfg)


def test_a_truncated_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
        tmp_path, uninterrupted, capsys):
    cfg = smoke(tmp_path, 4)
    train(cfg.run, mlp_regression.make_task(cfg))
    with open(largest_data_file(tmp_path / "checkpoints" / "4"), "r+b") as f:
        f.truncate(10)
    cfg = smoke(tmp_path, 6, resume=True)
    summary = train(cfg.run, mlp_regression.make_task(cfg))
    out = capsys.readouterr().out
    assert "checkpoints/4 cannot be restored" in out and "resumed from step 2" in out
    assert (tmp_path / "checkpoints.unreadable" / "4" / "state").is_dir()  # kept, not deleted
    assert summary.steps_done == 6 and sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4", "6"]
    chex.assert_trees_all_equal(final_params(tmp_path, cfg), uninterrupted)


def test_when_no_checkpoint_reads_back_the_run_refuses_and_moves_nothing(tmp_path):
    cfg = smoke(tmp_path, 4)
    train(cfg.run, mlp_regression.make_task(cfg))
    for step in ("2", "4"):
        with open(largest_data_file(tmp_path / "checkpoints" / step), "r+b") as f:
            f.truncate(10)
    cfg = smoke(tmp_path, 6, resume=True)
    with pytest.raises(UnreadableCheckpointError, match=r"no checkpoint in .* can be restored \(.*checkpoints/4 "
                                                        r".*checkpoints/2 .*\); start afresh"):
        train(cfg.run, mlp_regression.make_task(cfg))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of a one-array state, written synchronously, and a restore of it."""
    w = jnp.arange(1000, dtype=jnp.float32) * 1.2345
    state = TrainState(step=jnp.asarray(1, jnp.int32), params={"w": w}, opt_state={}, rng=jax.random.PRNGKey(0),
                       trainable=(True,))
    shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), state)
    with Checkpointer(str(tmp_path), async_save=False) as ckpt:
        ckpt.save(state, {"data": {}})

    def restore():
        with Checkpointer(str(tmp_path)) as ckpt:
            return ckpt.restore(state, shardings)[0]

    return tmp_path / "1", np.asarray(w), restore


def test_every_byte_flip_in_a_data_file_is_refused_or_harmless(saved):
    """The arrays are stored compressed without a checksum of their own: most flipped bytes still decode, to other
    values. The content hashes recorded at save time catch each of those."""
    checkpoint, w, restore = saved
    path = largest_data_file(checkpoint)
    original = path.read_bytes()
    refused = 0
    for position in range(0, len(original), 61):
        altered = bytearray(original)
        altered[position] ^= 0x40
        path.write_bytes(bytes(altered))
        try:
            np.testing.assert_array_equal(np.asarray(restore().params["w"]), w)
        except UnreadableCheckpointError:
            refused += 1
    path.write_bytes(original)
    np.testing.assert_array_equal(np.asarray(restore().params["w"]), w)
    assert refused > 0.8 * len(range(0, len(original), 61))


def test_an_array_that_reads_back_different_from_its_recorded_hash_is_named(saved, monkeypatch):
    checkpoint, _, restore = saved
    real = Checkpointer._check_hashes

    def recorded_other_bits(self, step, arrays, hashes):
        return real(self, step, arrays, [h if i else "0" * 16 for i, h in enumerate(hashes)])

    monkeypatch.setattr(Checkpointer, "_check_hashes", recorded_other_bits)
    with pytest.raises(UnreadableCheckpointError, match=r"array 'params/w' read back differs from the one saved"):
        restore()


def test_a_second_run_into_a_locked_directory_is_refused_naming_the_holder(tmp_path):
    cfg = smoke(tmp_path, 2)
    with RunDirectoryLock(tmp_path):
        with pytest.raises(RunDirectoryBusy, match=rf"{tmp_path} is in use by pid {os.getpid()} on .* since"):
            train(cfg.run, mlp_regression.make_task(cfg))
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
    assert train(cfg.run, mlp_regression.make_task(cfg)).steps_done == 2  # released with the context


def test_two_launchers_started_together_one_runs_the_other_is_refused(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "experiments.mlp_regression", "--run.out-dir", str(tmp_path), "--run.steps", "40",
           "--run.no-progress", "--run.no-tensorboard", "--run.no-plot"]
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [EXIT_COMPLETED, EXIT_REFUSED], results
    assert "is in use by pid" in results[1][1] and "Traceback" not in results[1][1]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [10, 20, 30, 40]


def test_a_fresh_run_starts_its_log_empty_and_a_resume_drops_the_rows_it_runs_again(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 999, "split": "train", "loss": 1.0}\n')  # a run that died before any checkpoint
    cfg = smoke(tmp_path, 8, log_every=2, checkpoint_every=4)
    train(cfg.run, mlp_regression.make_task(cfg))
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [2, 4, 6, 8, 8]  # train, eval
    # Killed after logging step 8 (and half a line) but before checkpoint 8 was written.
    shutil.rmtree(tmp_path / "checkpoints" / "8")
    log.write_text(log.read_text() + '{"step": 9, "spl')
    cfg = smoke(tmp_path, 8, log_every=2, checkpoint_every=4, resume=True)
    train(cfg.run, mlp_regression.make_task(cfg))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(2, "train"), (4, "train"), (6, "train"), (8, "train"),
                                                          (8, "eval")]


def test_keep_rows_up_to_counts_what_it_drops(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1}\n{"step": 3}\n[1]\n{"step": 2}\n{"no": 1}\n')
    assert keep_rows_up_to(log, 2) == 3
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert keep_rows_up_to(log, 2) == 0 and keep_rows_up_to(tmp_path / "absent.jsonl", 5) == 0


def test_tensorboard_reads_the_run_directory_and_its_config_json_reads_back(tmp_path):
    """``pip install -e .[tensorboard]`` then ``tensorboard --logdir <runs>`` shows the logged scalars; the run's
    config.json is the config it ran with, readable by ``--config``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from experiments.config_file import read_config_file

    cfg = smoke(tmp_path, 4, log_every=2, tensorboard=True)
    train(cfg.run, mlp_regression.make_task(cfg))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert read_config_file(tmp_path / "config.json", MLPRegressionConfig) == cfg
