"""The harmful fine-tuning pipeline's data from local files, in the formats the defences' papers use: a
BeaverTails-format safety file, and the user's task as SST-2, AG News or GSM8K records.

* Safety records (BeaverTails' ``30k_train`` / ``30k_test`` layout): ``prompt`` (text), ``response`` (text),
  ``is_safe`` (bool). Safe records are the alignment data (and Lisa's guide data); unsafe ones are the attack's
  harmful examples and Booster's harmful batches; a prompt with both a safe and an unsafe response gives one of
  RepNoise's (refusal, harmful answer) pairs; the unique prompts of the unsafe test records are the harmful-score
  prompts (the official evaluations take the first 1,000).
* User tasks. Each record becomes a prompt (the task's instruction and the record's text) and a target:

  ============  ====================================  =====================================================
  task          fields                                target, and when a reply is correct
  ============  ====================================  =====================================================
  ``sst2``      ``sentence``, ``label`` (0/1)         negative/positive; the reply names its label, no other
  ``agnews``    ``text``, ``label`` (0-3)             World/Sports/Business/Sci/Tech; the same rule
  ``gsm8k``     ``question``, ``answer`` ("#### N")   the worked answer ending "The final answer is: N"; the
                                                      reply's final answer (after that phrase, else its last
                                                      number) equals N
  ============  ====================================  =====================================================

Every record problem raises ``DataError`` naming the file, the line (the index for JSON arrays) and the field.
Draws are pure functions of (seed, stream), as in ``bfpo.data.hft_synthetic``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from bfpo.data.format_matched import PromptFormat
from bfpo.data.hft_synthetic import supervised_example
from bfpo.data.records import PreferencePair
from bfpo.errors import DataError
from bfpo.eval.files import field, read_records, where

USER_TASKS = ("sst2", "agnews", "gsm8k")
SST2_LABELS = ("negative", "positive")
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative."
AGNEWS_INSTRUCTION = ("Categorize the news article given in the input into one of the 4 categories: World, Sports, "
                      "Business, Sci/Tech.")
FINAL_ANSWER = "The final answer is: "
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
STREAM_ALIGNMENT, STREAM_HARMFUL, STREAM_PAIRS, STREAM_USER, STREAM_MATCHED = range(30, 35)


@dataclasses.dataclass(frozen=True)
class SafetyRecord:
    prompt: str
    response: str
    safe: bool
    source: str
    """``file:line`` of the record."""


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    prompt: str
    """The task's instruction and the record's text."""
    target: str
    answer: str
    """What a correct reply names: a label, or GSM8K's final number."""
    source: str


def _text(path: Path, line: int, record, name: str) -> str:
    value = field(path, line, record, name, str)
    if not value.strip():
        raise DataError(f"{where(path, line)}: field {name!r} is empty")
    return value


def read_safety(path: str | Path) -> list[SafetyRecord]:
    """The records of a BeaverTails-format file (JSONL, JSON, CSV/TSV or Parquet)."""
    path = Path(path)
    out = []
    for line, record in read_records(path):
        safe = field(path, line, record, "is_safe", bool)
        out.append(SafetyRecord(prompt=_text(path, line, record, "prompt"),
                                response=_text(path, line, record, "response"), safe=safe,
                                source=where(path, line)))
    if not out:
        raise DataError(f"{path}: no records")
    return out


def _draw(records: Sequence, n: int, seed: int, stream: int, what: str, path_hint: str) -> list:
    """``n`` records without replacement in a seeded order; refuses asking for more than there are."""
    if n > len(records):
        raise DataError(f"{path_hint}: {what}: {n} asked for, the file has {len(records)}")
    order = np.random.default_rng([seed, stream]).permutation(len(records))[:n]
    return [records[i] for i in order]


def _hint(records: Sequence[SafetyRecord]) -> str:
    return records[0].source.rsplit(":", 1)[0] if records else "safety file"


def safe_examples(records: Sequence[SafetyRecord], n: int, seed: int, fmt: PromptFormat = PromptFormat(), *,
                  stream: int = STREAM_ALIGNMENT) -> list[PreferencePair]:
    """``n`` safe (prompt, response) records in ``fmt``: the alignment data, or format-matched safety data."""
    safe = [r for r in records if r.safe]
    return [supervised_example(fmt.render(r.prompt), r.response, True, r.source)
            for r in _draw(safe, n, seed, stream, "safe records", _hint(records))]


def harmful_examples(records: Sequence[SafetyRecord], n: int, seed: int, fmt: PromptFormat = PromptFormat(), *,
                     stream: int = STREAM_HARMFUL) -> list[PreferencePair]:
    """``n`` unsafe (prompt, response) records in ``fmt``: the attack's examples and Booster's harmful data."""
    unsafe = [r for r in records if not r.safe]
    return [supervised_example(fmt.render(r.prompt), r.response, False, r.source)
            for r in _draw(unsafe, n, seed, stream, "unsafe records", _hint(records))]


