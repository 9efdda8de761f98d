"""Pass 4: inline identity lanes into their readers, unless that builds a weight above the fusion bound.

An ``IdentLane`` r (a pass-through state lane, a product by a constant, an affine value kept by lowering) is
replaced in each reader row by r itself: c * lane becomes c * r. The decision is per reader: it is skipped when
the composed coefficients exceed ``max_fused_weight`` and every coefficient of both factors (the same rule as
lowering), and, with ``exact_scaling``, when r subtracts lanes and the reader's coefficient is not +-2^k
(cancellation-aware folding, see ``lower``). A lane stays where one reader needs it; dead-lane removal drops
it where none does.
"""

from __future__ import annotations

import dataclasses

from recurrent.ir import Graph, IdentLane, Row, StateLane, cancels, exact_scale, map_group_rows, map_rows


def _inline(row: Row, idents: dict[int, Row], bound: float, exact_scaling: bool) -> Row:
    if not any(k in idents for k in row.lanes()):
        return row
    own = row.max_coef()
    chosen = {}
    for k, c in row.terms:
        r = idents.get(k)
        if r is None:
            continue
        alias = len(r.terms) <= 1 and (not r.terms or r.terms[0][1] == 1.0)
        big = abs(c) * r.max_coef()
        if exact_scaling and cancels(r) and not exact_scale(c):
            continue
        if alias or big <= max(bound, own, r.max_coef()):
            chosen[k] = r
    return row.substitute(chosen) if chosen else row


def inline_idents(graph: Graph, max_fused_weight: float = 1e5, exact_scaling: bool = True) -> Graph:
    idents: dict[int, Row] = {}
    lanes = {}
    groups = {}
    f = lambda r: _inline(r, idents, max_fused_weight, exact_scaling)  # noqa: E731
    for lid, lane in graph.lanes.items():
        if isinstance(lane, StateLane):
            if lane.group not in groups:
                groups[lane.group] = map_group_rows(graph.groups[lane.group], f)
            lanes[lid] = lane
            continue
        lane = map_rows(lane, f)
        lanes[lid] = lane
        if isinstance(lane, IdentLane):
            idents[lid] = lane.row
    out = dataclasses.replace(graph, lanes=lanes, groups=groups, outputs=tuple(f(r) for r in graph.outputs))
    out.check()
    return out
