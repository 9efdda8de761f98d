"""Global BP (K = 1), gradient-checkpointed BP and local learning with K modules, with and without SGR, on one
task, over paired seeds: final test accuracy (mean and 95% t-interval over seeds), every module's head accuracy,
the paired SGR - plain difference at each K, the reconciliation cosine cos(g_in^(k), g_out^(k-1)) at the end of
training, compiled step memory per device and the step time against checkpointed BP, and optionally a sweep of
the SGR weight lambda at one K. Before any claim it checks the precondition that makes local learning's gap
visible: module 1's head must sit well below BP. Writes ``summary.json`` (one entry per run: ``name``, ``K``,
``lambda``, ``mode``, ``accuracy_mean``, ``accuracy_ci95``, ``seeds``, ...), a markdown and a CSV table and plots
(accuracy vs K with intervals, memory vs K, accuracy and cosine vs lambda, the cosine during training).

Run: ``python -m experiments.local_learning_compare [--modules 2 4] [--seeds 0 1 2] [--sweep-weights 0.01 0.1 10]
[--sgr-weight 1.0] [--run.out-dir ...]`` (default task: the ``digits`` preset, CPU-sized). ``demo()`` is the small
version ``make demo`` runs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Annotated

import jax
import numpy as np
import tyro

from experiments.tasks import local_learning as local_task
from experiments.configs.local_learning import LocalLearningConfig
from experiments.plots import read_metrics
from experiments.run import cli
from experiments.run_dir import standard_json
from experiments.seed_stats import mean_ci95, paired_difference
from local_learning.errors import ConfigError
from local_learning.step_memory import step_memory
from runtime import batches as batches_lib
from runtime import sharding as sharding_lib
from runtime.mesh import MeshConfig, make_mesh


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareConfig:
    base: LocalLearningConfig = LocalLearningConfig.digits()
    modules: tuple[int, ...] = (2, 4, 8)
    sgr_weight: float = 1.0
    seeds: tuple[int, ...] = (0,)
    """Each run is repeated per seed; a seed sets the initialisation, the train/test split and the batch order."""
    sweep_weights: tuple[float, ...] = ()
    """Extra SGR weights lambda run at K = ``sweep_modules`` (0 and ``sgr_weight`` come from the main runs)."""
    sweep_modules: int = 4
    sweep_seeds: tuple[int, ...] = ()
    """Seeds of the sweep-only runs (empty: ``seeds``)."""
    checkpoint_bp: bool = True
    """Also run gradient-checkpointed BP."""
    memory: bool = True
    """Measure the compiled step memory of every run (once per run, seed-independent)."""
    reuse: bool = False
    """Take a (run, seed) from its directory's summary.json when it completed ``base.run.steps`` steps, instead of
    training it again (to finish an interrupted comparison or extend it with seeds or lambdas)."""
    out_dir: Annotated[str, tyro.conf.arg(name="run.out-dir")] = "runs/local_learning/compare"
    """``--run.out-dir``, as every launcher takes it: every run's directory, the table and the plots."""
    mesh: Annotated[MeshConfig, tyro.conf.arg(name="run.mesh")] = MeshConfig()
    """``--run.mesh.*``: the mesh of every run (it replaces ``base.run.mesh``)."""

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"CompareConfig.seeds={self.seeds}: must be non-empty and distinct")
        if any(k < 2 for k in self.modules):
            raise ConfigError(f"CompareConfig.modules={self.modules}: local runs need K >= 2 (K = 1 is BP)")
        if not self.sgr_weight > 0 or any(not w >= 0 for w in self.sweep_weights):
            raise ConfigError("CompareConfig.sgr_weight must be > 0 and every sweep_weights entry >= 0")
        if len(set(self.sweep_seeds)) != len(self.sweep_seeds):
            raise ConfigError(f"CompareConfig.sweep_seeds={self.sweep_seeds}: must be distinct")
        if self.sweep_weights and self.sweep_modules < 2:
            raise ConfigError(f"CompareConfig.sweep_modules={self.sweep_modules}: must be >= 2")


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    k: int
    weight: float
    executor: str

    @property
    def slug(self) -> str:
        keep = "".join(c if c.isalnum() or c in "._" else "_" for c in self.label.lower())
        return "_".join(part for part in keep.split("_") if part)


