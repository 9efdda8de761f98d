"""Multiple-choice tasks: the in-memory schema and the generic JSONL task file.

A question offers choices i = 0..n-1, each a (context c_i, continuation y_i) pair whose log-likelihood
log p(y_i | c_i) the model is asked for. Two layouts cover the paper's discriminative benchmarks:

* full scoring: one context c shared by every choice, y_i = delimiter + choice_i (most tasks);
* partial scoring (Winogrande; Trinh & Le 2018): the option is substituted into the context, c_i = prefix +
  option_i, and the shared rest of the sentence is scored, y_i = y.

The JSONL schema, one question per line:

    {"context": "...", "choices": ["...", "..."], "gold": 1}              full scoring, one correct choice
    {"context": "...", "choices": [...], "golds": [0, 2]}                 several correct choices (TruthfulQA-MC2)
    {"contexts": ["...", "..."], "continuation": "...", "gold": 0}        partial scoring

A per-task ``template`` (Python ``str.format`` fields over the record, e.g. ``"Q: {context}\\nA:"``) builds the
context; ``target_delimiter`` (default one space) goes between the context and each choice.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bfpo.errors import DataError
from bfpo.eval.files import field, read_records, where

AXES = ("helpfulness", "harmlessness")
"""The two axes a discriminative task counts toward."""

METRICS = {"acc": True, "acc_norm": True, "mc2": True, "pct_stereotype": False}
"""Headline metric of a task -> whether higher is better. ``acc`` (with ``acc_norm`` reported beside it),
``mc2`` (TruthfulQA-MC2's normalised mass on the true answers) and ``pct_stereotype`` (CrowS-Pairs: the fraction
of pairs where the more stereotypical sentence is more likely; lower is better, 0.5 is no preference)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Question:
    """One multiple-choice question: ``pairs[i] = (context, continuation)`` of choice i, the correct choices,
    and the length in characters of each choice's text (the denominator of ``acc_norm``)."""

    pairs: tuple[tuple[str, str], ...]
    golds: tuple[int, ...]
    norm_lengths: tuple[int, ...]
    source: str = "<memory>"
    """Where the question came from, ``file:line``; every error about it names this."""

    def __post_init__(self):
        n = len(self.pairs)
        if n < 2:
            raise DataError(f"{self.source}: a question needs at least 2 choices, got {n}")
        if len(self.norm_lengths) != n:
            raise DataError(f"{self.source}: {len(self.norm_lengths)} norm_lengths for {n} choices")
        if not self.golds:
            raise DataError(f"{self.source}: no correct choice given")
        for g in self.golds:
            if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < n:
                raise DataError(f"{self.source}: gold index {g!r} is out of range for {n} choices")
        if len(set(self.golds)) != len(self.golds):
            raise DataError(f"{self.source}: repeated gold indices {list(self.golds)}")
        for i, (context, continuation) in enumerate(self.pairs):
            if not isinstance(context, str) or not isinstance(continuation, str):
                raise DataError(f"{self.source}: choice {i} is not text: {(context, continuation)!r:.80}")
            if not continuation:
                raise DataError(f"{self.source}: choice {i} has an empty continuation; nothing to score")

    @classmethod
    def full(cls, context: str, choices: Sequence[str], golds: Sequence[int], *, target_delimiter: str = " ",
             source: str = "<memory>") -> "Question":
        """Full scoring: the same context for every choice, each scored as ``target_delimiter + choice``."""
        if not isinstance(choices, (list, tuple)) or not choices:
            raise DataError(f"{source}: 'choices' must be a non-empty list of strings, got {choices!r:.80}")
        for i, choice in enumerate(choices):
            if not isinstance(choice, str) or not choice:
                raise DataError(f"{source}: choices[{i}] is {choice!r:.60}, expected a non-empty string")
        return cls(pairs=tuple((context, target_delimiter + c) for c in choices), golds=tuple(golds),
                   norm_lengths=tuple(len(c) for c in choices), source=source)

    @classmethod
    def partial(cls, contexts: Sequence[str], continuation: str, golds: Sequence[int], *,
                source: str = "<memory>") -> "Question":
        """Partial scoring: a different context per choice, one shared continuation."""
        if not isinstance(contexts, (list, tuple)) or not contexts:
            raise DataError(f"{source}: 'contexts' must be a non-empty list of strings, got {contexts!r:.80}")
        for i, context in enumerate(contexts):
            if not isinstance(context, str):
                raise DataError(f"{source}: contexts[{i}] is {context!r:.60}, expected a string")
        return cls(pairs=tuple((c, continuation) for c in contexts), golds=tuple(golds),
                   norm_lengths=(len(continuation),) * len(contexts), source=source)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    """A named set of questions, the axis it counts toward and its headline metric."""

    name: str
    axis: str
    metric: str = "acc"
    questions: tuple[Question, ...]
    source: str = "<memory>"

    def __post_init__(self):
        if not self.name:
            raise DataError(f"{self.source}: Task.name must be non-empty")
        if self.axis not in AXES:
            raise DataError(f"{self.source}: Task.axis={self.axis!r}: expected one of {AXES}")
        if self.metric not in METRICS:
            raise DataError(f"{self.source}: Task.metric={self.metric!r}: expected one of {sorted(METRICS)}")
        if not self.questions:
            raise DataError(f"{self.source}: task {self.name!r} has no questions")

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric]


def render(template: str | None, record: Mapping[str, Any], default_field: str, source: str) -> str:
    """The context: ``template`` formatted over the record's fields, or the record's ``default_field``."""
    if template is None:
        value = record.get(default_field)
        if not isinstance(value, str):
            raise DataError(f"{source}: field {default_field!r} is {value!r:.60}, expected a string")
        return value
    try:
        return template.format_map(record)
    except KeyError as e:
        raise DataError(f"{source}: template field {e.args[0]!r} is not in the record (fields: {sorted(record)})"
                        ) from e


def gold_indices(path, line: int, record: Mapping[str, Any]) -> tuple[int, ...]:
    """``gold`` (one index) or ``golds`` (a list of indices)."""
    if "golds" in record:
        golds = field(path, line, record, "golds", list)
        if not golds:
            raise DataError(f"{where(path, line)}: field 'golds' is empty")
        for g in golds:
            if isinstance(g, bool) or not isinstance(g, int):
                raise DataError(f"{where(path, line)}: field 'golds' holds {g!r}, expected integers")
        return tuple(golds)
    return (field(path, line, record, "gold", int),)


def question_from_record(path, line: int, record: Mapping[str, Any], *, template: str | None = None,
                         target_delimiter: str = " ") -> Question:
    source = where(path, line)
    golds = gold_indices(path, line, record)
    if "contexts" in record:
        continuation = field(path, line, record, "continuation", str)
        return Question.partial(record["contexts"], continuation, golds, source=source)
    if "choices" not in record:
        raise DataError(f"{source}: missing field 'choices' (or 'contexts' + 'continuation' for partial scoring)")
    context = render(template, record, "context", source)
    return Question.full(context, record["choices"], golds, target_delimiter=target_delimiter, source=source)


def load_task(path: str | os.PathLike, *, axis: str, name: str | None = None, metric: str = "acc",
              template: str | None = None, target_delimiter: str = " ") -> Task:
    """A task from a file in the schema above (JSONL, JSON array, or Parquet with the same fields)."""
    path = Path(path)
    questions = tuple(question_from_record(path, line, record, template=template, target_delimiter=target_delimiter)
                      for line, record in read_records(path))
    return Task(name=name or path.stem, axis=axis, metric=metric, questions=questions, source=str(path))
