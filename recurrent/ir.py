"""The typed intermediate form between an LSRL DAG and a layer chain: scalar lanes and affine rows.

Every value of the program is a vector of *rows*; a row is an affine form sum_j c_j v_j + bias over *lanes*,
the scalar quantities actually computed. Linear, Slice and Concat nodes disappear into rows (they only mix
lanes); what remains are lanes of five kinds, each computed once per token t:

    InputLane(i)          x_t[i]
    ReluLane(r)           max(r_t, 0)
    MulLane(l, r)         l_t * r_t
    IdentLane(r)          r_t                  an affine value kept as a lane (a fused weight would be too large,
                                               or a pass-through state lane that has not been inlined yet)
    StateLane(g, k)       lane k of state group g:  s_t = A s_{t-1} + [r_1; ...; r_n]_t,  s_0 = init

Lane ids increase in creation order, and a row only reads lanes with smaller ids, so id order is a topological
order. A state group's rows read lanes created before the group. Working on scalar lanes makes common
subexpressions, dead lanes and constant lanes plain per-lane questions.

``evaluate`` runs a graph token by token in float64: the reference each compiler pass is tested against.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Union

import numpy as np

from recurrent.errors import CompileError


@dataclasses.dataclass(frozen=True)
class Row:
    """sum_j coef_j * lane_j + bias, with ``terms`` sorted by lane id and free of zero coefficients."""

    terms: tuple[tuple[int, float], ...]
    bias: float = 0.0

    @staticmethod
    def lane(lane_id: int) -> "Row":
        return Row(((lane_id, 1.0),), 0.0)

    @staticmethod
    def constant(value: float) -> "Row":
        return Row((), float(value))

    @staticmethod
    def from_dict(terms: Mapping[int, float], bias: float) -> "Row":
        return Row(tuple(sorted((k, float(v)) for k, v in terms.items() if v != 0.0)), float(bias))

    @property
    def is_constant(self) -> bool:
        return not self.terms

    def lanes(self) -> Iterable[int]:
        return (k for k, _ in self.terms)

    def max_coef(self) -> float:
        return max((abs(c) for _, c in self.terms), default=0.0)

    def scaled(self, s: float) -> "Row":
        if s == 0.0:
            return Row.constant(0.0)
        return Row(tuple((k, c * s) for k, c in self.terms), self.bias * s)

    def substitute(self, subst: Mapping[int, "Row"]) -> "Row":
        """This row with each lane in ``subst`` replaced by its row (others kept)."""
        if not any(k in subst for k, _ in self.terms):
            return self
        acc: dict[int, float] = {}
        bias = self.bias
        for k, c in self.terms:
            r = subst.get(k)
            if r is None:
                acc[k] = acc.get(k, 0.0) + c
            else:
                bias += c * r.bias
                for j, cj in r.terms:
                    acc[j] = acc.get(j, 0.0) + c * cj
        return Row.from_dict(acc, bias)


def exact_scale(c: float) -> bool:
    """True when multiplying by c never rounds (c = 0 or +-2^k): scaling a sum then equals summing scaled terms."""
    return c == 0.0 or math.frexp(abs(c))[0] == 0.5


def cancels(row: Row) -> bool:
    """True when the row subtracts lanes (terms of both signs), so its value may be far smaller than its terms."""
    signs = {c > 0 for _, c in row.terms}
    return len(signs) == 2


def combine(weights: np.ndarray, rows: list[Row], bias: np.ndarray) -> list[Row]:
    """The rows of W v + b for a value v given as rows (a Linear applied to a vector of rows)."""
    out = []
    for i in range(weights.shape[0]):
        acc: dict[int, float] = {}
        b = float(bias[i])
        for j in np.flatnonzero(weights[i]):
            w = float(weights[i, j])
            r = rows[j]
            b += w * r.bias
            for k, c in r.terms:
                acc[k] = acc.get(k, 0.0) + w * c
        out.append(Row.from_dict(acc, b))
    return out


@dataclasses.dataclass(frozen=True)
class InputLane:
    index: int


@dataclasses.dataclass(frozen=True)
class ReluLane:
    row: Row


@dataclasses.dataclass(frozen=True)
class MulLane:
    left: Row
    right: Row


@dataclasses.dataclass(frozen=True)
class IdentLane:
    row: Row


@dataclasses.dataclass(frozen=True)
class StateLane:
    group: int
    position: int


Lane = Union[InputLane, ReluLane, MulLane, IdentLane, StateLane]


@dataclasses.dataclass(frozen=True)
class StateGroup:
    """Lanes updated together: s_t = A s_{t-1} + [rows]_t with s_0 = init (A couples only these lanes)."""

    lanes: tuple[int, ...]
    A: np.ndarray
    rows: tuple[Row, ...]
    init: np.ndarray


@dataclasses.dataclass(frozen=True)
class Graph:
    """A program in lane form: ``lanes`` in topological (id) order, the state ``groups``, the output rows."""

    in_dim: int
    lanes: dict[int, Lane]
    groups: dict[int, StateGroup]
    outputs: tuple[Row, ...]
    next_id: int

    @property
    def out_dim(self) -> int:
        return len(self.outputs)

    def rows_of(self, lane_id: int) -> tuple[Row, ...]:
        """The rows a lane reads (for a state lane: its own row of the group)."""
        lane = self.lanes[lane_id]
        if isinstance(lane, (ReluLane, IdentLane)):
            return (lane.row,)
        if isinstance(lane, MulLane):
            return (lane.left, lane.right)
        if isinstance(lane, StateLane):
            return (self.groups[lane.group].rows[lane.position],)
        return ()

    def counts(self) -> dict[str, int]:
        out = {"input": 0, "relu": 0, "mul": 0, "ident": 0, "state": 0}
        names = {InputLane: "input", ReluLane: "relu", MulLane: "mul", IdentLane: "ident", StateLane: "state"}
        for lane in self.lanes.values():
            out[names[type(lane)]] += 1
        return out

    def check(self) -> None:
        """Raises ``CompileError`` if a row reads a lane that is missing or not earlier (a pass bug)."""
        problems = []
        for lid, lane in self.lanes.items():
            reads = []
            if isinstance(lane, StateLane):
                g = self.groups.get(lane.group)
                if g is None or g.lanes[lane.position] != lid:
                    problems.append(f"lane {lid}: state group {lane.group} does not hold it at {lane.position}")
                    continue
                first = min(g.lanes)
                reads = [(k, first) for k in g.rows[lane.position].lanes()]
            else:
                reads = [(k, lid) for r in self.rows_of(lid) for k in r.lanes()]
            for k, limit in reads:
                if k not in self.lanes or k >= limit:
                    problems.append(f"lane {lid}: reads lane {k}, which is missing or not earlier")
        for r in self.outputs:
            for k in r.lanes():
                if k not in self.lanes:
                    problems.append(f"output reads missing lane {k}")
        if problems:
            raise CompileError(problems)


def evaluate(graph: Graph, x_BxTxD: np.ndarray) -> np.ndarray:
    """Outputs (B, T, out_dim) of a lane graph, token by token in float64 (the reference for every pass)."""
    x = np.asarray(x_BxTxD, dtype=np.float64)
    batch, steps, _ = x.shape
    states = {
        g: np.broadcast_to(grp.init, (batch, len(grp.lanes))).astype(np.float64) for g, grp in graph.groups.items()
    }
    order = list(graph.lanes)

    def value(row: Row, vals: dict[int, np.ndarray]) -> np.ndarray:
        acc = np.zeros(batch)
        for k, c in row.terms:
            acc = acc + c * vals[k]
        return acc + row.bias  # the bias last, as a layer adds it (small biases survive large sums)

    outs = []
    for t in range(steps):
        vals: dict[int, np.ndarray] = {}
        updated: set[int] = set()
        for lid in order:
            lane = graph.lanes[lid]
            if isinstance(lane, InputLane):
                vals[lid] = x[:, t, lane.index]
            elif isinstance(lane, ReluLane):
                vals[lid] = np.maximum(value(lane.row, vals), 0.0)
            elif isinstance(lane, MulLane):
                vals[lid] = value(lane.left, vals) * value(lane.right, vals)
            elif isinstance(lane, IdentLane):
                vals[lid] = value(lane.row, vals)
            else:
                g = lane.group
                if g not in updated:
                    grp = graph.groups[g]
                    u = np.stack([value(r, vals) for r in grp.rows], axis=1)
                    states[g] = states[g] @ grp.A.T + u
                    updated.add(g)
                vals[lid] = states[g][:, lane.position]
        row_values = [value(r, vals) for r in graph.outputs]
        outs.append(np.stack(row_values, axis=1) if row_values else np.zeros((batch, 0)))
    return np.stack(outs, axis=1)


def map_rows(lane: Lane, f) -> Lane:
    """The same lane with ``f`` applied to each row it reads (state lanes read through their group)."""
    if isinstance(lane, ReluLane):
        return ReluLane(f(lane.row))
    if isinstance(lane, IdentLane):
        return IdentLane(f(lane.row))
    if isinstance(lane, MulLane):
        return MulLane(f(lane.left), f(lane.right))
    return lane


def map_group_rows(group: StateGroup, f) -> StateGroup:
    return dataclasses.replace(group, rows=tuple(f(r) for r in group.rows))


def subgroup(group: StateGroup, positions: Sequence[int]) -> StateGroup:
    """The group restricted to ``positions`` (A's rows and columns, rows and s_0 at them), in that order."""
    idx = np.asarray(positions, dtype=int)
    return StateGroup(
        lanes=tuple(group.lanes[p] for p in positions),
        A=group.A[np.ix_(idx, idx)].copy(),
        rows=tuple(group.rows[p] for p in positions),
        init=group.init[idx].copy(),
    )


def renumber_groups(lanes: Mapping[int, Lane], groups: Mapping[int, StateGroup]
                    ) -> tuple[dict[int, Lane], dict[int, StateGroup]]:
    """Groups numbered 0, 1, ... in their order, and every state lane pointing at its group's new number."""
    renum = {g: i for i, g in enumerate(groups)}
    lanes = {lid: (StateLane(renum[l.group], l.position) if isinstance(l, StateLane) else l)
             for lid, l in lanes.items()}
    return lanes, {renum[g]: grp for g, grp in groups.items()}
