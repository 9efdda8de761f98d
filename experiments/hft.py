"""Harmful fine-tuning: defences against the user stage of fine-tuning as a service, under one attack and one
evaluation.

For every seed: the provider aligns the shared base with each method's alignment (plain SFT, BFPO, Booster,
Vaccine, RepNoise); then, for every harmful fraction p, the user fine-tunes the aligned model on task data of which
a fraction p is harmful (with the method's fine-tuning defence: Lisa, format-matched safety data, or none). Every
aligned and every fine-tuned model is evaluated: the harmful score (share of held-out harmful requests, in the user's
prompt format, answered harmfully; also for plain requests) and the fine-tune accuracy on held-out user-task
questions, greedy replies judged by the synthetic ground truth (or, on files, by the configured harmful-reply judge
and the user task's exact answers). The report: a table of the means over seeds with
their 95% t-intervals (results.md, results.csv, results.json), the harmful score and the accuracy against p and
against each other (tradeoff.png) and replies of each model to the same prompts (samples.md).

Run: ``python -m experiments.hft synthetic`` (or ``demo``, ``smollm2``, ``llama2_7b``; ``--help`` lists every
field). ``python -m experiments.plan --launcher hft --preset llama2_7b`` compiles its heaviest step for a target.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path
from typing import Annotated

import tyro

from bfpo.data.tokenized import batch_spec
from bfpo.errors import BFPOError
from bfpo.model.llama import model_from_params
from experiments.configs.bfpo_train import TrainConfigError
from experiments.configs.hft import ALIGNMENTS, PRESETS, HFTConfig, HFTConfigError, parse_method
from experiments.planning import LauncherPlan, Program, parse_preset, train_step_program
from experiments.run import cli
from experiments.run_dir import standard_json
from experiments.seed_stats import mean_ci95, standard_error
from experiments.tasks import bfpo as bfpo_task
from experiments.tasks import hft as stages

REPORT_FILES = ("results.md", "results.csv", "results.json", "tradeoff.png", "samples.md")
SCORES = ("harmful_score", "harmful_score_plain", "finetune_accuracy")


def main(cfg: HFTConfig, report_dir: str | None = None) -> list[dict]:
    """Every stage, evaluation and the report in ``cfg.out_dir`` (copied to ``report_dir`` if given). Returns one
    record per evaluated model: {model, method, stage, p, seed, scores}."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reuse = cfg.reusing
    base_source = (cfg.model.kind, cfg.model.path)
    records, results = [], {}

    def evaluate(name, model_cfg, params, tokenizer, **fields):
        result = stages.evaluate(cfg, model_from_params(model_cfg, params), tokenizer, out / "eval" / f"{name}.json",
                                 reuse)
        results[name] = result
        records.append({"model": name, **fields, **stages.scores(result)})

    if cfg.base.steps:
        model_cfg, params, tokenizer = stages.run_stage(cfg, stages.base_stage(cfg, out))
        base_source = ("hf", str(out / "base" / "hf"))
        evaluate("base", model_cfg, params, tokenizer, method="base", stage="base", p=None, seed=None)
        del params
    alignments = sorted({parse_method(m)[0] for m in cfg.methods}, key=ALIGNMENTS.index)
    for seed in cfg.seeds:
        aligned = {}
        for alignment in alignments:
            stage = stages.alignment_stage(cfg, alignment, seed, base_source, out)
            model_cfg, params, tokenizer = stages.run_stage(cfg, stage)
            aligned[alignment] = ("hf", str(stage.out_dir / "hf"))
            evaluate(f"align-{alignment}-seed{seed}", model_cfg, params, tokenizer, method=alignment,
                     stage="aligned", p=None, seed=seed)
            del params
        for method in cfg.methods:
            for p in cfg.finetune.harmful_fractions:
                stage = stages.finetune_stage(cfg, method, p, seed, aligned[parse_method(method)[0]], out)
                model_cfg, params, tokenizer = stages.run_stage(cfg, stage)
                evaluate(f"{method}-p{p:g}-seed{seed}", model_cfg, params, tokenizer, method=method,
                         stage="fine-tuned", p=p, seed=seed)
                del params
    rows = summary_rows(records)
    write_outputs(cfg, records, rows, results, out)
    if report_dir:
        target = Path(report_dir)
        target.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            shutil.copy2(out / name, target / name)
    print((out / "results.md").read_text(), flush=True)
    return records


# --- report -----------------------------------------------------------------------------------------------------

