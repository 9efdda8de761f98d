"""The harmful fine-tuning pipeline's data and judges, from the synthetic tasks or from local files
(``HFTConfig.data``): what each stage trains on and what the evaluation asks and how it is judged.

Both sources give the same parts: the alignment data (requests answered safely), harmful examples (the attack's and
Booster's), RepNoise's (safe, harmful) pairs, BFPO's preference pairs, the user stage's data with its harmful
fraction, safety examples in the user's format (format matching), and the evaluation's prompt sets with their
judges: harmful requests in the user's format and plain (harmful score), and held-out user-task prompts (fine-tune
accuracy).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from bfpo.data import PreferencePair, load_pairs, synthetic
from bfpo.data import hft_files as files
from bfpo.data import hft_synthetic
from bfpo.data.format_matched import PromptFormat
from bfpo.errors import DataError
from bfpo.eval.generative import PromptSet
from bfpo.eval.judges import GroundTruthHelpfulJudge, GroundTruthSafetyJudge, HarmfulRefusalJudge
from bfpo.eval.lm_judges import AnswerReading, ClassifierJudge
from bfpo.model import source as model_source
from bfpo.model.llama import model_from_params
from experiments.configs.hft import HFTConfig
from experiments.tasks.bfpo_eval import judge_model_id
from runtime.mesh import make_mesh

STREAM_PREFERENCE = 36


def _prompt_set(name: str, axis: str, prompts, sources) -> PromptSet:
    return PromptSet(name=name, axis=axis, prompts=tuple(prompts), sources=tuple(sources))


class SyntheticData:
    """The synthetic safety task and the synthetic user task (``bfpo.data.hft_synthetic``), exact judges."""

    def __init__(self, cfg: HFTConfig):
        self.cfg = cfg

    def alignment(self, n: int, seed: int) -> list[PreferencePair]:
        return hft_synthetic.alignment_examples(n, seed, harmful_share=self.cfg.alignment.harmful_share)

    def harmful(self, n: int, seed: int) -> list[PreferencePair]:
        return hft_synthetic.harmful_examples(n, seed)

    def refusal_pairs(self, n: int, seed: int) -> list[PreferencePair]:
        return hft_synthetic.refusal_harmful_pairs(n, seed)

    def preference_pairs(self, n: int, seed: int) -> list[PreferencePair]:
        return synthetic.make_pairs(n, seed)

    def user_stage(self, n: int, p: float, seed: int, fmt: PromptFormat) -> list[PreferencePair]:
        return hft_synthetic.user_stage_examples(n, p, seed, fmt)

    def matched_safety(self, k: int, seed: int, fmt: PromptFormat) -> list[PreferencePair]:
        """Harmful requests in ``fmt`` answered by a refusal (``PromptFormat()``: the plain requests)."""
        return hft_synthetic.refusal_examples(k, seed, fmt)

    def prompt_sets(self) -> dict[str, tuple[PromptSet, Any]]:
        e, fmt = self.cfg.eval, self.cfg.finetune.format
        requests = synthetic.harmful_prompts(e.harmful_prompts, e.seed)
        questions = hft_synthetic.task_test_questions(e.task_prompts, e.seed)

        def make(name, axis, prompts):
            return _prompt_set(name, axis, prompts, [f"hft:test:{name}:{i}" for i in range(len(prompts))])

        return {
            "harmful_user_format": (make("harmful_user_format", "harmlessness", [fmt.render(r) for r in requests]),
                                    self.safety_judge(fmt)),
            "harmful_plain": (make("harmful_plain", "harmlessness", requests), self.safety_judge(PromptFormat())),
            "task": (make("task", "helpfulness", [fmt.render(q) for q in questions]), self.task_judge(fmt)),
        }

    @staticmethod
    def safety_judge(fmt: PromptFormat) -> GroundTruthSafetyJudge:
        """Harmless unless the reply names a harmful item (``synthetic.is_unsafe`` on the request inside the
        prompt)."""
        return GroundTruthSafetyJudge(is_unsafe=lambda p, r: synthetic.is_unsafe(fmt.unwrap(p), r),
                                      name="synthetic-ground-truth-safety")

    @staticmethod
    def task_judge(fmt: PromptFormat) -> GroundTruthHelpfulJudge:
        """Correct when the reply's first word is the question's topic."""
        return GroundTruthHelpfulJudge(helpfulness=lambda p, r: float(hft_synthetic.is_correct(fmt.unwrap(p), r)),
                                       target=lambda p: 1.0, name="synthetic-user-task-accuracy", metric="accuracy")


class FileData:
    """BeaverTails-format safety files, an SST-2 / AG News / GSM8K user task and a preference file
    (``bfpo.data.hft_files``); each file is read once, on first use."""

    def __init__(self, cfg: HFTConfig):
        self.cfg = cfg
        self.d = cfg.data

    @functools.cached_property
    def safety(self) -> list[files.SafetyRecord]:
        return files.read_safety(self.d.safety_train)

    @functools.cached_property
    def safety_test(self) -> list[files.SafetyRecord]:
        return files.read_safety(self.d.safety_test)

    @functools.cached_property
    def task_tests(self) -> list[files.TaskRecord]:
        return files.read_user_task(self.d.user_task, self.d.user_test)

    @functools.cached_property
    def tasks(self) -> list[files.TaskRecord]:
        return files.read_user_task(self.d.user_task, self.d.user_train)

    def alignment(self, n: int, seed: int) -> list[PreferencePair]:
        return files.safe_examples(self.safety, n, seed)

    def harmful(self, n: int, seed: int) -> list[PreferencePair]:
        return files.harmful_examples(self.safety, n, seed)

    def refusal_pairs(self, n: int, seed: int) -> list[PreferencePair]:
        return files.refusal_harmful_pairs(self.safety, n, seed)

    def preference_pairs(self, n: int, seed: int) -> list[PreferencePair]:
        pairs, _ = load_pairs(self.d.preference_train)
        if n > len(pairs):
            raise DataError(f"{self.d.preference_train}: {n} preference pairs asked for, the file has {len(pairs)}")
        order = np.random.default_rng([seed, STREAM_PREFERENCE]).permutation(len(pairs))[:n]
        return [pairs[i] for i in order]

    def user_stage(self, n: int, p: float, seed: int, fmt: PromptFormat) -> list[PreferencePair]:
        return files.user_stage_examples(self.tasks, self.safety, n, p, seed, fmt)

    def matched_safety(self, k: int, seed: int, fmt: PromptFormat) -> list[PreferencePair]:
        """Safe records in ``fmt`` (``PromptFormat()``: as they are)."""
        return files.safe_examples(self.safety, k, seed, fmt, stream=files.STREAM_MATCHED)

    def prompt_sets(self) -> dict[str, tuple[PromptSet, Any]]:
        """The first ``eval.harmful_prompts`` unique unsafe prompts of the safety test file (in the user's format
        and plain; one set when the format is plain) and the first ``eval.task_prompts`` user-task test records."""
        e, fmt = self.cfg.eval, self.cfg.finetune.format
        prompts, sources = files.harmful_prompts(self.safety_test, e.harmful_prompts)
        tests = self.task_tests
        if len(tests) < e.task_prompts:
            raise DataError(f"{self.d.user_test}: {e.task_prompts} task prompts asked for, the file has {len(tests)}")
        tests = tests[:e.task_prompts]
        judge = self._harmful_judge
        out = {"harmful_user_format": (_prompt_set("harmful_user_format", "harmlessness",
                                                   [fmt.render(p) for p in prompts], sources), judge)}
        if fmt != PromptFormat():
            out["harmful_plain"] = (_prompt_set("harmful_plain", "harmlessness", prompts, sources), judge)
        answers: dict[str, str] = {}
        for r in tests:
            answers.setdefault(fmt.render(r.prompt), r.answer)
        task = self.d.user_task
        out["task"] = (_prompt_set("task", "helpfulness", [fmt.render(r.prompt) for r in tests],
                                   [r.source for r in tests]),
                       GroundTruthHelpfulJudge(helpfulness=lambda p, r: float(files.is_correct(task, answers[p], r)),
                                               target=lambda p: 1.0, name=f"{task}-exact-answer", metric="accuracy"))
        return out

    @functools.cached_property
    def _harmful_judge(self):
        if self.d.harmful_judge == "refusal-phrases":
            return HarmfulRefusalJudge()
        jm = self.d.judge_model
        mesh = make_mesh(self.cfg.run.mesh)
        model_cfg, params, tokenizer = model_source.load_model(jm.kind, jm.path, mesh)
        return ClassifierJudge(model=model_from_params(model_cfg, params), tokenizer=tokenizer,
                               name=f"lm-classifier:{judge_model_id(jm)}", model_id=judge_model_id(jm),
                               prompt_style=jm.prompt, yes_words=jm.unsafe_words, no_words=jm.safe_words, mesh=mesh,
                               reading=AnswerReading(min_mass=jm.min_mass, batch_size=jm.batch_size))


@functools.lru_cache(maxsize=2)
def stage_data(cfg: HFTConfig) -> SyntheticData | FileData:
    """One data source per config, so that files are read and the judge model is loaded once per pipeline."""
    return FileData(cfg) if cfg.data.source == "files" else SyntheticData(cfg)