def variants(cfg: CompareConfig) -> list[Variant]:
    """Every configuration of the comparison, baselines first, then K ascending, then the lambda sweep."""
    out = [Variant("BP", 1, 0.0, "bp")]
    if cfg.checkpoint_bp:
        out.append(Variant("BP (checkpointed)", 1, 0.0, "bp_checkpoint"))
    ks = sorted(set(cfg.modules) | ({cfg.sweep_modules} if cfg.sweep_weights else set()))
    for k in ks:
        out += [Variant(f"local K={k}", k, 0.0, "local"), Variant(f"local K={k} + SGR", k, cfg.sgr_weight, "local")]
    for w in sorted(set(cfg.sweep_weights) - {0.0, cfg.sgr_weight}):
        out.append(Variant(f"local K={cfg.sweep_modules} + SGR lambda={w:g}", cfg.sweep_modules, w, "local"))
    return out


def seeded(base: LocalLearningConfig, seed: int, mesh: MeshConfig) -> LocalLearningConfig:
    run = dataclasses.replace(base.run, seed=seed, mesh=mesh)
    return dataclasses.replace(base, run=run, data=dataclasses.replace(base.data, seed=seed))


def measure_memory(run_cfg: LocalLearningConfig) -> int | None:
    """Compiled peak bytes per device of the run's step at its batch size (fresh state; argument + output -
    alias + temp)."""
    task = local_task.make_task(run_cfg)
    mesh = make_mesh(run_cfg.run.mesh)
    with sharding_lib.activate(mesh):
        state = task.init_state(mesh)
        batch = jax.tree.map(np.asarray, next(task.data))
        batch = batches_lib.put_batch(batch, batches_lib.batch_shardings(batch, task.batch_axes(batch, 1), mesh))
        mem, _ = step_memory(task.step_fn, state, batch)
    return None if mem is None else mem.peak


# Settings that change where a run's files go or how it reports, not what it computes.
_NOT_COMPARED = {"run.out_dir", "run.progress", "run.resume", "run.tensorboard", "run.plot", "run.async_checkpoint",
                 "run.keep_checkpoints", "run.checkpoint_every", "run.log_every", "eval_batch_size"}


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(saved: dict, expected: dict) -> list[str]:
    """Settings present in both whose values differ (settings added since the run was made are not compared)."""
    a, b = _flat(saved), _flat(expected)
    return sorted(k for k in set(a) & set(b) if k not in _NOT_COMPARED and a[k] != b[k])


def _finished_summary(run_dir: Path, run_cfg: LocalLearningConfig) -> dict | None:
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    if summary.get("stopped") != "completed" or summary.get("steps_done") != run_cfg.run.steps:
        return None
    config_path = run_dir / "config.json"
    if not config_path.exists():
        return None
    expected = json.loads(standard_json(dataclasses.asdict(run_cfg)))
    diff = config_differences(json.loads(config_path.read_text()), expected)
    if diff:
        print(f"{run_dir}: not reused, made with other settings ({', '.join(diff[:5])})", flush=True)
        return None
    return summary


def run_one(cfg: CompareConfig, v: Variant, seed: int, out: Path) -> dict:
    """Train one (variant, seed) afresh (or reuse its finished run) and return its per-seed row."""
    run_dir = out / v.slug / f"seed{seed}"
    run_cfg = seeded(cfg.base, seed, cfg.mesh).with_modules(v.k, v.weight, v.executor, out_dir=str(run_dir))
    run_cfg = dataclasses.replace(run_cfg, run=dataclasses.replace(run_cfg.run, progress=False, resume=False))
    summary = _finished_summary(run_dir, run_cfg) if cfg.reuse else None
    if summary is None:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # each comparison starts its runs afresh
        summary = dataclasses.asdict(local_task.run(run_cfg))
    train, evals = summary["train_metrics"], summary["eval_metrics"]
    return {"run": v.label, "K": v.k, "sgr_weight": v.weight, "executor": v.executor, "seed": seed,
            "test_accuracy": evals.get("test_accuracy"),
            "module_accuracy": [evals.get(f"test_accuracy_{i}") for i in range(1, v.k + 1)],
            "reconciliation_cosine": [train.get(f"cos_{i}") for i in range(2, v.k + 1)],
            # The last logging window's rate: compilation excluded.
            "steps_per_second": train.get("steps_per_second", summary["steps_per_second"]),
            "metrics_jsonl": str(run_dir / "metrics.jsonl")}


