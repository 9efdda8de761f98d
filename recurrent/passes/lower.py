"""Pass 1: an LSRL DAG to the lane graph, folding every Linear, Slice and Concat into affine rows.

This is the published compiler's Linear-into-Linear and Linear-into-LinState folding and its Concat
duplication, done once for the whole program: the value of every node is a vector of rows over lanes, a
Linear W u + b maps rows r to W r + b, a LinState's input map B u + bias is folded into its group's rows.

Numerics-aware folding: composing W with rows multiplies their coefficients. When the composed rows would hold
a coefficient above ``max_fused_weight`` that neither factor holds (the published compiler builds weights of
scale^2 = 1e6 and lambda * scale = 1e13 this way, which is why its models fail in float32), the input rows
are kept as lanes of their own (``IdentLane``) and W reads those instead.

Cancellation-aware folding (``exact_scaling``): a row that subtracts lanes (a step's ReLU(z) - ReLU(z - 1),
a difference of counters) can be far smaller than its terms. Scaling it after the subtraction, fl(w fl(a - b)),
is accurate; folding the scale in, fl(fl(w a) - fl(w b)), rounds w a and w b at their own magnitude: a step of
a counter at 1.4e5 scaled by 1000 is off by 8 in float32. Such a row is folded only into coefficients that are
+-2^k (scaling by them never rounds, so both orders give the same floats); otherwise it stays a lane. A step
scale that is a power of two (1024) therefore folds freely.
"""

from __future__ import annotations

import numpy as np

from recurrent.errors import CompileError
from recurrent.ir import (
    Graph, IdentLane, InputLane, MulLane, ReluLane, Row, StateGroup, StateLane, cancels, combine, exact_scale,
)
from recurrent.lsrl.program import ForEach
from recurrent.lsrl.syntax import Concat, Input, LinState, Linear, Multiplicative, ReLU


def fused_too_large(weights: np.ndarray, rows: list[Row], fused: list[Row], bound: float) -> bool:
    """True when folding made a coefficient larger than ``bound`` and than every coefficient of both factors."""
    big = max((r.max_coef() for r in fused), default=0.0)
    if big <= bound:
        return False
    factors = max(float(np.max(np.abs(weights), initial=0.0)), max((r.max_coef() for r in rows), default=0.0))
    return big > factors


class _Builder:
    def __init__(self, in_dim: int, exact_scaling: bool):
        self.in_dim = in_dim
        self.exact_scaling = exact_scaling
        self.lanes: dict = {}
        self.groups: dict[int, StateGroup] = {}
        self.next_id = 0

    def add(self, lane) -> Row:
        lid = self.next_id
        self.next_id += 1
        self.lanes[lid] = lane
        return Row.lane(lid)

    def materialize(self, rows: list[Row]) -> list[Row]:
        out = []
        for r in rows:
            single = len(r.terms) == 1 and r.terms[0][1] == 1.0 and r.bias == 0.0
            out.append(r if single or r.is_constant else self.add(IdentLane(r)))
        return out

    def affine(self, weights: np.ndarray, rows: list[Row], bias: np.ndarray, bound: float) -> list[Row]:
        if self.exact_scaling:
            rows = [
                self.materialize([r])[0]
                if cancels(r) and not all(exact_scale(float(w)) for w in weights[:, j])
                else r
                for j, r in enumerate(rows)
            ]
        fused = combine(weights, rows, bias)
        if fused_too_large(weights, rows, fused, bound):
            fused = combine(weights, self.materialize(rows), bias)
        return fused


def lower(program: ForEach, max_fused_weight: float = 1e5, exact_scaling: bool = True) -> Graph:
    """The lane graph of a validated program (see the module docstring)."""
    if not max_fused_weight > 0:
        raise CompileError(f"lower: max_fused_weight must be positive, got {max_fused_weight}")
    b = _Builder(program.in_dim, exact_scaling)
    values: dict[int, list[Row]] = {}
    for n in program.nodes:
        if isinstance(n, Input):
            rows = [b.add(InputLane(i)) for i in range(n.dim)]
        elif isinstance(n, Linear):
            rows = b.affine(n.A, values[n.input.uid], n.b, max_fused_weight)
        elif isinstance(n, Concat):
            rows = [r for i in n.input for r in values[i.uid]]
        elif isinstance(n, ReLU):
            rows = [b.add(ReluLane(r)) for r in values[n.input.uid]]
        elif isinstance(n, Multiplicative):
            u = values[n.input.uid]
            rows = [b.add(MulLane(u[i], u[n.dim + i])) for i in range(n.dim)]
        elif isinstance(n, LinState):
            u = b.affine(n.B, values[n.input.uid], n.bias, max_fused_weight)
            gid = len(b.groups)
            rows = [b.add(StateLane(gid, k)) for k in range(n.dim)]
            b.groups[gid] = StateGroup(
                lanes=tuple(r.terms[0][0] for r in rows), A=n.A.copy(), rows=tuple(u), init=n.init_state.copy()
            )
        else:
            raise CompileError(f"lower: {n.label()} is not an LSRL primitive")
        values[n.uid] = rows
    graph = Graph(
        in_dim=program.in_dim, lanes=b.lanes, groups=b.groups, outputs=tuple(values[program.output.uid]),
        next_id=b.next_id,
    )
    graph.check()
    return graph
