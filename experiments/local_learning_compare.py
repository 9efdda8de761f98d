"""Global BP, gradient-checkpointed BP and local learning with K modules, with and without SGR, on one task:
final test accuracy of every run, compiled step memory per device, a table and two plots (accuracy vs K,
memory vs K).

Run: ``python -m experiments.local_learning_compare [--modules 2 4 8] [--sgr-weight 1.0] [--out-dir ...]``
(default task: the ``digits`` preset, CPU-sized). ``demo()`` is the small version ``make demo`` runs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import tyro

from experiments import local_learning_train as launcher
from experiments.configs.local_learning import LocalLearningConfig
from local_learning.step_memory import step_memory
from runtime import batches as batches_lib
from runtime import sharding as sharding_lib
from runtime.mesh import make_mesh


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareConfig:
    base: LocalLearningConfig = LocalLearningConfig.digits()
    modules: tuple[int, ...] = (2, 4, 8)
    sgr_weight: float = 1.0
    checkpoint_bp: bool = True
    """Also run gradient-checkpointed BP."""
    out_dir: str = "runs/local_learning/compare"


def runs(cfg: CompareConfig):
    """(label, K, lambda, executor) of every run."""
    yield "BP", 1, 0.0, "bp"
    if cfg.checkpoint_bp:
        yield "BP (checkpointed)", 1, 0.0, "bp_checkpoint"
    for k in cfg.modules:
        yield f"local K={k}", k, 0.0, "local"
        yield f"local K={k} + SGR", k, cfg.sgr_weight, "local"


def measure_memory(run_cfg: LocalLearningConfig) -> int | None:
    """Compiled peak bytes per device of the run's step at its batch size (fresh state; argument + output -
    alias + temp)."""
    task = launcher.make_task(run_cfg)
    mesh = make_mesh(run_cfg.run.mesh)
    with sharding_lib.activate(mesh):
        state = task.init_state(mesh)
        batch = jax.tree.map(np.asarray, next(task.data))
        batch = batches_lib.put_batch(batch, batches_lib.batch_shardings(batch, task.batch_axes(batch, 1), mesh))
        mem, _ = step_memory(task.step_fn, state, batch)
    return None if mem is None else mem.peak


def main(cfg: CompareConfig) -> list[dict]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, k, weight, executor in runs(cfg):
        slug = label.lower().replace(" ", "_").replace("=", "").replace("+", "").replace("(", "").replace(")", "")
        if (out / slug).exists():
            shutil.rmtree(out / slug)  # each comparison starts its runs afresh
        run_cfg = cfg.base.with_modules(k, weight, executor, out_dir=str(out / slug))
        run_cfg = dataclasses.replace(run_cfg, run=dataclasses.replace(run_cfg.run, progress=False, resume=False))
        summary = launcher.main(run_cfg)
        row = {"run": label, "K": k, "sgr_weight": weight, "executor": executor,
               "test_accuracy": summary.eval_metrics.get("test_accuracy"),
               "module_accuracy": [summary.eval_metrics.get(f"test_accuracy_{i}") for i in range(1, k + 1)],
               "reconciliation_cosine": [summary.train_metrics.get(f"cos_{i}") for i in range(2, k + 1)],
               "peak_bytes": measure_memory(run_cfg), "steps_per_second": summary.steps_per_second}
        rows.append(row)
        (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    bp = rows[0]["peak_bytes"]
    for row in rows:
        row["memory_ratio"] = row["peak_bytes"] / bp if bp and row["peak_bytes"] else None
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_table(rows, out / "results.md", cfg)
    plot(rows, out)
    print((out / "results.md").read_text())
    return rows


def write_table(rows: list[dict], path: Path, cfg: CompareConfig) -> None:
    lines = [f"Task: {cfg.base.arch} on {cfg.base.data.source}, {cfg.base.run.steps} steps, batch {cfg.base.batch_size}, "
             f"split {cfg.base.partition.split}, lambda = {cfg.sgr_weight} ({cfg.base.local.reconcile.distance}, "
             f"{cfg.base.local.reconcile.impl}).", "",
             "| run | K | test accuracy | per-module test accuracy | final cos(g_in, g_out) | peak MiB/device | memory / BP |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mods = ", ".join(f"{a:.3f}" for a in r["module_accuracy"] if a is not None)
        cos = ", ".join(f"{c:.2f}" for c in r["reconciliation_cosine"] if c is not None) or "-"
        mem = f"{r['peak_bytes'] / 2**20:.1f}" if r["peak_bytes"] else "-"
        ratio = f"{r['memory_ratio']:.3f}" if r.get("memory_ratio") else "-"
        lines.append(f"| {r['run']} | {r['K']} | {r['test_accuracy']:.4f} | {mods} | {cos} | {mem} | {ratio} |")
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, ylabel, name in (("test_accuracy", "test accuracy", "accuracy_vs_k.png"),
                              ("memory_ratio", "peak memory / global BP", "memory_vs_k.png")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, select, marker in (("local", lambda r: r["executor"] == "local" and r["sgr_weight"] == 0, "o"),
                                      ("local + SGR", lambda r: r["executor"] == "local" and r["sgr_weight"] > 0, "s")):
            pts = sorted((r["K"], r[key]) for r in rows if select(r) and r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=label)
        for r in rows:
            if r["executor"] != "local" and r.get(key) is not None:
                ax.axhline(r[key], linestyle="--" if r["executor"] == "bp" else ":", color="gray", label=r["run"])
        ax.set_xlabel("modules K")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def demo(out_dir: str = "runs/demo/local_learning") -> list[dict]:
    """``make demo``: digits, global BP against local learning with K = 4, without and with SGR (a few minutes)."""
    return main(CompareConfig(modules=(4,), checkpoint_bp=False, out_dir=out_dir))


if __name__ == "__main__":
    main(tyro.cli(CompareConfig))