def _mean_std(values) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def aggregate(v: Variant, seed_rows: list[dict], peak_bytes: int | None) -> dict:
    """One row per variant: means with 95% t-intervals (and sample standard deviations) over seeds."""
    acc, acc_std = _mean_std(r["test_accuracy"] for r in seed_rows)
    _, acc_ci = mean_ci95([r["test_accuracy"] for r in seed_rows])
    mods = [mean_ci95([r["module_accuracy"][i] for r in seed_rows]) for i in range(v.k)]
    cos = [_mean_std(r["reconciliation_cosine"][i] for r in seed_rows)[0] for i in range(v.k - 1)]
    # The mean over boundaries per seed first, so that its spread is over seeds.
    per_seed_cos = [float(np.mean(r["reconciliation_cosine"])) for r in seed_rows
                    if r["reconciliation_cosine"] and None not in r["reconciliation_cosine"]]
    cos_mean, cos_std = _mean_std(per_seed_cos)
    return {"run": v.label, "K": v.k, "sgr_weight": v.weight, "executor": v.executor,
            "seeds": [r["seed"] for r in seed_rows], "test_accuracy": acc, "test_accuracy_std": acc_std,
            "test_accuracy_ci95": acc_ci, "test_accuracy_per_seed": [r["test_accuracy"] for r in seed_rows],
            "module_accuracy": [m for m, _ in mods], "module_accuracy_ci95": [c for _, c in mods],
            "reconciliation_cosine": cos, "mean_cosine": cos_mean, "mean_cosine_std": cos_std,
            "peak_bytes": peak_bytes, "steps_per_second": _mean_std(r["steps_per_second"] for r in seed_rows)[0]}


def sgr_gains(rows: list[dict]) -> dict[int, tuple[float | None, float | None, int]]:
    """Per K: the paired difference (SGR - plain) of test accuracy over the seeds both ran, with its 95% interval."""
    out = {}
    for r in rows:
        if r["executor"] != "local" or r["sgr_weight"] == 0 or "lambda=" in r["run"]:
            continue
        plain = next((p for p in rows if p["executor"] == "local" and p["K"] == r["K"] and p["sgr_weight"] == 0),
                     None)
        if plain is not None:
            out[r["K"]] = paired_difference(dict(zip(r["seeds"], r["test_accuracy_per_seed"])),
                                            dict(zip(plain["seeds"], plain["test_accuracy_per_seed"])))
    return out


def precondition(rows: list[dict], margin: float = 0.05) -> dict | None:
    """Whether local learning's gap can show on this task: at the largest K, module 1's head (plain local) must sit
    at least ``margin`` below BP's accuracy. None without a plain local run."""
    bp = next((r for r in rows if r["executor"] == "bp"), None)
    local = [r for r in rows if r["executor"] == "local" and r["sgr_weight"] == 0]
    if bp is None or not local or bp["test_accuracy"] is None:
        return None
    deepest = max(local, key=lambda r: r["K"])
    first = deepest["module_accuracy"][0]
    return {"K": deepest["K"], "module1_accuracy": first, "bp_accuracy": bp["test_accuracy"],
            "gap": bp["test_accuracy"] - first, "margin": margin, "met": bp["test_accuracy"] - first >= margin}


SUMMARY_MODES = {"bp": "bp", "bp_checkpoint": "bp_checkpoint", "local": "local", "local_scan": "local"}


def summary_entries(rows: list[dict], cfg: CompareConfig) -> list[dict]:
    """``summary.json``: one entry per run (``name``, ``K``, ``lambda``, ``mode``, ``accuracy_mean``,
    ``accuracy_ci95``, ``seeds``, and the per-seed values, head accuracies, memory and speed behind them)."""
    gains = sgr_gains(rows)
    out = []
    for r in rows:
        gain = gains.get(r["K"]) if r["executor"] == "local" and r["sgr_weight"] == cfg.sgr_weight else None
        out.append({"name": r["run"], "K": r["K"], "lambda": r["sgr_weight"], "mode": SUMMARY_MODES[r["executor"]],
                    "accuracy_mean": r["test_accuracy"], "accuracy_ci95": r["test_accuracy_ci95"],
                    "seeds": r["seeds"], "accuracy_per_seed": r["test_accuracy_per_seed"],
                    "module_accuracy": r["module_accuracy"], "module_accuracy_ci95": r["module_accuracy_ci95"],
                    "sgr_minus_plain": None if gain is None else {"mean": gain[0], "ci95": gain[1], "pairs": gain[2]},
                    "mean_cosine": r["mean_cosine"], "peak_bytes": r["peak_bytes"], "memory_ratio": r.get("memory_ratio"),
                    "steps_per_second": r["steps_per_second"], "step_time_ratio": r.get("step_time_ratio")})
    return out


