"""``ForEach``: an LSRL program, the DAG reachable backwards from one output node, validated on construction.

It sits above both the language (``recurrent.lsrl.syntax``, the nodes) and its reference semantics
(``recurrent.lsrl.interpreter``, which runs a node list), so neither of those imports the other's dependants.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recurrent.errors import CompileError
from recurrent.lsrl import interpreter
from recurrent.lsrl.matrix import Matrix
from recurrent.lsrl.syntax import Input, LinState, Linear, Variable, validate


class ForEach:
    """An LSRL program: the DAG reachable backwards from ``output``, validated on construction.

    Calling it follows the published convention: ``x`` is a (dim, T) matrix whose columns are tokens; the
    states are reset and the (out_dim, T) outputs returned. A single column continues from the current state
    (streaming). ``recurrent.lsrl.interpreter`` holds the batched reference semantics used everywhere else.
    """

    def __init__(self, output: Variable, keep_graph_history: bool = False, verbose: bool = False):
        self.output = output
        self.nodes = validate(output)
        self.input = next(n for n in self.nodes if isinstance(n, Input))
        self.verbose = verbose
        self._stream_state: dict[int, np.ndarray] | None = None

    @property
    def in_dim(self) -> int:
        return self.input.dim

    @property
    def out_dim(self) -> int:
        return self.output.dim

    def state_variables(self) -> list[LinState]:
        return [n for n in self.nodes if isinstance(n, LinState)]

    def reset(self) -> None:
        self._stream_state = None

    def parameter_count(self) -> int:
        """Dense sizes of A, b of every Linear/Slice and A, B, bias of every LinState (the published count)."""
        total = 0
        for n in self.nodes:
            if isinstance(n, Linear):
                total += n.A.size + n.b.size
            elif isinstance(n, LinState):
                total += n.A.size + n.B.size + n.bias.size
        return total

    def __call__(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 0:
            x = x.reshape(1, 1)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[0] != self.in_dim:
            raise CompileError(f"ForEach: expected input of shape ({self.in_dim}, T), got {x.shape}")
        if x.shape[1] == 1:
            y, self._stream_state = interpreter.run(
                self, x.T[None], initial_states=self._stream_state, return_states=True
            )
            return Matrix(y[0].T)
        self.reset()
        return Matrix(interpreter.run(self, x.T[None])[0].T)
