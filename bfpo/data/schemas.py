"""The record schemas BFPO trains on, each mapped to (x, y_hw, y_hl, s_w, s_l) as in the official data code.

* ``pku_saferlhf`` (PKU-SafeRLHF): ``prompt``, ``response_0``/``response_1``, ``better_response_id`` in {0, 1},
  optional ``safer_response_id`` in {0, 1}, ``is_response_0_safe``/``is_response_1_safe``.
  y_hw = response_{better}, y_hl = response_{1 - better}, s = is_response_{k}_safe of the same side.
* ``red_teaming`` (the paper's red-teaming JSON): ``prompt``, ``modeloutput1``/``modeloutput2``,
  ``better_modelout`` in {1, 2}, ``is_modelout1_safe``/``is_modelout2_safe``; mapped the same way.
* ``chosen_rejected`` (UltraFeedback-binarized, HH-RLHF): ``chosen``/``rejected`` as message lists or HH
  transcripts (``bfpo.data.conversations``); y_hw = chosen, y_hl = rejected, s_w = s_l = 1 (helpfulness-only
  data: on these pairs BFPO's target is IPO's). The prompt is the conversation before the final assistant turn,
  which both sides must share, or the ``prompt`` field when the sides hold only the response.

Safety is never inferred from helpfulness: ``safer_response_id`` is checked for type and range only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bfpo.data.conversations import split_conversation
from bfpo.data.records import PreferencePair, Problem
from bfpo.data.validation import (BAD_CONVERSATION, EMPTY_PROMPT, EMPTY_RESPONSE, MISSING, WRONG_TYPE, FieldCheck,
                                  type_name)
from bfpo.errors import DataError


@dataclass(frozen=True)
class Schema:
    name: str
    marker_fields: tuple[str, ...]  # any of these in a record's fields identifies the schema
    convert: Callable[[FieldCheck, str], PreferencePair | None]


def user_prompt(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


def two_response_pair(check: FieldCheck, source: str, *, responses: tuple[str, str], flags: tuple[str, str],
                      better: str, ids: tuple[int, int], extra_ids: tuple[str, ...] = ()) -> PreferencePair | None:
    """Shared by the PKU and red-teaming layouts, which differ only in field names and id base."""
    prompt = check.text("prompt", empty_reason=EMPTY_PROMPT)
    texts = [check.text(name, empty_reason=EMPTY_RESPONSE) for name in responses]
    safe = [check.flag(name) for name in flags]
    better_id = check.choice(better, ids)
    for name in extra_ids:
        check.choice(name, ids, required=False)
    if check.problems:
        return None
    w = ids.index(better_id)
    return PreferencePair(prompt=user_prompt(prompt), chosen=texts[w], rejected=texts[1 - w],
                          chosen_safe=safe[w], rejected_safe=safe[1 - w], source=source)


def pku_saferlhf(check: FieldCheck, source: str) -> PreferencePair | None:
    return two_response_pair(check, source, responses=("response_0", "response_1"),
                             flags=("is_response_0_safe", "is_response_1_safe"), better="better_response_id",
                             ids=(0, 1), extra_ids=("safer_response_id",))


def red_teaming(check: FieldCheck, source: str) -> PreferencePair | None:
    return two_response_pair(check, source, responses=("modeloutput1", "modeloutput2"),
                             flags=("is_modelout1_safe", "is_modelout2_safe"), better="better_modelout", ids=(1, 2))


def chosen_rejected(check: FieldCheck, source: str) -> PreferencePair | None:
    sides = {}
    for name in ("chosen", "rejected"):
        if check.present(name):
            sides[name] = split_conversation(check, name)
    if check.problems:
        return None
    (chosen_prefix, chosen), (rejected_prefix, rejected) = sides["chosen"], sides["rejected"]
    if chosen_prefix != rejected_prefix:
        check.add("rejected", BAD_CONVERSATION, "the conversation before the final assistant turn differs from "
                                                "the one in 'chosen'; both responses must answer the same prompt")
        return None
    prompt = chosen_prefix or prompt_field(check)
    if check.problems:
        return None
    return PreferencePair(prompt=tuple(prompt), chosen=chosen, rejected=rejected, chosen_safe=True,
                          rejected_safe=True, source=source)


def prompt_field(check: FieldCheck) -> list[dict[str, str]]:
    """The prompt of a record whose sides hold only the response."""
    if "prompt" not in check.record:
        check.add("prompt", MISSING, "missing (the 'chosen'/'rejected' sides hold no conversation before the "
                                     "response, so the prompt must come from this field)")
        return []
    value = check.record["prompt"]
    if isinstance(value, str):
        if not value.strip():
            check.add("prompt", EMPTY_PROMPT, "expected non-blank text, got an empty string")
            return []
        return list(user_prompt(value))
    check.add("prompt", WRONG_TYPE, f"expected a string, got {type_name(value)}")
    return []


SCHEMAS = {
    "pku_saferlhf": Schema("pku_saferlhf", ("response_0", "response_1", "better_response_id"), pku_saferlhf),
    "red_teaming": Schema("red_teaming", ("modeloutput1", "modeloutput2", "better_modelout"), red_teaming),
    "chosen_rejected": Schema("chosen_rejected", ("chosen", "rejected"), chosen_rejected),
}


def detect_schema(record: object, location: str) -> Schema:
    """The schema whose marker fields the record has (the first record of a file decides for the file)."""
    if not isinstance(record, dict):
        raise DataError(f"{location}: cannot detect the schema: expected a JSON object, got {type_name(record)}")
    matches = [s for s in SCHEMAS.values() if any(f in record for f in s.marker_fields)]
    if len(matches) != 1:
        known = "; ".join(f"{s.name}: {', '.join(s.marker_fields)}" for s in SCHEMAS.values())
        found = "none" if not matches else ", ".join(s.name for s in matches)
        raise DataError(f"{location}: cannot detect the schema from fields {sorted(record)[:12]} (matches: {found}); "
                        f"known schemas and their marker fields: {known}; pass schema= explicitly")
    return matches[0]


def get_schema(name: str) -> Schema:
    if name not in SCHEMAS:
        raise DataError(f"schema={name!r}: expected one of {sorted(SCHEMAS)}")
    return SCHEMAS[name]


def convert_record(schema: Schema, record: object, source: str) -> tuple[PreferencePair | None, list[Problem]]:
    """(pair, []) for a good record, (None, every problem) for a bad one."""
    if not isinstance(record, dict):
        return None, [Problem("<record>", "not_an_object", f"expected a JSON object, got {type_name(record)}")]
    check = FieldCheck(record)
    pair = schema.convert(check, source)
    return (pair, []) if pair is not None and not check.problems else (None, check.problems)
