"""What a loaded preference record becomes, and the account of what loading dropped.

A ``PreferencePair`` is one prompt x with two responses ordered by helpfulness, y_hw (``chosen``, the more
helpful) and y_hl (``rejected``), and one binary safety label per response, s_w = I_safe(y_hw) and
s_l = I_safe(y_hl): the tuple (x, y_hw, y_hl, s_w, s_l) BFPO's labeling function g(s_w, s_l) consumes
(``bfpo.labeling``). Helpfulness-only data (UltraFeedback, HH-RLHF) is labelled safe/safe, where BFPO
reduces to IPO.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bfpo.errors import DataError

Message = dict[str, str]

# How many problem messages a LoadReport keeps verbatim; the counts cover all of them.
REPORT_MESSAGES = 5


@dataclass(frozen=True, kw_only=True)
class PreferencePair:
    """One helpfulness-ordered pair with per-response safety labels.

    ``prompt`` is the conversation before the responses (a list of ``{"role", "content"}`` messages, the last
    one normally the user's turn); ``chosen`` / ``rejected`` are the assistant texts; ``source`` is where the
    record came from (``"path:line"`` for JSONL, ``"path:record N"`` for record-indexed formats).
    """

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    chosen_safe: bool
    rejected_safe: bool
    source: str = ""

    def __post_init__(self):
        prompt = tuple(self.prompt)
        if not prompt:
            raise DataError(f"{self.source or 'PreferencePair'}: field 'prompt': expected at least one message")
        for i, message in enumerate(prompt):
            if (not isinstance(message, dict) or set(message) != {"role", "content"}
                    or not all(isinstance(v, str) for v in message.values())):
                raise DataError(f"{self.source or 'PreferencePair'}: field 'prompt[{i}]': expected "
                                f"{{'role': str, 'content': str}}, got {message!r}")
        object.__setattr__(self, "prompt", prompt)
        for name in ("chosen", "rejected"):
            if not isinstance(getattr(self, name), str):
                raise DataError(f"{self.source or 'PreferencePair'}: field '{name}': expected a string")
        for name in ("chosen_safe", "rejected_safe"):
            if not isinstance(getattr(self, name), bool):
                raise DataError(f"{self.source or 'PreferencePair'}: field '{name}': expected a bool")

    @property
    def pair_type(self) -> str:
        """The pair's name in ``bfpo.labeling.PAIR_TYPES`` (safe_safe, safe_unsafe, unsafe_safe, unsafe_unsafe)."""
        side = lambda safe: "safe" if safe else "unsafe"  # noqa: E731
        return f"{side(self.chosen_safe)}_{side(self.rejected_safe)}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a record: the field at fault (or ``<record>``), a reason key and a message."""

    field: str
    reason: str
    message: str


@dataclass
class LoadReport:
    """What a load read, kept and dropped. Nothing is dropped silently: every dropped record is counted.

    ``reasons`` counts problems by reason (a record with two problems counts under both), ``dropped`` counts
    records; ``messages`` keeps the first few full messages (file, line or record, field, what was expected).
    """

    path: str
    schema: str
    records: int = 0
    kept: int = 0
    dropped: int = 0
    reasons: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def add_bad(self, location: str, problems: list[Problem]) -> None:
        self.dropped += 1
        for p in problems:
            self.reasons[p.reason] += 1
        if len(self.messages) < REPORT_MESSAGES:
            self.messages.append(format_problems(location, problems))

    def summary(self) -> str:
        text = f"{self.path} ({self.schema}): {self.records} records, kept {self.kept}, dropped {self.dropped}"
        if self.dropped:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items())) + ")"
            text += "".join("\n  " + m.replace("\n", "\n  ") for m in self.messages)
        return text


def format_problems(location: str, problems: list[Problem]) -> str:
    """Every problem of one record, each naming its location and field, in one message."""
    if len(problems) == 1:
        p = problems[0]
        return f"{location}: field '{p.field}': {p.message}"
    lines = [f"{location}: {len(problems)} problems"]
    lines += [f"  field '{p.field}': {p.message}" for p in problems]
    return "\n".join(lines)
