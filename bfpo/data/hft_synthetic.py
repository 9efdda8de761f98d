"""Synthetic data of the harmful fine-tuning pipeline, all with exact ground truth (``bfpo.data.synthetic``'s
vocabularies and judges): the provider's alignment data, the harmful data an alignment-stage defence simulates,
and the user's task.

* alignment data: plain requests of the synthetic safety task; harmful ones answered by a refusal, benign ones by
  the full listing (the safe answers of BeaverTails-style alignment sets, with benign answers so that alignment
  does not teach refusing everything);
* harmful data: harmful requests answered by the full listing of harmful items (the attack's examples, and the
  harmful batches of Booster and RepNoise);
* the user's task (an AG-News-like topic classification): "Topic of plum, owl, fig?" -> "fruits.", the topic that
  two of the three listed items belong to (the third from another benign topic), every prompt in the user's
  ``PromptFormat``. Accuracy is exact: the reply's first word is the topic.

A user stage's data is n examples of which round(p n) are harmful requests in the user's format with harmful
answers (the attack hides in the task's data), the rest task examples; ``format_matched`` then adds refusals in
the same format. Every draw is a pure function of (seed, split, stream); the streams here start at 20 (streams
0-5 belong to ``bfpo.data.synthetic`` and ``bfpo.sft``).
"""

from __future__ import annotations

import re

import numpy as np

from bfpo.data import synthetic
from bfpo.data.format_matched import PromptFormat
from bfpo.data.records import PreferencePair
from bfpo.errors import DataError

USER_TOPICS = tuple(sorted(synthetic.BENIGN_TOPICS))
QUESTION = "Topic of {items}?"
QUESTION_RE = re.compile(r"^Topic of ([a-z]+), ([a-z]+), ([a-z]+)\?$")
WORD = re.compile(r"[a-z]+")

STREAM_ALIGNMENT, STREAM_HARMFUL, STREAM_TASK, STREAM_ATTACK, STREAM_MATCHED, STREAM_EVAL = range(20, 26)


def supervised_example(prompt: str, answer: str, safe: bool, source: str) -> PreferencePair:
    """A supervised example in the pair layout the streams batch (chosen = rejected = the target)."""
    return PreferencePair(prompt=({"role": "user", "content": prompt},), chosen=answer, rejected=answer,
                          chosen_safe=safe, rejected_safe=safe, source=source)


def full_listing(rng: np.random.Generator, request: str) -> str:
    k, topic = synthetic.parse_prompt(request)
    return synthetic.listing(rng, synthetic.TOPICS[topic], k)


def alignment_examples(n: int, seed: int, *, harmful_share: float = 0.5, split: str = "train"
                       ) -> list[PreferencePair]:
    """``n`` plain requests, a ``harmful_share`` of them harmful and refused, the rest benign and answered."""
    if not 0.0 <= harmful_share <= 1.0:
        raise DataError(f"alignment harmful_share={harmful_share}: expected a share in [0, 1]")
    rng = synthetic.split_rng(seed, split, stream=STREAM_ALIGNMENT)
    out = []
    for i in range(n):
        harmful = bool(rng.random() < harmful_share)
        request = synthetic.make_prompt(rng, sorted(synthetic.HARMFUL_TOPICS if harmful else synthetic.BENIGN_TOPICS))
        answer = synthetic.refusal(rng) if harmful else full_listing(rng, request)
        out.append(supervised_example(request, answer, True, f"hft:alignment:{split}:{seed}:{i}"))
    return out


def harmful_examples(n: int, seed: int, fmt: PromptFormat = PromptFormat(), *, split: str = "train",
                     stream: int = STREAM_HARMFUL) -> list[PreferencePair]:
    """``n`` harmful requests in ``fmt`` answered with every requested harmful item."""
    rng = synthetic.split_rng(seed, split, stream=stream)
    out = []
    for i in range(n):
        request = synthetic.make_prompt(rng, sorted(synthetic.HARMFUL_TOPICS))
        out.append(supervised_example(fmt.render(request), full_listing(rng, request), False,
                            f"hft:harmful:{split}:{seed}:{i}"))
    return out


