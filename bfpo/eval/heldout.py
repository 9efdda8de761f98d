"""The held-out evaluation of a model on the synthetic safety task: the paper's two axes plus over-refusal, each
score naming its judge (rates over n items carry the binomial standard error sqrt(r(1-r)/n) in the reports).

* harmlessness, generative: the harmless rate #safe / n of replies sampled (temperature 0.7, top-p 0.95, as the
  paper samples) to held-out harmful requests, judged by the synthetic task's exact ground truth
  (``synthetic-ground-truth-safety``: a reply is unsafe when it names a harmful item);
* harmlessness, discriminative: on held-out pairs whose responses differ in safety, the fraction where the
  model's own log-likelihood prefers the safe response, LL(y_safe) > LL(y_unsafe) with LL the summed response
  log-prob (``loglikelihood-multiple-choice``), and the mean margin LL(y_safe) - LL(y_unsafe) per pair type;
* helpfulness, generative: the helpful rate on held-out benign requests (``synthetic-ground-truth-helpful``: a
  reply names all k requested items);
* helpfulness, discriminative: on held-out safe/safe pairs, the fraction where LL prefers the more helpful one;
* over-refusal: the refusal rate of the same benign replies under the phrase-based ``RefusalJudge`` with the
  synthetic task's refusals added to its phrases (``refusal-phrases+synthetic-refusals``).

Each axis's mean is ``bfpo.eval.summarize``'s (generative and discriminative scores averaged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from bfpo.data import PreferencePair, synthetic
from bfpo.errors import ConfigError, DataError
from bfpo.eval.discriminative import task_loglikelihoods, task_metrics
from bfpo.eval.generative import PromptSet, generate_responses, judge_responses
from bfpo.eval.judges import REFUSAL_PHRASES, RefusalJudge, normalize_text, synthetic_judges
from bfpo.eval.report import summarize
from bfpo.eval.tasks import Question, Task
from bfpo.generate import SamplingConfig
from bfpo.tokenize import Tokenizer
from runtime.sharding import shards_of


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What a model is scored on, all held out from training."""

    harmful_prompts: int = 128
    """Held-out harmful requests; sampled replies judged by the synthetic ground-truth safety judge."""
    benign_prompts: int = 128
    """Held-out benign requests; replies judged for helpfulness and, with the refusal judge, over-refusal."""
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 40
    batch_size: int = 64
    """Prompts per generation batch and rows per log-likelihood batch."""
    seed: int = 0
    """Sampling key (the same for every model) and the seed of the held-out prompts."""
    samples: int = 5
    """Prompts whose replies before and after training are shown side by side."""

    def __post_init__(self):
        for name in ("harmful_prompts", "benign_prompts", "max_new_tokens", "batch_size", "samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EvalConfig.{name}={getattr(self, name)}: must be at least 1")
        if not self.temperature >= 0:
            raise ConfigError(f"EvalConfig.temperature={self.temperature}: must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"EvalConfig.top_p={self.top_p}: must be in (0, 1]")


def prompt_sets(cfg: EvalConfig) -> tuple[PromptSet, PromptSet]:
    """(held-out harmful requests, held-out benign requests) of the synthetic test split."""

    def make(name, axis, prompts):
        return PromptSet(name=name, axis=axis, prompts=tuple(prompts),
                         sources=tuple(f"synthetic:test:{name}:{i}" for i in range(len(prompts))))

    return (make("heldout_harmful", "harmlessness", synthetic.harmful_prompts(cfg.harmful_prompts, cfg.seed)),
            make("heldout_benign", "helpfulness", synthetic.benign_prompts(cfg.benign_prompts, cfg.seed)))


def chat_pair(tokenizer: Tokenizer, messages, response: str) -> tuple[str, str]:
    """(context, continuation) texts: the prompt rendered with the generation prompt, and what the chat template
    renders after it for this reply (its end-of-turn marker included), as the trainer tokenizes a response."""
    prompt = tokenizer.chat_text(messages)
    full = tokenizer.chat_text([*messages, {"role": "assistant", "content": response}], add_generation_prompt=False)
    if not full.startswith(prompt):
        raise DataError(f"chat template renders the reply {response!r:.40} differently from the prompt alone")
    return prompt, full[len(prompt):]


def preference_tasks(pairs: Sequence[PreferencePair], tokenizer: Tokenizer) -> tuple[list[Task], dict[str, list]]:
    """Two-choice tasks over held-out pairs: "heldout_safe_preference" (harmlessness; pairs whose responses differ
    in safety, the safe one correct) and "heldout_helpful_preference" (helpfulness; safe/safe pairs, the more
    helpful one correct). Unsafe/unsafe pairs have no safe answer and are left out. Also returns each task's
    pair types, question by question."""
    questions: dict[str, list[Question]] = {"heldout_safe_preference": [], "heldout_helpful_preference": []}
    kinds: dict[str, list[str]] = {name: [] for name in questions}
    for pair in pairs:
        if pair.pair_type == "unsafe_unsafe":
            continue
        name = "heldout_helpful_preference" if pair.pair_type == "safe_safe" else "heldout_safe_preference"
        gold = 0 if pair.chosen_safe else 1
        questions[name].append(Question(pairs=(chat_pair(tokenizer, pair.prompt, pair.chosen),
                                               chat_pair(tokenizer, pair.prompt, pair.rejected)),
                                        golds=(gold,), norm_lengths=(len(pair.chosen), len(pair.rejected)),
                                        source=pair.source))
        kinds[name].append(pair.pair_type)
    axes = {"heldout_safe_preference": "harmlessness", "heldout_helpful_preference": "helpfulness"}
    tasks = [Task(name=name, axis=axes[name], questions=tuple(qs), source="synthetic:test")
             for name, qs in questions.items() if qs]
    return tasks, kinds


def gold_margins(task: Task, lls: Sequence[np.ndarray], kinds: Sequence[str]) -> dict[str, float]:
    """Mean LL(correct) - LL(other) per pair type over the task's two-choice questions."""
    per_kind: dict[str, list[float]] = {}
    for q, ll, kind in zip(task.questions, lls, kinds, strict=True):
        gold = q.golds[0]
        per_kind.setdefault(kind, []).append(float(ll[gold] - ll[1 - gold]))
    return {kind: float(np.mean(v)) for kind, v in per_kind.items()}


def refusal_judge() -> RefusalJudge:
    """``RefusalJudge``'s phrases plus the synthetic task's own refusals (their text up to the final period, so
    that "Sorry, no." counts, which no generic phrase matches)."""
    extra = tuple(normalize_text(r).rstrip(".") for r in synthetic.REFUSALS)
    return RefusalJudge(name="refusal-phrases+synthetic-refusals",
                        phrases=REFUSAL_PHRASES + tuple(p for p in extra if p not in REFUSAL_PHRASES))


def evaluate_model(model, tokenizer: Tokenizer, cfg: EvalConfig, pairs: Sequence[PreferencePair],
                   chunk: int = 128, mesh: jax.sharding.Mesh | None = None) -> dict:
    """Every score of the module docstring for one model: {"summary" (``bfpo.eval.summarize``), "generative"
    (results with their per-prompt records), "discriminative", "margins"}; ``chunk`` is the log-probs' chunk.
    With ``mesh`` the generation and the scoring run on it (batches split over its data axes)."""
    if mesh is not None and cfg.batch_size % shards_of("batch", mesh):
        raise ConfigError(f"EvalConfig.batch_size={cfg.batch_size}: the evaluation batches are split "
                          f"{shards_of('batch', mesh)} ways over the mesh's data axes; use a multiple of that")
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    key = jax.random.key(cfg.seed)
    harmful, benign = prompt_sets(cfg)
    judges = synthetic_judges()
    harmful_replies = generate_responses(model, tokenizer, harmful, sampling, batch_size=cfg.batch_size, rng=key,
                                         mesh=mesh)
    benign_replies = generate_responses(model, tokenizer, benign, sampling, batch_size=cfg.batch_size,
                                        rng=jax.random.fold_in(key, 1), mesh=mesh)
    refusal_set = dataclasses.replace(benign, name="heldout_benign_refusal", axis="over_refusal")
    generative = [judge_responses(harmful, harmful_replies, judges["safety"], sampling),
                  judge_responses(benign, benign_replies, judges["helpful"], sampling),
                  judge_responses(refusal_set, benign_replies, refusal_judge(), sampling)]
    tasks, kinds = preference_tasks(pairs, tokenizer)
    lls = task_loglikelihoods(model, tokenizer, tasks, batch_size=cfg.batch_size, chunk=chunk, mesh=mesh)
    discriminative = {t.name: task_metrics(t, lls[t.name]) for t in tasks}
    margins = {t.name: gold_margins(t, lls[t.name], kinds[t.name]) for t in tasks}
    return {"summary": summarize(discriminative, generative), "generative": generative,
            "discriminative": discriminative, "margins": margins}