def main(cfg: CompareConfig) -> list[dict]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_seed, rows = [], []
    sweep_only = {f"local K={cfg.sweep_modules} + SGR lambda={w:g}" for w in cfg.sweep_weights}
    for v in variants(cfg):
        seeds = cfg.sweep_seeds if v.label in sweep_only and cfg.sweep_seeds else cfg.seeds
        seed_rows = [run_one(cfg, v, s, out) for s in seeds]
        per_seed += seed_rows
        peak = measure_memory(seeded(cfg.base, cfg.base.run.seed, cfg.mesh).with_modules(v.k, v.weight, v.executor)) \
            if cfg.memory else None
        rows.append(aggregate(v, seed_rows, peak))
        (out / "runs.json").write_text(standard_json(per_seed, indent=2) + "\n")
    bp = rows[0]["peak_bytes"]
    checkpointed = next((r for r in rows if r["executor"] == "bp_checkpoint"), None)
    for row in rows:
        row["memory_ratio"] = row["peak_bytes"] / bp if bp and row["peak_bytes"] else None
        # Step time relative to checkpointed BP, the memory-saving competitor (seconds per step ratio).
        row["step_time_ratio"] = (checkpointed["steps_per_second"] / row["steps_per_second"]
                                  if checkpointed and checkpointed["steps_per_second"] and row["steps_per_second"]
                                  else None)
    (out / "results.json").write_text(standard_json(rows, indent=2) + "\n")
    (out / "summary.json").write_text(standard_json(summary_entries(rows, cfg), indent=2) + "\n")
    write_table(rows, out / "results.md", cfg)
    write_csv(rows, out / "results.csv")
    plot(rows, out)
    plot_module_accuracy(rows, out)
    if cfg.sweep_weights:
        plot_sweep(rows, out, cfg)
    plot_cosine_curves(per_seed, out, cfg)
    print((out / "results.md").read_text())
    return rows


def _pm(mean, std, fmt="{:.4f}") -> str:
    if mean is None:
        return "-"
    return fmt.format(mean) + (f" ± {fmt.format(std)}" if std else "")


def sweep_rows(rows: list[dict], cfg: CompareConfig) -> list[dict]:
    """The local runs at K = ``sweep_modules``, by lambda."""
    return sorted((r for r in rows if r["executor"] == "local" and r["K"] == cfg.sweep_modules),
                  key=lambda r: r["sgr_weight"])


