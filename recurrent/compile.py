"""The compiler: runs the passes in order, from an LSRL program to a chain of layers. Nothing else.

    lower -> split_states -> constant_lanes -> inline_idents -> cse -> dead_lanes -> schedule

``constant_lanes``, ``inline_idents`` and ``cse`` feed each other (a merged lane can make a product constant, an
inlined identity can expose a duplicate), so that middle stretch repeats until the lane count stops falling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

from recurrent.chain import Chain
from recurrent.errors import CompileError
from recurrent.ir import Graph
from recurrent.lsrl.program import ForEach
from recurrent.lsrl.syntax import Variable
from recurrent.passes.constant_lanes import constant_lanes
from recurrent.passes.cse import cse
from recurrent.passes.dead_lanes import dead_lanes
from recurrent.passes.inline_idents import inline_idents
from recurrent.passes.lower import lower
from recurrent.passes.schedule import schedule
from recurrent.passes.split_states import split_states


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompileConfig:
    max_fused_weight: float = 1e5
    """Folding never creates a weight above this that neither folded factor had (numerics-aware folding)."""
    exact_scaling: bool = True
    """A row that subtracts lanes folds only into +-2^k coefficients (cancellation-aware folding, see lower)."""
    optimize: bool = True
    """Constant-lane removal, CSE and dead-lane removal (off: the lowered graph is scheduled as it is)."""
    max_rounds: int = 8
    """At most this many rounds of constant_lanes -> inline_idents -> cse."""

    def __post_init__(self):
        if not self.max_fused_weight > 0:
            raise CompileError(f"CompileConfig.max_fused_weight={self.max_fused_weight}: must be positive")
        if self.max_rounds < 1:
            raise CompileError(f"CompileConfig.max_rounds={self.max_rounds}: must be at least 1")

    @classmethod
    def unoptimized(cls) -> "CompileConfig":
        return cls(optimize=False)


def optimize(graph: Graph, cfg: CompileConfig) -> Graph:
    """The lane-level optimisations, repeated until the number of lanes stops falling."""
    graph = split_states(graph)
    for _ in range(cfg.max_rounds):
        before = len(graph.lanes)
        graph = constant_lanes(graph)
        graph = inline_idents(graph, cfg.max_fused_weight, cfg.exact_scaling)
        graph = cse(graph)
        graph = dead_lanes(graph)
        if len(graph.lanes) >= before:
            break
    return graph


T = TypeVar("T")


def to_graph(program: ForEach | Variable, cfg: CompileConfig = CompileConfig()) -> Graph:
    """The optimised lane graph of a program (everything but scheduling)."""
    if isinstance(program, Variable):
        program = ForEach(program)
    graph = lower(program, cfg.max_fused_weight, cfg.exact_scaling)
    if cfg.optimize:
        graph = optimize(graph, cfg)
    else:
        graph = dead_lanes(split_states(graph))
    return graph


def compile_program(program: ForEach | Variable, cfg: CompileConfig = CompileConfig()) -> Chain:
    """The chain of layers that computes ``program`` (see ``recurrent.chain``)."""
    return schedule(to_graph(program, cfg))


def through_chain(lowering: Callable[..., T]) -> Callable[..., T]:
    """``compile(program, cfg=CompileConfig(), **options) = lowering(compile_program(program, cfg), **options)``:
    a target's compiler, every target being a lowering of the chain (``options`` are the lowering's own)."""
    target = lowering.__name__.removeprefix("chain_to_")

    def compile_to_target(program: ForEach | Variable, cfg: CompileConfig = CompileConfig(), **options) -> T:
        return lowering(compile_program(program, cfg), **options)

    compile_to_target.__name__ = compile_to_target.__qualname__ = f"compile_{target}"
    compile_to_target.__doc__ = (f"Compile an LSRL program to the {target} target through the linear-RNN chain; "
                                 f"keyword options are those of ``{lowering.__name__}``.")
    return compile_to_target
