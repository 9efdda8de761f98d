"""Pass 2: split every state group into the parts its transition matrix A actually couples.

Lanes i and j stay together when A[i, j] or A[j, i] is non-zero (connected components of A's sparsity
pattern). A lane with a zero row and column is not memory at all (s_t = r_t): it becomes an ``IdentLane``, which
a later pass inlines. This separates the genuinely recurrent rows from pass-through ones, and makes merged
block-diagonal states (as a program may write them) independent again for CSE and dead-lane removal.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recurrent.ir import Graph, IdentLane, StateGroup, StateLane, subgroup


def _components(A: np.ndarray) -> list[list[int]]:
    n = A.shape[0]
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(A)):
        parent[find(int(i))] = find(int(j))
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return sorted(comps.values())


def split_states(graph: Graph) -> Graph:
    lanes = dict(graph.lanes)
    groups: dict[int, StateGroup] = {}
    for grp in graph.groups.values():
        for comp in _components(grp.A):
            if len(comp) == 1 and grp.A[comp[0], comp[0]] == 0.0:
                k = comp[0]
                lanes[grp.lanes[k]] = IdentLane(grp.rows[k])
                continue
            gid = len(groups)
            groups[gid] = subgroup(grp, comp)
            for pos, k in enumerate(comp):
                lanes[grp.lanes[k]] = StateLane(gid, pos)
    out = dataclasses.replace(graph, lanes=lanes, groups=groups)
    out.check()
    return out