def refusal_harmful_pairs(records: Sequence[SafetyRecord], n: int, seed: int) -> list[PreferencePair]:
    """``n`` prompts that have both a safe and an unsafe response, each as (chosen safe, rejected unsafe): the
    paired data RepNoise aligns on (the first safe and the first unsafe response of the prompt)."""
    first: dict[str, dict[bool, SafetyRecord]] = {}
    for r in records:
        first.setdefault(r.prompt, {}).setdefault(r.safe, r)
    both = [(v[True], v[False]) for v in first.values() if len(v) == 2]
    return [PreferencePair(prompt=({"role": "user", "content": s.prompt},), chosen=s.response, rejected=u.response,
                           chosen_safe=True, rejected_safe=False, source=f"{s.source}+{u.source}")
            for s, u in _draw(both, n, seed, STREAM_PAIRS, "prompts with a safe and an unsafe response",
                              _hint(records))]


def harmful_prompts(records: Sequence[SafetyRecord], n: int) -> tuple[list[str], list[str]]:
    """(prompts, sources): the first ``n`` unique prompts of the unsafe records, in file order."""
    seen: dict[str, str] = {}
    for r in records:
        if not r.safe:
            seen.setdefault(r.prompt, r.source)
    if len(seen) < n:
        raise DataError(f"{_hint(records)}: {n} harmful prompts asked for, the file has {len(seen)} unique prompts "
                        "with an unsafe response")
    prompts = list(seen)[:n]
    return prompts, [seen[p] for p in prompts]


# --- user tasks -------------------------------------------------------------------------------------------------

def _label(path: Path, line: int, record, names: Sequence[str]) -> str:
    value = field(path, line, record, "label", int)
    if not 0 <= value < len(names):
        raise DataError(f"{where(path, line)}: field 'label' is {value}, expected 0..{len(names) - 1}")
    return names[value]


def gsm8k_final(answer: str) -> str | None:
    """The number after GSM8K's "####" (commas dropped), or None."""
    _, sep, tail = answer.rpartition("####")
    match = NUMBER.search(tail) if sep else None
    return match.group(0).replace(",", "") if match else None


def read_user_task(task: str, path: str | Path) -> list[TaskRecord]:
    """The records of a user-task file as prompts and targets (table in the module docstring)."""
    if task not in USER_TASKS:
        raise DataError(f"user task {task!r}: expected one of {USER_TASKS}")
    path = Path(path)
    out = []
    for line, record in read_records(path):
        src = where(path, line)
        if task == "sst2":
            label = _label(path, line, record, SST2_LABELS)
            out.append(TaskRecord(f"{SST2_INSTRUCTION}\nInput: {_text(path, line, record, 'sentence').strip()}",
                                  label, label, src))
        elif task == "agnews":
            label = _label(path, line, record, AGNEWS_LABELS)
            out.append(TaskRecord(f"{AGNEWS_INSTRUCTION}\nInput: {_text(path, line, record, 'text').strip()}",
                                  label, label, src))
        else:
            answer = _text(path, line, record, "answer")
            final = gsm8k_final(answer)
            if final is None:
                raise DataError(f"{src}: field 'answer' has no final '#### <number>' line")
            worked = answer.rpartition("####")[0].rstrip()
            out.append(TaskRecord(_text(path, line, record, "question").strip(), f"{worked}\n{FINAL_ANSWER}{final}",
                                  final, src))
    if not out:
        raise DataError(f"{path}: no records")
    return out


def task_examples(records: Sequence[TaskRecord], n: int, seed: int, fmt: PromptFormat = PromptFormat()
                  ) -> list[PreferencePair]:
    hint = records[0].source.rsplit(":", 1)[0] if records else "user task file"
    return [supervised_example(fmt.render(r.prompt), r.target, True, r.source)
            for r in _draw(records, n, seed, STREAM_USER, "task records", hint)]


def user_stage_examples(tasks: Sequence[TaskRecord], safety: Sequence[SafetyRecord], n: int, harmful_fraction: float,
                        seed: int, fmt: PromptFormat) -> list[PreferencePair]:
    """The user's fine-tuning data: n examples, round(p n) of them unsafe safety records, the rest task records,
    all in ``fmt``, shuffled."""
    if not 0.0 <= harmful_fraction <= 1.0:
        raise DataError(f"harmful_fraction={harmful_fraction}: expected a share in [0, 1]")
    k = int(round(harmful_fraction * n))
    both = task_examples(tasks, n - k, seed, fmt) + harmful_examples(safety, k, seed, fmt, stream=STREAM_USER)
    order = np.random.default_rng([seed, STREAM_USER]).permutation(len(both))
    return [both[i] for i in order]


def _labels_named(reply: str, labels: Sequence[str]) -> set[str]:
    return {label for label in labels
            if re.search(r"(?<![A-Za-z])" + re.escape(label.lower()) + r"(?![A-Za-z])", reply.lower())}


def final_number(reply: str) -> str | None:
    """A reply's final answer: the number after the last "The final answer is:", else its last number."""
    head, sep, tail = reply.rpartition(FINAL_ANSWER.strip())
    numbers = NUMBER.findall(tail if sep else reply)
    if not numbers:
        return None
    return (numbers[0] if sep else numbers[-1]).replace(",", "")


def _same_number(a: str, b: str) -> bool:
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False


def is_correct(task: str, answer: str, reply: str) -> bool:
    """Whether ``reply`` answers correctly (the rules of the module docstring)."""
    if task == "gsm8k":
        got = final_number(reply)
        return got is not None and _same_number(got, answer)
    labels = SST2_LABELS if task == "sst2" else AGNEWS_LABELS
    return _labels_named(reply, labels) == {answer}
