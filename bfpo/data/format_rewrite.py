"""Format matching by a local model: each safety example's request rewritten by a causal LM in the style of the
user's own prompts (Eiras et al., ICLR 2025, paraphrase the safety data into the task's format with a model; the
paper gives no code, so the instruction here is this package's own).

The model is asked, through its chat template, with a few of the user's prompts as examples of the style and one
request to rewrite, and replies greedily; the reply (stripped) becomes the example's prompt, its response and labels
unchanged. A reply that comes back empty raises ``DataError`` naming the example: a silently dropped or unrewritten
example would change the mix the user asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bfpo.data.records import PreferencePair
from bfpo.errors import DataError

REWRITE_INSTRUCTION = (
    "Here are some requests, all written in the same style:\n\n{examples}\n\n"
    "Write the following request in exactly that style, keeping what it asks for. Reply with the rewritten request "
    "only.\n\nRequest: {request}")


def rewrite_instruction(style_examples: Sequence[str], request: str) -> str:
    """The question put to the rewriting model for one request."""
    if not style_examples:
        raise DataError("format rewriting needs at least one of the user's prompts as an example of the style")
    shown = "\n\n".join(f"Example {i + 1}: {p}" for i, p in enumerate(style_examples))
    return REWRITE_INSTRUCTION.format(examples=shown, request=request)


def rewrite_with_model(model, tokenizer, safety: Sequence[PreferencePair], style_examples: Sequence[str], sampling,
                       *, batch_size: int, mesh=None) -> list[PreferencePair]:
    """``safety`` (single user turns) with each request rewritten by ``model`` in the style of ``style_examples``;
    ``sampling`` is usually greedy (``SamplingConfig(temperature=0.0)``)."""
    from bfpo.eval.generative import conversation, generate_texts  # generation is only needed here

    requests = []
    for ex in safety:
        if len(ex.prompt) != 1 or ex.prompt[0].get("role") != "user":
            raise DataError(f"{ex.source}: format rewriting takes single user turns; this prompt has "
                            f"{[m.get('role') for m in ex.prompt]}")
        requests.append(ex.prompt[0]["content"])
    ids = [tokenizer.encode_chat(conversation(rewrite_instruction(style_examples, r))) for r in requests]
    replies = generate_texts(model, tokenizer, ids, sampling, batch_size=batch_size, mesh=mesh)
    out = []
    for i, (ex, reply) in enumerate(zip(safety, replies)):
        text = reply.strip()
        if not text:
            raise DataError(f"{ex.source}: the rewriting model replied with nothing for request {requests[i]!r:.80}; "
                            "give it more new tokens or another model, or match the format by a template")
        out.append(dataclasses.replace(ex, prompt=({"role": "user", "content": text},),
                                       source=f"format-matched:model:{ex.source}"))
    return out
