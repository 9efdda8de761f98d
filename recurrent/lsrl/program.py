"""``ForEach``: an LSRL program, the DAG reachable backwards from one output node, validated on construction.

It sits above both the language (``recurrent.lsrl.syntax``, the nodes) and its reference semantics
(``recurrent.lsrl.interpreter``, which runs a node list), so neither of those imports the other's dependants.

The published interface, with its semantics:
* ``prog(x)``: ``x`` is (in_dim, T), columns are tokens. T > 1 resets every ``LinState`` first; T = 1 continues
  from the current states (streaming), so after a 3-token call a counter's next single token reads 3. The final
  states are written back into the nodes (``LinState.state``) after every call.
* Hooks (``node.hooks["before_forward"]`` / ``["after_forward"]``) run at every token when any node has one (the
  program is then run node by node, each through ``node(*inputs)``); otherwise the batched interpreter runs and
  gives the same values.
* ``graph()``, ``topological_sort()``, ``get_state_variables()``, ``validate_graph()``, ``reset()``,
  ``parameter_count`` (a property), ``save(filename)`` / ``ForEach.load(filename)`` (pickle, as published).
* ``simplify()``, ``debranch_graph()``, ``fold_same_type()``: on ``recurrent.lsrl.ForEach``
  (``recurrent.lsrl.compiled_program``, which sits above the compiler that this class sits below).
* ``MatrixMode.SYMBOLIC`` (``matrix_mode``) runs the interpreter in exact rational arithmetic.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from recurrent.errors import CompileError
from recurrent.lsrl import interpreter
from recurrent.lsrl.exact import rational_array
from recurrent.lsrl.matrix import Matrix, MatrixMode, get_global_matrix_mode
from recurrent.lsrl.syntax import Input, LinState, Linear, Variable, validate


class ForEach:
    """An LSRL program: the DAG reachable backwards from ``output``, validated on construction."""

    def __init__(self, output: Variable, keep_graph_history: bool = False, verbose: bool = False):
        self.keep_graph_history = keep_graph_history
        self.verbose = verbose
        self.simplification_history: list = []
        self._set_output(output)

    def _set_output(self, output: Variable) -> None:
        self.output = output
        self.nodes = validate(output)
        self.input = next(n for n in self.nodes if isinstance(n, Input))

    @property
    def in_dim(self) -> int:
        return self.input.dim

    @property
    def out_dim(self) -> int:
        return self.output.dim

    # --- the published graph interface ------------------------------------------------------------------------
    def graph(self, recompute: bool = False):
        return self.output.graph(recompute)

    def topological_sort(self, recompute: bool = False) -> list[Variable]:
        return list(self.nodes)

    def validate_graph(self) -> None:
        """Raises ``CompileError`` (a ``ValueError``) listing every problem of the DAG as it is now."""
        self._set_output(self.output)

    def state_variables(self) -> list[LinState]:
        return [n for n in self.nodes if isinstance(n, LinState)]

    def get_state_variables(self) -> list[LinState]:
        return self.state_variables()

    def reset(self) -> None:
        """Every state back to its ``init_state`` (the published per-sequence reset)."""
        for n in self.state_variables():
            n.reset()

    @property
    def parameter_count(self) -> int:
        """Dense sizes of A, b of every Linear/Slice and A, B, bias of every LinState (the published count)."""
        total = 0
        for n in self.nodes:
            if isinstance(n, Linear):
                total += n.A.size + n.b.size
            elif isinstance(n, LinState):
                total += n.A.size + n.B.size + n.bias.size
        return total

    def save(self, filename: str) -> None:
        """Pickles the program (weights, current states, hooks if picklable), as the published ``save``."""
        if os.path.dirname(filename):
            os.makedirs(os.path.dirname(filename), exist_ok=True)
        with open(filename, "wb") as f:
            pickle.dump(self, f, pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, filename: str) -> "ForEach":
        with open(filename, "rb") as f:
            program = pickle.load(f)
        if not isinstance(program, ForEach):
            raise CompileError(f"{filename}: holds a {type(program).__name__}, not a ForEach program")
        return program

    # --- running ----------------------------------------------------------------------------------------------
    def _has_hooks(self) -> bool:
        return any(n.hooks["before_forward"] or n.hooks["after_forward"] for n in self.nodes)

    def _tokens(self, x: Any, exact: bool) -> np.ndarray:
        if isinstance(x, (int, float)):
            x = [[x]]
        arr = np.asarray(x, dtype=object if exact and np.asarray(x).dtype == object else np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] != self.in_dim or arr.shape[1] < 1:
            raise CompileError(f"ForEach: expected input of shape ({self.in_dim}, T) with T >= 1, got {arr.shape}")
        return arr

    def _run_node_by_node(self, x: np.ndarray) -> np.ndarray:
        outputs = []
        for t in range(x.shape[1]):
            value: dict[int, Any] = {}
            for n in self.nodes:
                args = (x[:, t : t + 1],) if isinstance(n, Input) else tuple(value[i.uid] for i in n.inputs)
                value[n.uid] = n(*args)
            outputs.append(np.asarray(value[self.output.uid]))
        return np.hstack(outputs)

    def __call__(self, x: Any, **kwargs: Any):
        exact = get_global_matrix_mode() is MatrixMode.SYMBOLIC
        x = self._tokens(x, exact)
        if x.shape[1] > 1:
            self.reset()
        states = self.state_variables()
        if exact:
            for n in states:
                if np.asarray(n._state).dtype != object:
                    n._state = rational_array(n._state)
            if x.dtype != object:
                x = rational_array(x)
        if self._has_hooks():
            y = self._run_node_by_node(x)
        else:
            initial = {n.uid: np.asarray(n._state)[None] for n in states}
            y_bt, final = interpreter.run(self, x.T[None], exact=exact, initial_states=initial, return_states=True)
            for n in states:
                n._state = final[n.uid][0]
            y = y_bt[0].T
        return Matrix(np.asarray(y, dtype=object).astype(np.float64) if y.dtype == object else y)
