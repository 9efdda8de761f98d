"""The evaluation summary: every score with the judge that produced it, averaged per axis.

Axes and their direction: helpfulness (higher is better), harmlessness (higher is better), over_refusal (the
refusal rate on benign prompts; lower is better). Every score here is a rate in [0, 1]. A generative score must
come from a judge of its own axis (``JudgeAxisError`` otherwise: a refusal rate on harmful prompts entered as an
over-refusal score would be inverted). One whose own direction is opposite to its axis's enters the axis mean as
1 - value (CrowS-Pairs' pct_stereotype enters harmlessness as 1 - pct_stereotype), so

    axis mean = (1/|S_axis|) sum_{s in S_axis} (value_s if s points the axis's way else 1 - value_s).

Discriminative scores are "judged" by the evaluated model's own log-likelihoods (``LOGLIKELIHOOD_JUDGE``);
generative ones name their judge, count its unparseable verdicts and carry the sampling settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bfpo.errors import DataError
from bfpo.eval.judges import check_axis

AXIS_HIGHER_IS_BETTER = {"helpfulness": True, "harmlessness": True, "over_refusal": False}
LOGLIKELIHOOD_JUDGE = "loglikelihood-multiple-choice"


def score_entries(discriminative: Mapping[str, dict] | None = None, generative: Sequence[dict] = ()) -> list[dict]:
    """One flat entry per score: {name, kind, axis, metric, value, higher_is_better, judge, n, ...}."""
    out = []
    for name, r in (discriminative or {}).items():
        out.append({"name": name, "kind": "discriminative", "axis": r["axis"], "metric": r["metric"],
                    "value": r["score"], "higher_is_better": r["higher_is_better"], "judge": LOGLIKELIHOOD_JUDGE,
                    "n": r["n"], "acc": r["acc"], "acc_norm": r["acc_norm"]})
    for r in generative:
        if "judge_axis" not in r:
            raise DataError(f"score {r['prompt_set']!r}: no judge_axis; a generative score comes from "
                            "bfpo.eval.judge_responses, which records its judge's axis")
        check_axis(r["judge"], r["judge_axis"], r["axis"], f"score {r['prompt_set']!r}")
        out.append({"name": r["prompt_set"], "kind": "generative", "axis": r["axis"], "metric": r["metric"],
                    "value": r["value"], "higher_is_better": r["higher_is_better"], "judge": r["judge"], "n": r["n"],
                    "unparseable": r["counts"].get("unparseable", 0), "counts": r["counts"],
                    "sampling": r["sampling"]})
    for entry in out:
        if entry["axis"] not in AXIS_HIGHER_IS_BETTER:
            raise DataError(f"score {entry['name']!r}: axis {entry['axis']!r} is not one of "
                            f"{sorted(AXIS_HIGHER_IS_BETTER)}")
    return out


def summarize(discriminative: Mapping[str, dict] | None = None, generative: Sequence[dict] = ()) -> dict:
    """{"axes": {axis: {mean, higher_is_better, members: [name (metric, judge)]}}, "scores": [...]}; an axis
    without scores has mean None."""
    scores = score_entries(discriminative, generative)
    axes = {}
    for axis, higher in AXIS_HIGHER_IS_BETTER.items():
        members = [s for s in scores if s["axis"] == axis]
        oriented = [s["value"] if s["higher_is_better"] == higher else 1.0 - s["value"] for s in members]
        axes[axis] = {"mean": sum(oriented) / len(oriented) if oriented else None, "higher_is_better": higher,
                      "members": [f"{s['name']} ({s['metric']}, judge: {s['judge']})" for s in members]}
    return {"axes": axes, "scores": scores}


def format_summary(summary: dict) -> str:
    """A plain-text table: one line per score, then the axis means."""
    lines = [f"{'score':<28} {'axis':<13} {'metric':<15} {'value':>7} {'n':>6}  judge"]
    for s in summary["scores"]:
        arrow = "^" if s["higher_is_better"] else "v"
        extra = f", {s['unparseable']} unparseable" if s.get("unparseable") else ""
        lines.append(f"{s['name']:<28} {s['axis']:<13} {s['metric'] + ' ' + arrow:<15} {s['value']:>7.4f} "
                     f"{s['n']:>6}  {s['judge']}{extra}")
    for axis, a in summary["axes"].items():
        mean = "   -   " if a["mean"] is None else f"{a['mean']:.4f}"
        lines.append(f"mean {axis:<23} ({'higher' if a['higher_is_better'] else 'lower'} is better) {mean}")
    return "\n".join(lines)


def write_report(path: str | os.PathLike, summary: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