def write_table(rows: list[dict], path: Path, cfg: CompareConfig) -> None:
    b = cfg.base
    rc = b.local.reconcile
    lines = [f"Task: {b.arch} on {b.data.source} ({b.data.image_size}x{b.data.image_size}), {b.head.kind} heads, "
             f"{b.run.steps} steps, batch {b.batch_size}, split {b.partition.split}, lambda = {cfg.sgr_weight} "
             f"({rc.distance}, {rc.impl}{', remat' if rc.remat else ''}); seeds {list(cfg.seeds)}: mean ± 95% "
             "t-interval over seeds (paired: every run uses the same seeds).", ""]
    pre = precondition(rows)
    if pre is not None:
        verdict = "met" if pre["met"] else "NOT met: local learning's gap cannot show on this task"
        lines += [f"Precondition ({verdict}): at K = {pre['K']} module 1's head reaches {pre['module1_accuracy']:.4f} "
                  f"against BP's {pre['bp_accuracy']:.4f} (gap {pre['gap']:.4f}; required >= {pre['margin']:.2f}).",
                  ""]
    lines += ["| run | K | lambda | test accuracy | per-module test accuracy | final cos(g_in, g_out) per boundary | "
              "peak MiB/device | memory / BP | steps/s | step time / checkpointed BP |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    sweep_only = {f"local K={cfg.sweep_modules} + SGR lambda={w:g}" for w in cfg.sweep_weights}
    for r in rows:
        if r["run"] in sweep_only:
            continue
        mods = ", ".join(f"{a:.3f}" for a in r["module_accuracy"] if a is not None)
        cos = ", ".join(f"{c:.2f}" for c in r["reconciliation_cosine"] if c is not None) or "-"
        mem = f"{r['peak_bytes'] / 2**20:.1f}" if r["peak_bytes"] else "-"
        ratio = f"{r['memory_ratio']:.3f}" if r.get("memory_ratio") else "-"
        time_ratio = f"{r['step_time_ratio']:.2f}" if r.get("step_time_ratio") else "-"
        sps = f"{r['steps_per_second']:.2f}" if r["steps_per_second"] else "-"
        lines.append(f"| {r['run']} | {r['K']} | {r['sgr_weight']:g} | "
                     f"{_pm(r['test_accuracy'], r['test_accuracy_ci95'])} | {mods} | {cos} | {mem} | {ratio} | {sps} | "
                     f"{time_ratio} |")
    gains = sgr_gains(rows)
    if gains:
        lines += ["", "SGR minus plain local, paired over seeds (test accuracy):", "",
                  "| K | mean difference | 95% interval | pairs |", "|---|---|---|---|"]
        for k, (mean, ci, n) in sorted(gains.items()):
            interval = f"[{mean - ci:+.4f}, {mean + ci:+.4f}]" if ci is not None else "-"
            lines.append(f"| {k} | {mean:+.4f} | {interval} | {n} |" if mean is not None else f"| {k} | - | - | 0 |")
    if cfg.sweep_weights:
        extra = f" (lambda not in {{0, {cfg.sgr_weight:g}}}: seeds {list(cfg.sweep_seeds)})" if cfg.sweep_seeds else ""
        lines += ["", f"SGR weight sweep at K = {cfg.sweep_modules}{extra}:", "",
                  "| lambda | test accuracy | per-seed test accuracy | mean final cos(g_in, g_out) | peak MiB/device |",
                  "|---|---|---|---|---|"]
        for r in sweep_rows(rows, cfg):
            seeds = ", ".join(f"{a:.4f}" for a in r["test_accuracy_per_seed"])
            mem = f"{r['peak_bytes'] / 2**20:.1f}" if r["peak_bytes"] else "-"
            lines.append(f"| {r['sgr_weight']:g} | {_pm(r['test_accuracy'], r['test_accuracy_ci95'])} | {seeds} | "
                         f"{_pm(r['mean_cosine'], r['mean_cosine_std'], '{:.3f}')} | {mem} |")
    path.write_text("\n".join(lines) + "\n")


CSV_FIELDS = ("run", "K", "sgr_weight", "executor", "seeds", "test_accuracy", "test_accuracy_ci95",
              "test_accuracy_std", "test_accuracy_per_seed", "module_accuracy", "reconciliation_cosine", "mean_cosine",
              "mean_cosine_std", "peak_bytes", "memory_ratio", "steps_per_second", "step_time_ratio")


def write_csv(rows: list[dict], path: Path) -> None:
    """One line per run; list-valued fields are joined with ';'."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([";".join("" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)
                                      for x in r[key]) if isinstance(r.get(key), list)
                             else "" if r.get(key) is None else r[key] for key in CSV_FIELDS])


def _save(fig, ax, xlabel: str, ylabel: str, path: Path, legend_size=None) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: list[dict], out: Path) -> None:
    """accuracy_vs_k.png (error bars: 95% t-intervals over seeds; BP drawn at K = 1 and as a line) and
    memory_vs_k.png."""
    plt = _pyplot()
    main_rows = [r for r in rows if "lambda=" not in r["run"]]
    for key, ylabel, name in (("test_accuracy", "test accuracy", "accuracy_vs_k.png"),
                              ("memory_ratio", "peak memory / global BP", "memory_vs_k.png"),
                              ("step_time_ratio", "step time / checkpointed BP", "step_time_vs_k.png")):
        if all(r.get(key) is None for r in main_rows):
            continue  # e.g. memory not measured
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, sgr, marker in (("local", False, "o"), ("local + SGR", True, "s")):
            pts = sorted((r["K"], r[key], r.get(f"{key}_ci95") or 0.0) for r in main_rows
                         if r["executor"] == "local" and (r["sgr_weight"] > 0) == sgr and r.get(key) is not None)
            if pts:
                ks, ys, es = zip(*pts)
                ax.errorbar(ks, ys, yerr=es, marker=marker, capsize=3, label=label)
        for r in main_rows:
            if r["executor"] != "local" and r.get(key) is not None:
                ax.axhline(r[key], linestyle="--" if r["executor"] == "bp" else ":", color="gray", label=r["run"])
                if key == "test_accuracy" and r.get("test_accuracy_ci95"):
                    ax.axhspan(r[key] - r["test_accuracy_ci95"], r[key] + r["test_accuracy_ci95"], color="gray",
                               alpha=0.12)
                if r["executor"] == "bp":
                    ax.errorbar([1], [r[key]], yerr=[r.get(f"{key}_ci95") or 0.0], marker="D", color="k", capsize=3)
        ks = sorted({r["K"] for r in main_rows if r["executor"] == "local"} | {1})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("modules K")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def plot_module_accuracy(rows: list[dict], out: Path) -> None:
    """module_accuracy.png: every head's test accuracy at the largest K, plain local and with SGR (95% intervals),
    against BP's."""
    local = [r for r in rows if r["executor"] == "local" and "lambda=" not in r["run"]]
    if not local:
        return
    k = max(r["K"] for r in local)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for r in (r for r in local if r["K"] == k):
        ci = [c or 0.0 for c in r.get("module_accuracy_ci95") or [0.0] * k]
        ax.errorbar(range(1, k + 1), r["module_accuracy"], yerr=ci, marker="o", capsize=2, label=r["run"])
    bp = next((r for r in rows if r["executor"] == "bp"), None)
    if bp is not None and bp["test_accuracy"] is not None:
        ax.axhline(bp["test_accuracy"], ls="--", color="gray", label="BP")
    _save(fig, ax, "module k (its head's accuracy)", "test accuracy", out / "module_accuracy.png", 7)
    plt.close(fig)


def plot_sweep(rows: list[dict], out: Path, cfg: CompareConfig) -> None:
    """sgr_sweep.png: test accuracy and mean final reconciliation cosine vs lambda (symlog axis, lambda = 0 shown)."""
    plt = _pyplot()
    pts = sweep_rows(rows, cfg)
    lam = [r["sgr_weight"] for r in pts]
    positive = [w for w in lam if w > 0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, ylabel in ((axes[0], "test_accuracy", "test accuracy"),
                            (axes[1], "mean_cosine", "mean final cos(g_in, g_out)")):
        ys = [r[key] for r in pts]
        es = [r.get(f"{key}_ci95") or r.get(f"{key}_std") or 0.0 for r in pts]
        ax.errorbar(lam, ys, yerr=es, marker="o", capsize=3)
        if positive:
            ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xlabel("SGR weight lambda")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(f"K = {cfg.sweep_modules}, mean ± 95% interval (accuracy) or std (cosine) over seeds")
    fig.tight_layout()
    fig.savefig(out / "sgr_sweep.png", dpi=110)
    plt.close(fig)


def cosine_curve(jsonl_paths: list[str], k: int) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """(steps, mean, std) over runs of the per-step mean over boundaries of the logged cos_2..cos_K."""
    curves = []
    for path in jsonl_paths:
        train = read_metrics(path).get("train", {})
        series = [train[f"cos_{i}"] for i in range(2, k + 1) if f"cos_{i}" in train]
        if not series:
            return None
        curves.append((series[0][0], np.mean([s[1] for s in series], axis=0)))
    steps = curves[0][0]
    if any(c[0] != steps for c in curves):
        return None
    stack = np.stack([c[1] for c in curves])
    return steps, stack.mean(0), stack.std(0, ddof=1) if len(stack) > 1 else np.zeros(len(steps))


def plot_cosine_curves(per_seed: list[dict], out: Path, cfg: CompareConfig) -> None:
    """cosine_during_training.png: the reconciliation cosine during training, per local run (mean over seeds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    labels = dict.fromkeys(r["run"] for r in per_seed if r["executor"] == "local")
    drawn = False
    for label in labels:
        runs = [r for r in per_seed if r["run"] == label]
        curve = cosine_curve([r["metrics_jsonl"] for r in runs], runs[0]["K"])
        if curve is None:
            continue
        steps, mean, std = curve
        line, = ax.plot(steps, mean, label=f"{label} (lambda={runs[0]['sgr_weight']:g})" if "lambda=" not in label
                        else label)
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        drawn = True
    if drawn:
        _save(fig, ax, "step", "mean cos(g_in^(k), g_out^(k-1))", out / "cosine_during_training.png", 7)
    plt.close(fig)


def demo(out_dir: str = "runs/demo/local_learning") -> list[dict]:
    """``make demo``: digits, global BP against local learning with K = 4, without and with SGR, 200 steps each
    (about two minutes; the full preset trains 300)."""
    base = LocalLearningConfig.digits()
    base = dataclasses.replace(base, run=dataclasses.replace(base.run, steps=200))
    return main(CompareConfig(base=base, modules=(4,), checkpoint_bp=False, out_dir=out_dir))


if __name__ == "__main__":
    cli(CompareConfig, main, expected_errors=(ConfigError,))