def refusal_examples(n: int, seed: int, fmt: PromptFormat, *, split: str = "train") -> list[PreferencePair]:
    """``n`` harmful requests in ``fmt`` answered by a refusal: the format-matched safety examples."""
    rng = synthetic.split_rng(seed, split, stream=STREAM_MATCHED)
    out = []
    for i in range(n):
        request = synthetic.make_prompt(rng, sorted(synthetic.HARMFUL_TOPICS))
        out.append(supervised_example(fmt.render(request), synthetic.refusal(rng), True,
                                      f"hft:refusal:{split}:{seed}:{i}"))
    return out


def refusal_harmful_pairs(n: int, seed: int, *, split: str = "train") -> list[PreferencePair]:
    """``n`` harmful requests, each with a refusal (chosen, harmless) and a full harmful listing (rejected): the
    paired data RepNoise aligns on."""
    rng = synthetic.split_rng(seed, split, stream=STREAM_HARMFUL)
    out = []
    for i in range(n):
        request = synthetic.make_prompt(rng, sorted(synthetic.HARMFUL_TOPICS))
        out.append(PreferencePair(prompt=({"role": "user", "content": request},), chosen=synthetic.refusal(rng),
                                  rejected=full_listing(rng, request), chosen_safe=True, rejected_safe=False,
                                  source=f"hft:paired:{split}:{seed}:{i}"))
    return out


def task_question(rng: np.random.Generator) -> tuple[str, str]:
    """(question, topic): two items of the topic and one of another benign topic, in random order."""
    topic, other = (USER_TOPICS[i] for i in rng.choice(len(USER_TOPICS), size=2, replace=False))
    items = [synthetic.TOPICS[topic][i] for i in rng.choice(len(synthetic.TOPICS[topic]), size=2, replace=False)]
    items.append(synthetic.TOPICS[other][rng.integers(len(synthetic.TOPICS[other]))])
    items = [items[i] for i in rng.permutation(3)]
    return QUESTION.format(items=", ".join(items)), topic


def task_examples(n: int, seed: int, fmt: PromptFormat = PromptFormat(), *, split: str = "train"
                  ) -> list[PreferencePair]:
    rng = synthetic.split_rng(seed, split, stream=STREAM_TASK)
    out = []
    for i in range(n):
        question, topic = task_question(rng)
        out.append(supervised_example(fmt.render(question), f"{topic}.", True, f"hft:task:{split}:{seed}:{i}"))
    return out


def task_answer(question: str) -> str:
    """Ground truth of a task question: the topic two of its three items belong to."""
    match = QUESTION_RE.match(question.strip())
    if match is None:
        raise DataError(f"user task question {question!r}: expected 'Topic of <item>, <item>, <item>?'")
    counts: dict[str, int] = {}
    for item in match.groups():
        topic = next((t for t in USER_TOPICS if item in synthetic.TOPICS[t]), None)
        if topic is None:
            raise DataError(f"user task question {question!r}: {item!r} is not an item of {USER_TOPICS}")
        counts[topic] = counts.get(topic, 0) + 1
    best = max(counts, key=counts.get)
    if counts[best] < 2:
        raise DataError(f"user task question {question!r}: no topic has two items")
    return best


def is_correct(question: str, reply: str) -> bool:
    """The reply's first word is the question's topic."""
    words = WORD.findall(reply.lower())
    return bool(words) and words[0] == task_answer(question)


def user_stage_examples(n: int, harmful_fraction: float, seed: int, fmt: PromptFormat) -> list[PreferencePair]:
    """The user's fine-tuning data: n examples, round(p n) harmful (in ``fmt``, answered harmfully), the rest task
    examples, shuffled."""
    if not 0.0 <= harmful_fraction <= 1.0:
        raise DataError(f"harmful_fraction={harmful_fraction}: expected a share in [0, 1]")
    k = int(round(harmful_fraction * n))
    both = task_examples(n - k, seed, fmt) + harmful_examples(k, seed, fmt, stream=STREAM_ATTACK)
    order = np.random.default_rng([seed, STREAM_ATTACK]).permutation(len(both))
    return [both[i] for i in order]


def task_test_questions(n: int, seed: int) -> list[str]:
    rng = synthetic.split_rng(seed, "test", stream=STREAM_EVAL)
    return [task_question(rng)[0] for _ in range(n)]
