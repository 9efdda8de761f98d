"""Side by side: the results of several ``experiments.bfpo_eval`` run directories (one model each) as one Markdown
table and CSV, one row per (task, judge), one column per model, each score with its standard error. Tasks named
in ``--pool NAME=PREFIX`` are also pooled over every task whose name starts with PREFIX (their samples' verdicts
counted together, e.g. Do-Not-Answer over its five risk areas).

    python -m experiments.bfpo_eval_table --runs base=runs/eval/base bfpo=runs/eval/bfpo \\
        --pool donotanswer=donotanswer_ --out docs/results/bfpo_eval/table.md

Nothing is recomputed: scores come from results.json, pooled ones from samples.jsonl and the judges' credits
recorded there (a verdict of "safe" counts 1 toward a harmless rate, "refusal" 1 toward a refusal rate).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path


from bfpo.errors import BFPOError, DataError
from experiments.run import cli

CREDIT = {"harmless_rate": {"safe": 1.0}, "refusal_rate": {"refusal": 1.0}, "helpful_rate": {"helpful": 1.0}}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TableConfig:
    runs: tuple[str, ...]
    """LABEL=DIR for each evaluation run directory, in column order."""
    pool: tuple[str, ...] = ()
    """NAME=PREFIX: also report the tasks whose names start with PREFIX pooled as NAME."""
    out: str = ""
    """Where to write the Markdown table (and a .csv beside it); empty: print only."""


def _pair(item: str, what: str) -> tuple[str, str]:
    label, sep, value = item.partition("=")
    if not sep or not label or not value:
        raise DataError(f"{what} {item!r}: expected LABEL=VALUE")
    return label, value


def read_run(directory: Path) -> tuple[dict, list[dict]]:
    results_path = directory / "results.json"
    if not results_path.is_file():
        raise DataError(f"{directory}: no results.json (not a finished bfpo_eval run directory)")
    samples = [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines() if line]
    return json.loads(results_path.read_text()), samples


def pooled(results: dict, samples: list[dict], name: str, prefix: str) -> list[dict]:
    """One row per judge of the pooled tasks: the rate over all their samples, with the standard error of a
    mean of 0/1 credits (sample variance)."""
    rows = [r for r in results["results"] if r["task"].startswith(prefix) and r["kind"] == "generative"]
    out = []
    for judge in dict.fromkeys(r["judge"] for r in rows):
        first = next(r for r in rows if r["judge"] == judge)
        credit = CREDIT.get(first["metric"])
        if credit is None:
            raise DataError(f"cannot pool metric {first['metric']!r}")
        values = [credit.get(s["verdicts"][judge], 0.0) for s in samples
                  if s["task"].startswith(prefix) and judge in s.get("verdicts", {})]
        n = len(values)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else float("nan")
        out.append({**first, "task": name, "score": mean, "stderr": math.sqrt(var / n) if n > 1 else None, "n": n,
                    "unparseable": sum(s["verdicts"][judge] == "unparseable" for s in samples
                                       if s["task"].startswith(prefix) and judge in s.get("verdicts", {}))})
    return out


def table(cfg: TableConfig) -> tuple[list[str], list[tuple], list[list[dict | None]]]:
    runs = [_pair(item, "--runs") for item in cfg.runs]
    pools = [_pair(item, "--pool") for item in cfg.pool]
    per_run = []
    for _, directory in runs:
        results, samples = read_run(Path(directory))
        rows = list(results["results"]) + [r for name, prefix in pools for r in pooled(results, samples, name,
                                                                                        prefix)]
        per_run.append({(r["task"], r["judge"]): r for r in rows})
    keys = list(dict.fromkeys(k for rows in per_run for k in rows))
    return [label for label, _ in runs], keys, [[rows.get(k) for rows in per_run] for k in keys]


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    se = f" ± {r['stderr']:.3f}" if r.get("stderr") is not None else ""
    unparseable = f" ({r['unparseable']} unparseable)" if r.get("unparseable") else ""
    return f"{r['score']:.3f}{se}{unparseable}"


def main(cfg: TableConfig) -> str:
    labels, keys, cells = table(cfg)
    lines = ["| task | judge | metric | n | " + " | ".join(labels) + " |",
             "|---|---|---|---|" + "---|" * len(labels)]
    for (task, judge), row in zip(keys, cells):
        first = next(r for r in row if r is not None)
        arrow = "↑" if first["higher_is_better"] else "↓"
        lines.append(f"| {task} | `{judge}` | {first['metric']} {arrow} | {first['n']} | "
                     + " | ".join(_cell(r) for r in row) + " |")
    text = "\n".join(lines) + "\n"
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        with out.with_suffix(".csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["task", "judge", "metric", "higher_is_better", "n",
                             *[f"{label}{part}" for label in labels for part in ("", "_stderr")]])
            for (task, judge), row in zip(keys, cells):
                first = next(r for r in row if r is not None)
                writer.writerow([task, judge, first["metric"], first["higher_is_better"], first["n"],
                                 *[x for r in row for x in ((r["score"], r.get("stderr")) if r else ("", ""))]])
    print(text, end="", flush=True)
    return text


if __name__ == "__main__":
    cli(TableConfig, main, expected_errors=(BFPOError,))
