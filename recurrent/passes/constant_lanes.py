"""Pass 3: constant-lane removal. Lanes whose value is the same at every token become biases of their readers.

Constant lanes: a ReLU, product or identity of constant rows; a state group whose rows are constant and whose
initial state is a fixed point (A s_0 + c = s_0). A product with one constant factor c is linear, c * r, and
becomes an ``IdentLane`` (to be inlined): this removes the constant-1 bypass lanes that conditionals and
carried values introduce.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recurrent.ir import Graph, IdentLane, MulLane, ReluLane, Row, StateLane, map_group_rows, map_rows, renumber_groups


def constant_lanes(graph: Graph) -> Graph:
    subst: dict[int, Row] = {}
    lanes = {}
    groups = {}
    done_groups: set[int] = set()
    sub = lambda r: r.substitute(subst)  # noqa: E731
    for lid, lane in graph.lanes.items():
        if isinstance(lane, StateLane):
            g = lane.group
            if g not in done_groups:
                done_groups.add(g)
                grp = map_group_rows(graph.groups[g], sub)
                c = np.array([r.bias for r in grp.rows])
                if all(r.is_constant for r in grp.rows) and np.array_equal(grp.A @ grp.init + c, grp.init):
                    for pos, l in enumerate(grp.lanes):
                        subst[l] = Row.constant(grp.init[pos])
                else:
                    groups[g] = grp
            if g in groups:
                lanes[lid] = lane
            continue
        lane = map_rows(lane, sub)
        if isinstance(lane, ReluLane) and lane.row.is_constant:
            subst[lid] = Row.constant(max(lane.row.bias, 0.0))
        elif isinstance(lane, IdentLane) and lane.row.is_constant:
            subst[lid] = lane.row
        elif isinstance(lane, MulLane) and (lane.left.is_constant or lane.right.is_constant):
            const, other = (lane.left, lane.right) if lane.left.is_constant else (lane.right, lane.left)
            prod = other.scaled(const.bias)
            if prod.is_constant:
                subst[lid] = prod
            else:
                lanes[lid] = IdentLane(prod)
        else:
            lanes[lid] = lane
    lanes, groups = renumber_groups(lanes, groups)
    out = dataclasses.replace(
        graph, lanes=lanes, groups=groups, outputs=tuple(r.substitute(subst) for r in graph.outputs)
    )
    out.check()
    return out
