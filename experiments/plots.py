"""Plots of a run's metrics.jsonl (train and eval curves, one panel per metric)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

SKIP = {"step", "split", "time"}


def read_metrics(path: str | Path) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{split: {metric: (steps, values)}} from a metrics.jsonl file (later records of a step win, as on resume)."""
    by_step: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        for key, value in record.items():
            if key not in SKIP and isinstance(value, (int, float)):
                by_step[record["split"]][key][record["step"]] = float(value)
    return {
        split: {key: (sorted(v), [v[s] for s in sorted(v)]) for key, v in metrics.items()}
        for split, metrics in by_step.items()
    }


def plot_metrics(jsonl: str | Path, png: str | Path, keys: list[str] | None = None) -> Path | None:
    """One panel per metric with every split that logged it; returns the PNG path (None if nothing was logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not Path(jsonl).exists():
        return None
    data = read_metrics(jsonl)
    names = sorted({k for split in data.values() for k in split if k != "steps_per_second"})
    if keys is not None:
        names = [k for k in names if k in keys]
    if not names:
        return None
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for split, metrics in sorted(data.items()):
            if name in metrics:
                steps, values = metrics[name]
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=split)
        ax.set_title(name)
        ax.set_xlabel("step")
        if name.endswith("loss") and all(v > 0 for m in data.values() if name in m for v in m[name][1]):
            ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
