"""BFPO against other preference objectives on the synthetic safety task: the helpfulness/harmlessness trade-off.

One base model, then one preference run per objective of the registry (BFPO, DPO, IPO, SafeDPO by default) from
that base on the same pairs, then the same held-out evaluation for the base and every run, and a report: a
markdown and a CSV table, a helpfulness-vs-harmlessness scatter plot with the base as a point, and replies to the
same prompts before and after training.

The base is made by a supervised stage on synthetic answers (``bfpo.sft``: helpful listings for benign requests,
and for harmful requests unsafe compliance half of the time and a refusal otherwise), so it is helpful and complies
with a share of the harmful requests (30% for the tiny model, 54% for SmolLM2 in the committed reports): the room
in which the objectives differ. Every model is scored by ``bfpo.eval.heldout`` (harmlessness and helpfulness,
generative and discriminative, and over-refusal, each naming its judge).

Run: ``python -m experiments.bfpo_compare synthetic`` (or ``smollm2``; ``--help`` lists every field).
``demo()`` is the small version ``make demo`` runs.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import shutil
from pathlib import Path
from typing import Annotated, Any

import tyro

from bfpo.data import MixedStreams, PreferenceStream, TokenizeConfig, synthetic, tokenize_pairs
from bfpo.errors import BFPOError
from bfpo.eval import heldout, write_report
from bfpo.eval.report import LOGLIKELIHOOD_JUDGE
from bfpo.model import source as model_source
from bfpo.model.llama import model_from_params
from bfpo.model.load_hf import save_hf
from bfpo.objectives import describe
from bfpo.optim import make_optimizer
from bfpo.sft import SFT_STREAM, sft_examples, sft_loss
from bfpo.tokenize import Tokenizer
from bfpo.train_params import ParamLayout, policy_params
from experiments.configs.bfpo_compare import PRESETS, CompareConfig, CompareConfigError, upgrade_compare_flags
from experiments.configs.bfpo_train import BFPOTrainConfig, ModelSource, TrainConfigError, upgraded_args
from experiments.run import RunConfig, Task as RunTask, cli, train
from experiments.run_dir import standard_json
from experiments.tasks import bfpo as bfpo_task
from runtime.checkpoint import Checkpointer
from runtime.mesh import make_mesh
from runtime.step import make_train_step

BASE = "base"
REPORT_FILES = ("results.md", "results.csv", "results.json", "tradeoff.png", "samples.md")


# --- the base model: the SFT stage ------------------------------------------------------------------------------

def sft_run_config(cfg: CompareConfig, out: Path) -> RunConfig:
    return dataclasses.replace(cfg.train.run, out_dir=str(out / BASE), mesh=cfg.run.mesh, steps=cfg.sft.steps,
                               resume=False, eval_every=0, checkpoint_every=0,
                               log_every=min(cfg.train.run.log_every, cfg.sft.steps))


def run_sft(cfg: CompareConfig, out: Path) -> tuple[Any, Any]:
    """Trains the base (``cfg.sft``) from ``cfg.train.model`` and returns (model config, trained parameters)."""
    run_cfg = sft_run_config(cfg, out)
    mesh = make_mesh(run_cfg.mesh)
    src = cfg.train.model
    seed = run_cfg.seed
    model_cfg, loaded, tokenizer = model_source.load_or_init(src.kind, src.path, mesh, src.execution, seed)
    layout = ParamLayout(reference="none", trainable=cfg.sft.trainable or None)
    tx = make_optimizer(cfg.sft.optimizer, cfg.sft.steps)
    t = cfg.train
    tokenized = tokenize_pairs(sft_examples(cfg.sft.examples, t.data_seed, cfg.sft), tokenizer,
                               TokenizeConfig(max_length=t.max_length, max_prompt_length=t.max_prompt_length,
                                              buckets=t.buckets))
    data = MixedStreams({SFT_STREAM: PreferenceStream(tokenized, cfg.sft.batch_size, t.data_seed,
                                                      bucket_window=t.bucket_window)})

    state_spec = functools.partial(bfpo_task.layout_state_spec, layout, model_cfg, tx, seed, run_cfg.precision)
    init_state = functools.partial(bfpo_task.layout_init_state, layout, loaded, tx, seed, run_cfg.precision)
    task = RunTask(name="bfpo_compare[sft]", state_spec=state_spec, init_state=init_state,
                   step_fn=make_train_step(sft_loss(model_cfg, layout, t.logprob_chunk), tx,
                                           grad_accum=run_cfg.grad_accum),
                   data=data, config={"sft": dataclasses.asdict(cfg.sft), "model": dataclasses.asdict(t.model)},
                   peak_update=cfg.sft.optimizer.learning_rate)
    train(run_cfg, task)
    return model_cfg, policy_params(layout, restore_params(run_cfg, state_spec))


def restore_params(run_cfg: RunConfig, state_spec) -> Any:
    """The parameter dict of a finished run's last checkpoint, on the run's mesh."""
    mesh = make_mesh(run_cfg.mesh)
    abstract, shardings = state_spec(mesh)
    with Checkpointer(str(Path(run_cfg.out_dir).absolute() / "checkpoints")) as ckpt:
        state, _ = ckpt.restore(abstract, shardings)
    return state.params


def completed(run_dir: Path, steps: int) -> bool:
    summary = run_dir / "summary.json"
    if not summary.exists():
        return False
    s = json.loads(summary.read_text())
    return s.get("stopped") == "completed" and s.get("steps_done") == steps


def make_base(cfg: CompareConfig, out: Path) -> tuple[ModelSource, Any, Any, Tokenizer, bool]:
    """(model source of the preference runs, model config, base parameters, tokenizer, whether a finished base
    was reused). With an SFT stage the base is exported to ``<out>/base/hf`` and every preference run loads it
    from there."""
    tokenizer = model_source.tokenizer_of(cfg.train.model.kind, cfg.train.model.path)
    if not cfg.sft.steps:
        src = cfg.train.model
        model_cfg, params, _ = model_source.load_or_init(src.kind, src.path, make_mesh(cfg.run.mesh),
                                                         src.execution, cfg.train.run.seed)
        return src, model_cfg, params, tokenizer, False
    hf_dir = out / BASE / "hf"
    source = dataclasses.replace(cfg.train.model, kind="hf", path=str(hf_dir))
    if cfg.reusing and completed(out / BASE, cfg.sft.steps) and (hf_dir / "config.json").exists():
        model_cfg, params, _ = model_source.load_model(source.kind, source.path, make_mesh(cfg.run.mesh),
                                                       source.execution)
        return source, model_cfg, params, tokenizer, True
    if (out / BASE).exists():
        shutil.rmtree(out / BASE)
    model_cfg, params = run_sft(cfg, out)
    save_hf(model_from_params(model_cfg, params), hf_dir, tokenizer=tokenizer)
    return source, model_cfg, params, tokenizer, False


# --- the preference runs ----------------------------------------------------------------------------------------

def objective_run_config(cfg: CompareConfig, objective: str, source: ModelSource, out: Path) -> BFPOTrainConfig:
    """The shared preference config for one objective: its own run directory, the common base and one reference
    cache for all runs (same base and data, so the reference log-probs are computed once)."""
    run = dataclasses.replace(cfg.train.run, out_dir=str(out / "runs" / objective), mesh=cfg.run.mesh, resume=False)
    return dataclasses.replace(cfg.train, run=run, objective=objective, model=source, export=False,
                               reference_cache_dir=str(out / "reference_cache"))


def train_objective(cfg: CompareConfig, objective: str, source: ModelSource, out: Path
                    ) -> tuple[Any, dict, bool]:
    """(trained policy parameters, {train_seconds, eval metrics of the trainer's held-out hook}, whether a
    finished run was reused)."""
    run_cfg = objective_run_config(cfg, objective, source, out)
    run_dir = Path(run_cfg.run.out_dir)
    reuse = cfg.reusing and completed(run_dir, run_cfg.run.steps)
    if run_dir.exists() and not reuse:
        shutil.rmtree(run_dir)
    task, prepared = bfpo_task.make_task(run_cfg)
    if not cfg.trainer_eval:
        task = dataclasses.replace(task, evals=())
    if not reuse:
        bfpo_task.train_and_export(run_cfg, task, prepared)
    summary = json.loads((run_dir / "summary.json").read_text())
    params = policy_params(prepared.layout, bfpo_task.final_params(run_cfg, task))
    return params, {"train_seconds": summary["wall_seconds"], "trainer_eval": summary["eval_metrics"]}, reuse


# --- evaluation -------------------------------------------------------------------------------------------------

def evaluate_cached(name: str, model_fn, tokenizer: Tokenizer, cfg: CompareConfig, pairs, out: Path,
                    reused: bool) -> dict:
    """``bfpo.eval.heldout.evaluate_model`` of ``model_fn()``, written to ``<out>/eval/<name>.json``; read back
    from there when the model itself was reused from a finished earlier invocation."""
    path = out / "eval" / f"{name}.json"
    if reused and path.exists():
        return json.loads(path.read_text())
    result = heldout.evaluate_model(model_fn(), tokenizer, cfg.eval, pairs, cfg.train.logprob_chunk,
                                    mesh=make_mesh(cfg.run.mesh))
    write_report(path, result)
    return result


# --- report -----------------------------------------------------------------------------------------------------

def stderr(rate: float, n: int) -> float:
    return math.sqrt(max(rate * (1.0 - rate), 0.0) / n) if n else float("nan")


def row_of(name: str, label: str, result: dict, extra: dict) -> dict:
    """One table row: the headline scores of one model, each with its judge and n."""
    gen = {r["prompt_set"]: r for r in result["generative"]}
    disc = result["discriminative"]
    axes = result["summary"]["axes"]
    harm, helpful, refusal = gen["heldout_harmful"], gen["heldout_benign"], gen["heldout_benign_refusal"]
    safe_pref = disc.get("heldout_safe_preference", {})
    help_pref = disc.get("heldout_helpful_preference", {})
    replies = [(r["prompt"], r["response"]) for r in harm["records"]]
    refused = sum(synthetic.is_refusal(y) for _, y in replies)
    complied = sum(synthetic.is_unsafe(x, y) for x, y in replies)
    row = {"model": name, "label": label,
           "harmless_rate": harm["value"], "harmless_rate_se": stderr(harm["value"], harm["n"]),
           # Why a reply to a harmful request is harmless: an exact refusal, or neither a refusal nor a harmful
           # item (off-topic or malformed), which the safety judge also counts as harmless.
           "harmful_refused": refused / len(replies), "harmful_complied": complied / len(replies),
           "harmful_other": (len(replies) - refused - complied) / len(replies),
           "safe_preference": safe_pref.get("acc"), "safe_preference_n": safe_pref.get("n"),
           "safe_margin_harmful": result["margins"].get("heldout_safe_preference", {}).get("unsafe_safe"),
           "helpful_rate": helpful["value"], "helpful_rate_se": stderr(helpful["value"], helpful["n"]),
           "helpful_preference": help_pref.get("acc"), "helpful_preference_n": help_pref.get("n"),
           "refusal_rate": refusal["value"], "refusal_rate_se": stderr(refusal["value"], refusal["n"]),
           "harmlessness_mean": axes["harmlessness"]["mean"], "helpfulness_mean": axes["helpfulness"]["mean"],
           "judges": {"harmless_rate": harm["judge"], "helpful_rate": helpful["judge"],
                      "refusal_rate": refusal["judge"], "safe_preference": LOGLIKELIHOOD_JUDGE,
                      "helpful_preference": LOGLIKELIHOOD_JUDGE},
           "n": {"harmful_prompts": harm["n"], "benign_prompts": helpful["n"]}}
    return {**row, **extra}


def objective_label(cfg: CompareConfig, objective: str) -> str:
    """The objective with the hyperparameters it actually ran with."""
    shown = describe(cfg.train.objectives.of(objective))
    return f"{objective} ({shown})" if shown else objective


def _fmt(value, se=None, digits=3) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return text + (f" ± {se:.{digits}f}" if se is not None and se == se else "")


def write_table(rows: list[dict], path: Path, cfg: CompareConfig) -> None:
    t, e = cfg.train, cfg.eval
    r0 = rows[0]
    sft = (f"SFT of {cfg.sft.trainable or 'every weight'} for {cfg.sft.steps} steps (batch {cfg.sft.batch_size}) "
           f"on synthetic answers ({cfg.sft.harmful_compliance:.0%} of harmful requests answered unsafely)"
           if cfg.sft.steps else "none")
    streams = ", ".join(f"{s.name} ({s.synthetic_pairs} pairs, batch {s.batch_size}, weight {s.weight:g})"
                        for s in t.streams)
    lines = [f"Base model: {t.model.kind}; base stage: {sft}. Preference runs: {t.run.steps} steps, "
             f"trainable {t.layout.trainable or 'every weight'}, lr {t.optimizer.learning_rate:g} ({t.optimizer.schedule}),"
             f" streams {streams}, reference log-probs precomputed from the base.", "",
             "| model | harmless rate ↑ | harmful requests: refused / complied / other | safe-response preference ↑ | "
             "LL(safe) − LL(unsafe) on harmful requests (nats) ↑ | helpful rate ↑ | helpful-response preference ↑ | "
             "refusal rate on benign ↓ | harmlessness mean ↑ | helpfulness mean ↑ | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = "-" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['label']} | {_fmt(r['harmless_rate'], r['harmless_rate_se'])} | "
                     f"{r['harmful_refused']:.2f} / {r['harmful_complied']:.2f} / {r['harmful_other']:.2f} | "
                     f"{_fmt(r['safe_preference'])} | {_fmt(r['safe_margin_harmful'], digits=2)} | "
                     f"{_fmt(r['helpful_rate'], r['helpful_rate_se'])} | {_fmt(r['helpful_preference'])} | "
                     f"{_fmt(r['refusal_rate'], r['refusal_rate_se'])} | {_fmt(r['harmlessness_mean'])} | "
                     f"{_fmt(r['helpfulness_mean'])} | {secs} |")
    sampling = f"temperature {e.temperature:g}, top-p {e.top_p:g}, at most {e.max_new_tokens} new tokens"
    j = r0["judges"]
    lines += ["", "Scores and their judges (± is the binomial standard error):", "",
              f"- harmless rate: judge `{j['harmless_rate']}` over replies to {r0['n']['harmful_prompts']} held-out "
              f"harmful requests ({sampling}); the breakdown splits the same replies by the synthetic ground "
              "truth into exact refusals, compliance (a harmful item named) and other replies (neither: "
              "off-topic or malformed, harmless to the judge but no refusal);",
              f"- safe-response preference: judge `{j['safe_preference']}` (the model's summed response log-prob) "
              f"on {r0['safe_preference_n']} held-out pairs whose responses differ in safety: the fraction where "
              "the safe response is more likely; the margin column is the mean LL(safe) − LL(unsafe) on those of "
              "them with a harmful request (refusal vs compliance);",
              f"- helpful rate: judge `{j['helpful_rate']}` (all k requested items named) over replies to "
              f"{r0['n']['benign_prompts']} held-out benign requests;",
              f"- helpful-response preference: judge `{j['helpful_preference']}` on {r0['helpful_preference_n']} "
              "held-out safe/safe pairs (the more helpful response more likely);",
              f"- refusal rate: judge `{j['refusal_rate']}` over the same benign replies;",
              "- axis means: `bfpo.eval.summarize` over the scores of each axis."]
    path.write_text("\n".join(lines) + "\n")


CSV_FIELDS = ("model", "label", "harmless_rate", "harmless_rate_se", "harmful_refused", "harmful_complied",
              "harmful_other", "safe_preference", "safe_preference_n",
              "safe_margin_harmful", "helpful_rate", "helpful_rate_se", "helpful_preference", "helpful_preference_n",
              "refusal_rate", "refusal_rate_se", "harmlessness_mean", "helpfulness_mean", "train_seconds",
              "harmless_judge", "helpful_judge", "refusal_judge", "preference_judge")


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            flat = {**r, "harmless_judge": r["judges"]["harmless_rate"], "helpful_judge": r["judges"]["helpful_rate"],
                    "refusal_judge": r["judges"]["refusal_rate"], "preference_judge": r["judges"]["safe_preference"]}
            writer.writerow(["" if flat.get(k) is None else f"{flat[k]:.6g}" if isinstance(flat[k], float)
                             else flat[k] for k in CSV_FIELDS])


def plot(rows: list[dict], path: Path) -> None:
    """tradeoff.png: helpfulness (x) against harmlessness (y), generative scores (error bars: standard errors)
    on the left, the log-likelihood preferences on the right; the base is a black star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    panels = ((axes[0], "helpful_rate", "harmless_rate", "helpful rate on benign requests (ground truth)",
               "harmless rate on harmful requests (ground truth)", "sampled replies"),
              (axes[1], "helpful_preference", "safe_preference", "LL prefers the more helpful (safe/safe pairs)",
               "LL prefers the safe response (mixed pairs)", "held-out pair log-likelihoods"))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, xk, yk, xlabel, ylabel, title in panels:
        for i, r in enumerate(rows):
            if r.get(xk) is None or r.get(yk) is None:
                continue
            is_base = r["model"] == BASE
            ax.errorbar(r[xk], r[yk], xerr=r.get(f"{xk}_se"), yerr=r.get(f"{yk}_se"),
                        marker="*" if is_base else "o", markersize=13 if is_base else 8,
                        color="black" if is_base else colors[i % len(colors)], capsize=3, linestyle="none",
                        label=r["label"] if xk == "helpful_rate" else None)
            note = f"{r['model']}" + (f"\nrefusal {r['refusal_rate']:.2f}" if xk == "helpful_rate" else "")
            # Alternate sides so that neighbouring points keep readable labels.
            ax.annotate(note, (r[xk], r[yk]), textcoords="offset points", xytext=(6, 4) if i % 2 else (-6, -12),
                        ha="left" if i % 2 else "right", fontsize=7)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_samples(results: dict[str, dict], labels: dict[str, str], path: Path, count: int) -> None:
    """samples.md: the replies of every model to the first held-out harmful and benign requests (the same
    sampling key for every model), with each judge's verdict."""
    by_set = {name: {r["prompt_set"]: r["records"] for r in res["generative"]} for name, res in results.items()}
    picks = [("heldout_harmful", i) for i in range((count + 1) // 2)] + \
            [("heldout_benign", i) for i in range(count // 2)]
    lines = ["Replies before (base) and after each objective's training; verdicts of the ground-truth judges "
             "(safety on harmful requests, helpfulness on benign ones).", ""]
    for set_name, i in picks:
        first = by_set[BASE][set_name]
        if i >= len(first):
            continue
        lines += [f"**{set_name} #{i}: {first[i]['prompt']!r}**", "", "| model | reply | verdict |", "|---|---|---|"]
        for name in results:
            rec = by_set[name][set_name][i]
            reply = rec["response"].replace("|", "\\|").replace("\n", " ⏎ ")
            lines.append(f"| {labels[name]} | `{reply}` | {rec['verdict']} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def write_outputs(rows: list[dict], results: dict[str, dict], cfg: CompareConfig, out: Path) -> None:
    (out / "results.json").write_text(standard_json({"rows": rows, "config": dataclasses.asdict(cfg)}, indent=2,
                                                 default=str) + "\n")
    write_table(rows, out / "results.md", cfg)
    write_csv(rows, out / "results.csv")
    plot(rows, out / "tradeoff.png")
    write_samples(results, {r["model"]: r["label"] for r in rows}, out / "samples.md", cfg.eval.samples)


# --- the comparison ---------------------------------------------------------------------------------------------

def main(cfg: CompareConfig, report_dir: str | None = None) -> list[dict]:
    """Base, one run per objective, evaluation, report in ``cfg.out_dir`` (copied to ``report_dir`` if given).
    Returns the table rows, the base first."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source, model_cfg, base_params, tokenizer, reused = make_base(cfg, out)
    pairs = bfpo_task.eval_pairs(cfg.train)
    results = {BASE: evaluate_cached(BASE, lambda: model_from_params(model_cfg, base_params), tokenizer, cfg, pairs,
                                     out, reused)}
    rows = [row_of(BASE, f"base ({'SFT' if cfg.sft.steps else cfg.train.model.kind})", results[BASE],
                   {"train_seconds": None})]
    del base_params  # the runs load their own copy; do not keep two
    for objective in cfg.objectives:
        params, extra, reused = train_objective(cfg, objective, source, out)
        results[objective] = evaluate_cached(objective, lambda: model_from_params(model_cfg, params), tokenizer, cfg,
                                             pairs, out, reused)
        rows.append(row_of(objective, objective_label(cfg, objective), results[objective], extra))
        del params
    write_outputs(rows, results, cfg, out)
    if report_dir:
        target = Path(report_dir)
        target.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            shutil.copy2(out / name, target / name)
    print((out / "results.md").read_text(), flush=True)
    return rows


def demo(out_dir: str = "runs/demo/bfpo_compare") -> list[dict]:
    """``make demo``: the small synthetic comparison (SFT base, BFPO and DPO); prints where the report is."""
    rows = main(CompareConfig.demo(out_dir))
    out = Path(out_dir).absolute()
    print(f"[bfpo_compare] table: {out / 'results.md'}\n[bfpo_compare] plot:  {out / 'tradeoff.png'}", flush=True)
    return rows


@dataclasses.dataclass(frozen=True, kw_only=True)
class Command:
    """A preset's comparison plus where to copy the finished report (e.g. docs/results/bfpo_compare/<preset>)."""

    compare: Annotated[CompareConfig, tyro.conf.arg(name="")]
    report_dir: str = ""


def config_type():
    """One tyro subcommand per preset; every field can be overridden after it."""
    return tyro.extras.subcommand_type_from_defaults({name: Command(compare=make()) for name, make in PRESETS.items()})


if __name__ == "__main__":
    cli(config_type(), lambda c: main(c.compare, c.report_dir or None),
        expected_errors=(BFPOError, TrainConfigError, CompareConfigError),
        upgrade=lambda args: upgraded_args(upgrade_compare_flags(args)))
