"""Conversations in chosen/rejected records: a message list or HH-RLHF's plain-text transcript, split into the
conversation before the final assistant turn (the prompt) and that turn's text (the response).

HH-RLHF writes a dialogue as ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; UltraFeedback-binarized and most chat
datasets write ``[{"role": ..., "content": ...}, ...]``. Either way the last turn must be the assistant's.
A plain string without HH markers is the response alone; its prompt comes from the record's ``prompt`` field.
"""

from __future__ import annotations

import re

from bfpo.data.records import Message
from bfpo.data.validation import BAD_CONVERSATION, EMPTY_RESPONSE, WRONG_TYPE, FieldCheck, type_name

HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def split_conversation(check: FieldCheck, name: str) -> tuple[list[Message], str] | None:
    """(messages before the final assistant turn, its text) of field ``name``, or None after recording why."""
    value = check.record[name]
    if isinstance(value, str):
        return split_hh_text(check, name, value)
    if isinstance(value, (list, tuple)):
        return split_messages(check, name, list(value))
    check.add(name, WRONG_TYPE, f"expected a list of {{role, content}} messages or a string, got {type_name(value)}")
    return None


def split_messages(check: FieldCheck, name: str, messages: list) -> tuple[list[Message], str] | None:
    if not messages:
        check.add(name, EMPTY_RESPONSE, "expected at least one message, got an empty list")
        return None
    ok = True
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            check.add(f"{name}[{i}]", WRONG_TYPE, f"expected {{'role': str, 'content': str}}, got {m!r:.80}")
            ok = False
    if not ok:
        return None
    last = messages[-1]
    if last["role"] != "assistant":
        check.add(f"{name}[{len(messages) - 1}].role", BAD_CONVERSATION,
                  f"expected the last message to be the assistant's response, got role {last['role']!r}")
        return None
    if not last["content"].strip():
        check.add(f"{name}[{len(messages) - 1}].content", EMPTY_RESPONSE, "expected a non-blank response")
        return None
    prefix = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    return prefix, last["content"]


def split_hh_text(check: FieldCheck, name: str, text: str) -> tuple[list[Message], str] | None:
    parts = HH_TURN.split(text)
    if len(parts) == 1:
        if not text.strip():
            check.add(name, EMPTY_RESPONSE, "expected a non-blank response, got an empty string")
            return None
        return [], text
    if parts[0].strip():
        check.add(name, BAD_CONVERSATION, f"text before the first 'Human:'/'Assistant:' turn: {parts[0]!r:.60}")
        return None
    turns = [(HH_ROLES[parts[i]], parts[i + 1]) for i in range(1, len(parts), 2)]
    if turns[-1][0] != "assistant":
        check.add(name, BAD_CONVERSATION, "expected the transcript to end with an 'Assistant:' turn")
        return None
    if not turns[-1][1].strip():
        check.add(name, EMPTY_RESPONSE, "expected a non-blank final 'Assistant:' turn")
        return None
    return [{"role": role, "content": content} for role, content in turns[:-1]], turns[-1][1]