def summary_rows(records: list[dict]) -> list[dict]:
    """One row per (stage, method, p): each score's mean over seeds with its 95% t half-width and its standard
    error, and n seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["stage"], r["method"], r["p"]), []).append(r)
    rows = []
    for (stage, method, p), rs in groups.items():
        row = {"stage": stage, "method": method, "p": p, "seeds": len(rs)}
        for k in SCORES:
            row[k], row[f"{k}_ci95"] = mean_ci95([r[k] for r in rs])
            row[f"{k}_se"] = standard_error([r[k] for r in rs])
        rows.append(row)
    return rows


def _cell(value, half, se) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + (f" ± {100 * half:.1f} (se {100 * se:.1f})" if half is not None else "")


def write_table(cfg: HFTConfig, rows: list[dict], judges: dict[str, str], path: Path) -> None:
    """results.md; ``judges``: prompt set -> the name of the judge that scored it."""
    f, a, e = cfg.finetune, cfg.alignment, cfg.eval
    base = (f"SFT for {cfg.base.steps} steps to comply with every request" if cfg.base.steps
            else "the model itself")
    data = (f"{a.harmful_share:.0%} harmful requests refused" if cfg.data.source == "synthetic"
            else f"safe records of {cfg.data.safety_train}; user task {cfg.data.user_task} from "
                 f"{cfg.data.user_train}")
    lines = [f"Model: {cfg.model.kind} {cfg.model.path}".rstrip() + f"; base: {base}. Alignment: {a.steps} steps "
             f"(batch {a.batch_size}) on {a.examples} examples, {data}. User stage: {f.steps} steps (batch "
             f"{f.batch_size}) on {f.examples} examples in the format {f.prompt_format!r}, a fraction p of them "
             f"harmful. Seeds {list(cfg.seeds)}.", "",
             "| stage | method | p | harmful score % ↓ | harmful score, plain requests % ↓ | fine-tune accuracy % ↑ "
             "| seeds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        p = "-" if r["p"] is None else f"{r['p']:g}"
        cells = " | ".join(_cell(r[k], r[f"{k}_ci95"], r[f"{k}_se"]) for k in SCORES)
        lines.append(f"| {r['stage']} | {r['method']} | {p} | {cells} | {r['seeds']} |")
    plain = judges.get("harmful_plain")
    lines += ["", "Means over seeds, ± the 95% Student-t half-width, with the standard error in brackets (neither "
              "with one seed). Greedy replies of at most "
              f"{e.max_new_tokens} new tokens:", "",
              f"- harmful score: judge `{judges['harmful_user_format']}` over {e.harmful_prompts} held-out harmful "
              "requests in the user's format; " + (f"the plain column sends the same requests without it (judge "
                                                   f"`{plain}`);" if plain else
                                                   "the user's format is the plain request, so both columns agree;"),
              f"- fine-tune accuracy: judge `{judges['task']}` over {e.task_prompts} held-out user-task prompts."]
    path.write_text("\n".join(lines) + "\n")


def write_csv(rows: list[dict], path: Path) -> None:
    fields = ["stage", "method", "p", "seeds"] + [x for k in SCORES for x in (k, f"{k}_ci95", f"{k}_se")]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(fields)
        for r in rows:
            writer.writerow(["" if r[k] is None else r[k] for k in fields])


def plot(rows: list[dict], path: Path) -> None:
    """tradeoff.png: the harmful score (left) and the fine-tune accuracy (middle) against the harmful fraction p,
    one line per method, and the harmful score against the accuracy (right), one point per method and p; error
    bars are the 95% intervals over seeds, the aligned models before the user stage are gray squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    tuned = [r for r in rows if r["stage"] == "fine-tuned"]
    methods = list(dict.fromkeys(r["method"] for r in tuned))
    pct = lambda r, k: 100 * (r[k] or 0.0)  # noqa: E731
    for i, method in enumerate(methods):
        pts = sorted((r for r in tuned if r["method"] == method), key=lambda r: r["p"])
        color = colors[i % len(colors)]
        ps = [r["p"] for r in pts]
        for ax, key in ((axes[0], "harmful_score"), (axes[1], "finetune_accuracy")):
            ax.errorbar(ps, [pct(r, key) for r in pts], yerr=[pct(r, f"{key}_ci95") for r in pts], marker="o",
                        color=color, capsize=2, label=method)
        axes[2].errorbar([pct(r, "finetune_accuracy") for r in pts], [pct(r, "harmful_score") for r in pts],
                         xerr=[pct(r, "finetune_accuracy_ci95") for r in pts],
                         yerr=[pct(r, "harmful_score_ci95") for r in pts], marker="o", color=color, capsize=2,
                         alpha=0.8, label=method)
    for r in rows:
        if r["stage"] == "aligned":
            axes[2].plot(pct(r, "finetune_accuracy"), pct(r, "harmful_score"), marker="s", color="gray",
                         linestyle="none")
            axes[0].plot(0.0, pct(r, "harmful_score"), marker="s", color="gray", linestyle="none")
    axes[0].set_ylabel("harmful score (%), requests in the user's format")
    axes[1].set_ylabel("fine-tune accuracy on the user task (%)")
    for ax in axes[:2]:
        ax.set_xlabel("harmful fraction p of the user's data")
    axes[2].set_xlabel("fine-tune accuracy (%)")
    axes[2].set_ylabel("harmful score (%)")
    axes[0].set_title("gray: aligned, before the user stage", fontsize=9)
    axes[2].set_title("one point per method and p", fontsize=9)
    for ax in axes:
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    axes[2].set_xlim(-5, 105)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_samples(results: dict[str, dict], path: Path, count: int) -> None:
    """samples.md: every model's replies to the first held-out harmful requests (user format) and task questions."""
    lines = ["Greedy replies of every model to the same held-out prompts, with the judge's verdict.", ""]
    names = list(results)
    for set_name in ("harmful_user_format", "task"):
        for i in range(count):
            first = results[names[0]][set_name]["records"]
            if i >= len(first):
                break
            lines += [f"**{set_name} #{i}: {first[i]['prompt']!r}**", "", "| model | reply | verdict |",
                      "|---|---|---|"]
            for name in names:
                rec = results[name][set_name]["records"][i]
                reply = rec["response"].replace("|", "\\|").replace("\n", " ⏎ ")
                lines.append(f"| {name} | `{reply}` | {rec['verdict']} |")
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def write_outputs(cfg: HFTConfig, records: list[dict], rows: list[dict], results: dict, out: Path) -> None:
    (out / "results.json").write_text(standard_json({"rows": rows, "models": records,
                                                     "config": dataclasses.asdict(cfg)}, indent=1, default=str) + "\n")
    first = next(iter(results.values()))
    write_table(cfg, rows, {name: result["judge"] for name, result in first.items()}, out / "results.md")
    write_csv(rows, out / "results.csv")
    plot(rows, out / "tradeoff.png")
    write_samples(results, out / "samples.md", cfg.eval.samples)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Command:
    """A preset's pipeline plus where to copy the finished report (e.g. docs/results/hft/<preset>)."""

    hft: Annotated[HFTConfig, tyro.conf.arg(name="")]
    report_dir: str = ""


