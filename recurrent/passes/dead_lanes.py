"""Pass 6: dead-lane removal. Only lanes the outputs depend on (through rows and through A) are kept.

Liveness runs backwards from the output rows; a live state lane makes live every lane of its group that it
reads through A (the closure), and every lane its rows read. State groups shrink to their live lanes: the live
set is closed under A, so the restricted recurrence is exact. Input lanes are always kept (the token is read
whole); the scheduler carries only the live ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recurrent.ir import Graph, InputLane, StateGroup, StateLane, subgroup


def dead_lanes(graph: Graph) -> Graph:
    live: set[int] = set()
    for r in graph.outputs:
        live.update(r.lanes())
    for lid in reversed(list(graph.lanes)):
        if lid not in live:
            continue
        lane = graph.lanes[lid]
        if isinstance(lane, StateLane):
            grp = graph.groups[lane.group]
            todo = [lane.position]
            seen = {lane.position}
            while todo:
                p = todo.pop()
                live.add(grp.lanes[p])
                live.update(grp.rows[p].lanes())
                for q in np.flatnonzero(grp.A[p]):
                    if int(q) not in seen:
                        seen.add(int(q))
                        todo.append(int(q))
        else:
            for r in graph.rows_of(lid):
                live.update(r.lanes())
    lanes = {}
    groups: dict[int, StateGroup] = {}
    for lid, lane in graph.lanes.items():
        if isinstance(lane, InputLane):
            lanes[lid] = lane
        elif lid in live and not isinstance(lane, StateLane):
            lanes[lid] = lane
    for g, grp in graph.groups.items():
        keep = [p for p, l in enumerate(grp.lanes) if l in live]
        if not keep:
            continue
        gid = len(groups)
        groups[gid] = subgroup(grp, keep)
        for pos, p in enumerate(keep):
            lanes[grp.lanes[p]] = StateLane(gid, pos)
    lanes = dict(sorted(lanes.items()))
    out = dataclasses.replace(graph, lanes=lanes, groups=groups)
    out.check()
    return out
