"""Format-matched safety data (Eiras et al., "Do as I do (Safely): Mitigating Task-Specific Fine-tuning Risks in
Large Language Models", ICLR 2025): safety examples (a harmful request and a refusal) rewritten in the prompt style
of the user's own task data and mixed into it, so that fine-tuning on the user's format keeps refusing there.

The paper gives no code. Here a user's prompt style is a ``PromptFormat``: a template with one ``{input}`` field
that every prompt of the user's data fills (an instruction header, a task prefix, a question frame). ``mix``
adds round(ratio x n) rewritten safety examples to n user examples, so ``ratio`` is safety examples per user
example, and shuffles the result with its own seed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from bfpo.data.records import PreferencePair
from bfpo.errors import DataError

FIELD = "{input}"


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """A prompt style: ``template`` with exactly one ``{input}`` where the request goes ("{input}": the request
    as it is)."""

    template: str = FIELD

    def __post_init__(self):
        if self.template.count(FIELD) != 1:
            raise DataError(f"PromptFormat.template={self.template!r}: expected exactly one {FIELD} (where the "
                            "request goes)")
        rest = self.template.replace(FIELD, "")
        if "{" in rest or "}" in rest:
            raise DataError(f"PromptFormat.template={self.template!r}: braces other than {FIELD} are not allowed")

    def render(self, request: str) -> str:
        return self.template.replace(FIELD, request)

    def unwrap(self, prompt: str) -> str:
        """The request inside a prompt of this style; ``DataError`` if the prompt does not have it."""
        head, tail = self.template.split(FIELD)
        match = re.fullmatch(re.escape(head) + r"(.*)" + re.escape(tail), prompt, flags=re.DOTALL)
        if match is None:
            raise DataError(f"prompt {prompt!r:.80}: not in the format {self.template!r}")
        return match.group(1)


def rewrite(examples: Sequence[PreferencePair], fmt: PromptFormat, *, source: str = "format-matched"
            ) -> list[PreferencePair]:
    """Each single-turn example with its request rendered in ``fmt`` (responses and labels unchanged)."""
    out = []
    for i, ex in enumerate(examples):
        if len(ex.prompt) != 1 or ex.prompt[0].get("role") != "user":
            raise DataError(f"{ex.source}: format matching rewrites single user turns; this prompt has "
                            f"{[m.get('role') for m in ex.prompt]}")
        prompt = ({"role": "user", "content": fmt.render(ex.prompt[0]["content"])},)
        out.append(dataclasses.replace(ex, prompt=prompt, source=f"{source}:{ex.source}:{i}"))
    return out


def mix(user: Sequence[PreferencePair], safety: Sequence[PreferencePair], ratio: float, seed: int
        ) -> list[PreferencePair]:
    """The user's examples plus the first round(ratio x len(user)) of ``safety`` (already in the user's format),
    shuffled by ``seed``; refuses a ratio that asks for more safety examples than given."""
    if not (ratio >= 0 and np.isfinite(ratio)):
        raise DataError(f"format-matched mixing ratio {ratio}: expected a finite value >= 0")
    k = int(round(ratio * len(user)))
    if k > len(safety):
        raise DataError(f"format-matched mixing ratio {ratio}: needs {k} safety examples, {len(safety)} given")
    both = list(user) + list(safety[:k])
    order = np.random.default_rng([seed, 7]).permutation(len(both))
    return [both[i] for i in order]
