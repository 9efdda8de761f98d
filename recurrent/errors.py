"""The one error type of the recurrent package: every problem with a program, a compilation or an execution."""

from __future__ import annotations

from collections.abc import Sequence


class CompileError(ValueError):
    """A program, a compilation setting or a compiled model is invalid.

    ``problems`` lists every problem found (the validator reports all of them at once); the message joins them,
    one per line, each naming the node (``Linear#12 'Sum'``) or the field and what was expected.
    """

    def __init__(self, problems: str | Sequence[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class ConfigError(CompileError):
    """A study's or benchmark's setting (an LSRL experiment config) is invalid."""
