"""local_learning_compare's report: summary.json's schema (one entry per run with the mean and 95% interval over
paired seeds), the paired SGR - plain difference, the precondition check, and --reuse refusing a run made with
other settings."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import stats

from experiments import local_learning_compare as cmp
from experiments.configs.local_learning import DataConfig, LocalLearningConfig
from local_learning.partition import PartitionConfig


def tiny_base(steps=3):
    base = LocalLearningConfig.digits(arch="resnet8", data=DataConfig(source="digits", image_size=8, augment="none"),
                                      partition=PartitionConfig(num_modules=2), batch_size=16, eval_batch_size=64)
    return dataclasses.replace(base, run=dataclasses.replace(base.run, steps=steps, log_every=steps,
                                                             eval_every=steps, plot=False))


def fake_run_one(cfg, v, seed, out):
    """A per-seed row as run_one returns it, with accuracies that depend on the variant and the seed."""
    rng = np.random.default_rng((v.k, int(v.weight * 10), seed))
    acc = 0.9 - 0.02 * v.k + 0.01 * (v.weight > 0) + 0.01 * rng.standard_normal()
    metrics = out / f"{v.slug}_{seed}.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "split": "train", **{f"cos_{i}": 0.1 * s for i in range(2, v.k + 1)}})
                               + "\n" for s in (1, 2)))
    return {"run": v.label, "K": v.k, "sgr_weight": v.weight, "executor": v.executor, "seed": seed,
            "test_accuracy": acc, "module_accuracy": [0.5 + 0.1 * i for i in range(v.k - 1)] + [acc],
            "reconciliation_cosine": [0.3] * (v.k - 1), "steps_per_second": 10.0 / v.k,
            "metrics_jsonl": str(metrics)}


def test_summary_schema_intervals_and_paired_gains(tmp_path, monkeypatch):
    monkeypatch.setattr(cmp, "run_one", fake_run_one)
    cfg = cmp.CompareConfig(base=tiny_base(), modules=(2, 4), seeds=(0, 1, 2), checkpoint_bp=True, memory=False,
                            out_dir=str(tmp_path / "c"))
    cmp.main(cfg)
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert [e["name"] for e in summary] == ["BP", "BP (checkpointed)", "local K=2", "local K=2 + SGR", "local K=4",
                                            "local K=4 + SGR"]
    for entry in summary:
        assert {"name", "K", "lambda", "mode", "accuracy_mean", "accuracy_ci95", "seeds"} <= set(entry)
        assert entry["seeds"] == [0, 1, 2]
        acc = np.asarray(entry["accuracy_per_seed"])
        assert entry["accuracy_mean"] == pytest.approx(acc.mean())
        assert entry["accuracy_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * acc.std(ddof=1) / np.sqrt(3))
    assert [(e["K"], e["mode"], e["lambda"]) for e in summary[:2]] == [(1, "bp", 0.0), (1, "bp_checkpoint", 0.0)]
    assert (summary[3]["K"], summary[3]["mode"], summary[3]["lambda"]) == (2, "local", 1.0)
    gain = summary[5]["sgr_minus_plain"]
    diffs = np.asarray(summary[5]["accuracy_per_seed"]) - np.asarray(summary[4]["accuracy_per_seed"])
    assert gain["pairs"] == 3 and gain["mean"] == pytest.approx(diffs.mean())
    assert gain["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3))
    assert summary[4]["step_time_ratio"] == pytest.approx(10.0 / (10.0 / 4))  # checkpointed BP at 10 steps/s
    table = (tmp_path / "c" / "results.md").read_text()
    assert "Precondition (met)" in table and "SGR minus plain local, paired over seeds" in table
    for name in ("accuracy_vs_k.png", "module_accuracy.png", "step_time_vs_k.png"):
        assert (tmp_path / "c" / name).exists()


def test_reuse_takes_a_finished_run_but_not_one_made_with_other_settings(tmp_path, capsys):
    cfg = cmp.CompareConfig(base=tiny_base(), modules=(), seeds=(0,), checkpoint_bp=False, memory=False,
                            out_dir=str(tmp_path / "c"))
    rows = cmp.main(cfg)
    run_dir = tmp_path / "c" / "bp" / "seed0"
    stamp = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    again = cmp.main(dataclasses.replace(cfg, reuse=True))
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert again[0]["test_accuracy_per_seed"] == rows[0]["test_accuracy_per_seed"]
    v = cmp.variants(cfg)[0]
    other = cmp.seeded(dataclasses.replace(cfg.base, learning_rate=0.01), 0, cfg.mesh).with_modules(
        v.k, v.weight, v.executor, out_dir=str(run_dir))
    other = dataclasses.replace(other, run=dataclasses.replace(other.run, progress=False, resume=False))
    capsys.readouterr()
    assert cmp._finished_summary(run_dir, other) is None
    assert "not reused, made with other settings (learning_rate)" in capsys.readouterr().out


def test_precondition_flags_a_task_where_module_one_is_as_good_as_bp():
    rows = [{"run": "BP", "executor": "bp", "K": 1, "sgr_weight": 0.0, "test_accuracy": 0.99},
            {"run": "local K=4", "executor": "local", "K": 4, "sgr_weight": 0.0, "module_accuracy": [0.986, 0.99]},
            {"run": "local K=2", "executor": "local", "K": 2, "sgr_weight": 0.0, "module_accuracy": [0.5, 0.9]}]
    pre = cmp.precondition(rows)
    assert pre["K"] == 4 and not pre["met"] and pre["gap"] == pytest.approx(0.004)
    rows[1]["module_accuracy"] = [0.60, 0.9]
    assert cmp.precondition(rows)["met"]
