"""Pass 5: common-subexpression elimination. Lanes computing the same function of the same lanes are merged.

Two lanes are the same when they have the same kind and the same rows (exact float equality, after earlier
merges are applied); products are commutative. Two state groups are the same when A, the initial state and the
rows are equal; their lanes merge position by position. The published compiler has no such pass: every call of
a library function (e.g. the same comparison inside several conditionals) is compiled separately.
"""

from __future__ import annotations

import dataclasses

from recurrent.ir import (Graph, IdentLane, InputLane, MulLane, ReluLane, Row, StateLane, map_group_rows, map_rows,
                          renumber_groups)


def _key(lane) -> tuple:
    if isinstance(lane, ReluLane):
        return ("relu", lane.row)
    if isinstance(lane, IdentLane):
        return ("ident", lane.row)
    if isinstance(lane, MulLane):
        a, b = sorted([lane.left, lane.right], key=lambda r: (r.terms, r.bias))
        return ("mul", a, b)
    if isinstance(lane, InputLane):
        return ("input", lane.index)
    raise TypeError(type(lane))


def cse(graph: Graph) -> Graph:
    subst: dict[int, Row] = {}
    seen: dict[tuple, int] = {}
    seen_groups: dict[tuple, int] = {}
    group_rep: dict[int, int | None] = {}
    lanes = {}
    groups = {}
    sub = lambda r: r.substitute(subst)  # noqa: E731
    for lid, lane in graph.lanes.items():
        if isinstance(lane, StateLane):
            g = lane.group
            if g not in group_rep:
                grp = map_group_rows(graph.groups[g], sub)
                key = (grp.A.shape, grp.A.tobytes(), grp.init.tobytes(), grp.rows)
                if key in seen_groups:
                    group_rep[g] = seen_groups[key]
                else:
                    seen_groups[key] = g
                    group_rep[g] = None
                    groups[g] = grp
            rep = group_rep[g]
            if rep is None:
                lanes[lid] = lane
            else:
                subst[lid] = Row.lane(graph.groups[rep].lanes[lane.position])
            continue
        lane = map_rows(lane, sub)
        key = _key(lane)
        if key in seen:
            subst[lid] = Row.lane(seen[key])
        else:
            seen[key] = lid
            lanes[lid] = lane
    lanes, groups = renumber_groups(lanes, groups)
    out = dataclasses.replace(
        graph, lanes=lanes, groups=groups, outputs=tuple(r.substitute(subst) for r in graph.outputs)
    )
    out.check()
    return out