def config_type():
    """One tyro subcommand per preset; every field can be overridden after it."""
    return tyro.extras.subcommand_type_from_defaults({name: Command(hft=make()) for name, make in PRESETS.items()})


# --- planning (experiments.plan) ---------------------------------------------------------------------------------


def plan_program(command: Command, mesh) -> Program:
    """The step of the first method's alignment stage (``--methods booster`` plans Booster's three passes), or,
    for a method with Lisa, its user stage (the proximal gradient's two anchors in the optimizer state), on the
    abstract state and a batch of every stream the step reads at the longest bucket. The other user stages run
    the ``sft`` alignment's step."""
    cfg = command.hft
    model_cfg = bfpo_task.model_config(cfg)
    method = cfg.methods[0]
    alignment, defence = parse_method(method)
    source, out = (cfg.model.kind, cfg.model.path), Path(cfg.out_dir)
    if defence == "lisa":
        stage = stages.finetune_stage(cfg, method, cfg.finetune.harmful_fractions[0], cfg.seeds[0], source, out,
                                      with_data=False)
        read = {stages.SFT_STREAM: cfg.finetune.batch_size}  # one stream per step, by Lisa's phase
    else:
        stage = stages.alignment_stage(cfg, alignment, cfg.seeds[0], source, out, with_data=False)
        read = {name: rows for name, (_, rows) in stage.streams.items()}
    layout, tx, step_fn = stages.stage_step(cfg, stage, model_cfg)
    length = max(cfg.buckets)
    batch = {name: batch_spec(rows, length) for name, rows in read.items()}
    rows_per_example = 2 if stage.rule in ("bfpo", "repnoise") else 1  # chosen and rejected rows
    return train_step_program(
        f"hft[{method if defence == 'lisa' else alignment}]",
        lambda m: bfpo_task.layout_state_spec(layout, model_cfg, tx, stage.seed, stages.RUN_PRECISION, m),
        step_fn, batch, 1, mesh, work={"examples": sum(read.values()),
                                       "tokens": sum(read.values()) * rows_per_example * length})


def _with_hft(command: Command, **changes) -> Command:
    return dataclasses.replace(command, hft=dataclasses.replace(command.hft, **changes))


PLAN = LauncherPlan(
    parse=lambda preset, args: parse_preset(config_type(), preset, args, "experiments.hft"),
    program=plan_program,
    presets=tuple(PRESETS),
    without_remat=lambda c: _with_hft(c, model=dataclasses.replace(
        c.hft.model, execution=dataclasses.replace(c.hft.model.execution, remat="none"))),
    mesh_of=lambda c: c.hft.run.mesh,
    with_mesh=lambda c, mesh: _with_hft(c, run=dataclasses.replace(c.hft.run, mesh=mesh)),
)


if __name__ == "__main__":
    cli(config_type(), lambda c: main(c.hft, c.report_dir or None),
        expected_errors=(BFPOError, TrainConfigError, HFTConfigError))
