"""``recurrent.lsrl.ForEach``: the program with the published compilation methods. The compiler
(``recurrent.compile``) takes the base ``recurrent.lsrl.program.ForEach``; this subclass sits above it.

* ``simplify()`` compiles with this package's pass pipeline (``recurrent.compile.compile_program``) and replaces
  the DAG, in place, by the published path form of the result (``recurrent.lsrl.path_form``):
  Input -> LinState -> Linear -> ReLU -> ... -> Linear, whose nodes hold the compiled weights, so the layers read
  as they do after the published ``simplify``; the compiled ``Chain`` is kept as ``program.chain``.
* ``debranch_graph()`` is the same (the published debranching also ends in a path graph).
* ``fold_same_type()`` is the published local fusion pass alone, which leaves a branching DAG branching; the
  pipeline here folds on its lane graph inside ``simplify``, so this leaves the DAG as it is.
"""

from __future__ import annotations

import numpy as np

from recurrent.lsrl import program
from recurrent.lsrl.path_form import chain_to_path


class ForEach(program.ForEach):
    def simplify(self, max_steps: float = np.inf) -> "ForEach":
        """Compiles and replaces the DAG by its path form; the program computes the same function. ``max_steps``
        is accepted for the published signature (the pass pipeline has no step budget). Returns the program."""
        from recurrent.compile import compile_program

        self.chain = compile_program(self)
        self._set_output(chain_to_path(self.chain))
        if self.keep_graph_history:
            self.simplification_history.append(("compile_program", self.graph().copy()))
        return self

    def debranch_graph(self, max_steps: float = np.inf) -> "ForEach":
        return self.simplify(max_steps)

    def fold_same_type(self) -> "ForEach":
        return self
