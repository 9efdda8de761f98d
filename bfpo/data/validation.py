"""Field checks that collect every problem of a record instead of stopping at the first one.

A schema reads its fields through one ``FieldCheck`` per record; each accessor returns the value, or None
after recording a ``Problem`` (missing field, wrong type, value out of range, empty text), so that the error
for a bad record lists all of its problems at once.
"""

from __future__ import annotations

import numbers
from typing import Any

from bfpo.data.records import Problem

MISSING = "missing_field"
WRONG_TYPE = "wrong_type"
OUT_OF_RANGE = "out_of_range"
EMPTY_RESPONSE = "empty_response"
EMPTY_PROMPT = "empty_prompt"
BAD_CONVERSATION = "bad_conversation"
NOT_AN_OBJECT = "not_an_object"
INVALID_JSON = "invalid_json"


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class FieldCheck:
    """Typed access to the fields of one record; problems accumulate in ``problems``."""

    def __init__(self, record: dict):
        self.record = record
        self.problems: list[Problem] = []

    def add(self, field: str, reason: str, message: str) -> None:
        self.problems.append(Problem(field, reason, message))

    def present(self, name: str) -> bool:
        if name not in self.record:
            self.add(name, MISSING, "missing")
            return False
        return True

    def text(self, name: str, *, empty_reason: str) -> str | None:
        """A non-blank string."""
        if not self.present(name):
            return None
        value = self.record[name]
        if not isinstance(value, str):
            self.add(name, WRONG_TYPE, f"expected a string, got {type_name(value)} {value!r:.60}")
            return None
        if not value.strip():
            self.add(name, empty_reason, "expected non-blank text, got an empty string")
            return None
        return value

    def flag(self, name: str) -> bool | None:
        """A safety flag: a bool, or the integers 0 / 1 that some exports write instead."""
        if not self.present(name):
            return None
        value = self.record[name]
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Integral) and int(value) in (0, 1):
            return bool(value)
        self.add(name, WRONG_TYPE, f"expected a bool (true/false), got {type_name(value)} {value!r:.60}")
        return None

    def choice(self, name: str, allowed: tuple[int, ...], *, required: bool = True) -> int | None:
        """An integer id from ``allowed`` (bools are refused: ``true`` is not a response id)."""
        if name not in self.record and not required:
            return None
        if not self.present(name):
            return None
        value = self.record[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            self.add(name, WRONG_TYPE, f"expected an integer in {list(allowed)}, got {type_name(value)} "
                                       f"{value!r:.60}")
            return None
        if int(value) not in allowed:
            self.add(name, OUT_OF_RANGE, f"expected one of {list(allowed)}, got {int(value)}")
            return None
        return int(value)
