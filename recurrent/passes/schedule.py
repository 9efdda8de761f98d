"""Pass 7: schedule the lane graph into a chain of layers, carrying every value only as far as it is needed.

This replaces the published greedy debranching with depth scheduling (as in tracr's layer allocation):

1. Operations are the ReLU lanes, the product lanes, the state groups (one recurrent block each) and the
   identity lanes; each needs one layer of its kind (state / relu / mul; an identity fits any kind).
2. List scheduling: layer k takes every operation whose inputs are all available before k and whose kind is
   the layer's kind, the kind being the one whose ready operation has the longest path to the outputs.
3. Carrying (debranching): a lane produced at layer p and last read at layer q crosses layers p+1 .. q-1 on
   one lane per layer shared by all readers, the published rules made lane-exact:
     state layer  a pass-through lane (A = 0, B selects it),
     relu layer   the value itself when it is provably non-negative, else ReLU(v) and ReLU(-v), read back as
                  their difference (the ReLU-made identity),
     mul layer    a bypass product v * 1.
   Carries are exact in floating point. Lanes that no later layer reads are not carried (dead lanes), and
   identical lanes within a layer are shared.

Non-negativity is derived, not trusted from ``always_positive``: ReLU lanes are >= 0, and so is a non-negative
combination of non-negative lanes, a product of two such, and a state group with A >= 0, s_0 >= 0 and
non-negative rows.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recurrent.chain import Chain, Layer
from recurrent.errors import CompileError
from recurrent.ir import Graph, IdentLane, InputLane, MulLane, ReluLane, Row, StateLane


@dataclasses.dataclass
class _Op:
    kind: str  # state | relu | mul | any
    lanes: tuple[int, ...]
    group: int | None = None


def _nonnegative(graph: Graph) -> dict[int, bool]:
    nonneg: dict[int, bool] = {}

    def row_nonneg(r: Row) -> bool:
        return r.bias >= 0 and all(c > 0 and nonneg[k] for k, c in r.terms)

    done: set[int] = set()
    for lid, lane in graph.lanes.items():
        if isinstance(lane, InputLane):
            nonneg[lid] = False
        elif isinstance(lane, ReluLane):
            nonneg[lid] = True
        elif isinstance(lane, MulLane):
            nonneg[lid] = row_nonneg(lane.left) and row_nonneg(lane.right)
        elif isinstance(lane, IdentLane):
            nonneg[lid] = row_nonneg(lane.row)
        elif lane.group not in done:
            done.add(lane.group)
            g = graph.groups[lane.group]
            ok = bool(np.all(g.A >= 0) and np.all(g.init >= 0) and all(row_nonneg(r) for r in g.rows))
            for l in g.lanes:
                nonneg[l] = ok
    return nonneg


class _LayerBuilder:
    """Physical lanes of one layer: their pre-activation rows over the previous layer's lanes."""

    def __init__(self, kind: str):
        self.kind = kind
        self.rec_rows: list[Row] = []
        self.rec_blocks: list[tuple[np.ndarray, np.ndarray]] = []
        self.rows: list[Row] = []  # relu rows, state pass-through rows, or mul left factors
        self.right: list[Row] = []  # mul right factors
        self.shared: dict[tuple, int] = {}

    def _slot(self, left: Row, right: Row | None = None) -> int:
        key = (left, right)
        if key not in self.shared:
            self.shared[key] = len(self.rows)
            self.rows.append(left)
            if right is not None:
                self.right.append(right)
        return self.shared[key]

    def add_group(self, rows: list[Row], A: np.ndarray, init: np.ndarray) -> list[int]:
        start = len(self.rec_rows)
        self.rec_rows.extend(rows)
        self.rec_blocks.append((A, init))
        return list(range(start, start + len(rows)))

    def add_relu(self, row: Row) -> Row:
        return Row.lane(self._slot(row))

    def add_mul(self, left: Row, right: Row) -> Row:
        return Row.lane(self._slot(left, right))

    def add_value(self, row: Row, nonneg: bool) -> Row:
        """A lane (or two) that carries the affine value ``row`` through this layer; returns how to read it."""
        if self.kind == "state":
            return Row.lane(self._slot(row))
        if self.kind == "mul":
            return self.add_mul(row, Row.constant(1.0))
        if nonneg:
            return Row.lane(self._slot(row))
        pos = self._slot(row)
        neg = self._slot(row.scaled(-1.0))
        return Row.from_dict({pos: 1.0, neg: -1.0}, 0.0)

    def offset(self) -> int:
        return len(self.rec_rows)

    def build(self, in_width: int) -> Layer:
        def dense(rows: list[Row]) -> tuple[np.ndarray, np.ndarray]:
            W = np.zeros((len(rows), in_width))
            b = np.zeros(len(rows))
            for i, r in enumerate(rows):
                b[i] = r.bias
                for k, c in r.terms:
                    W[i, k] += c
            return W, b

        if self.kind == "state":
            W, b = dense(self.rec_rows + self.rows)
            r = len(self.rec_rows)
            A = np.zeros((r, r))
            init = np.zeros(r)
            o = 0
            for blk, s0 in self.rec_blocks:
                n = blk.shape[0]
                A[o : o + n, o : o + n] = blk
                init[o : o + n] = s0
                o += n
            return Layer("state", W, b, A, init)
        if self.kind == "mul":
            W, b = dense(self.rows + self.right)
            return Layer("mul", W, b)
        W, b = dense(self.rows)
        return Layer("relu", W, b)


@dataclasses.dataclass(frozen=True)
class _Operations:
    """Phase 1: the operations, which op produces each lane (-1: an input), what each op reads."""

    ops: list[_Op]
    lane_op: dict[int, int]
    reads: list[set[int]]  # lane ids read by each op
    deps: list[set[int]]  # op ids each op depends on (-1: the inputs)
    height: list[int]  # longest path from each op to the outputs, in ops


def _operations(graph: Graph) -> _Operations:
    ops: list[_Op] = []
    lane_op: dict[int, int] = {}
    group_op: dict[int, int] = {}
    for lid, lane in graph.lanes.items():
        if isinstance(lane, InputLane):
            lane_op[lid] = -1
        elif isinstance(lane, StateLane):
            if lane.group not in group_op:
                group_op[lane.group] = len(ops)
                ops.append(_Op("state", graph.groups[lane.group].lanes, lane.group))
            lane_op[lid] = group_op[lane.group]
        else:
            lane_op[lid] = len(ops)
            kind = {ReluLane: "relu", MulLane: "mul", IdentLane: "any"}[type(lane)]
            ops.append(_Op(kind, (lid,)))

    def reads(op: _Op) -> set[int]:
        rows = graph.groups[op.group].rows if op.group is not None else graph.rows_of(op.lanes[0])
        return {k for r in rows for k in r.lanes()}

    op_reads = [reads(op) for op in ops]
    deps = [{lane_op[k] for k in rd} for rd in op_reads]
    consumers: list[set[int]] = [set() for _ in ops]
    for i, ds in enumerate(deps):
        for d in ds:
            if d >= 0:
                consumers[d].add(i)
    height = [0] * len(ops)
    for i in reversed(range(len(ops))):
        height[i] = 1 + max((height[c] for c in consumers[i]), default=0)
    return _Operations(ops, lane_op, op_reads, deps, height)


def _assign_layers(ops: _Operations) -> tuple[dict[int, int], list[str]]:
    """Phase 2, list scheduling: each op's layer (1-based; the inputs are layer 0) and each layer's kind."""
    layer_of: dict[int, int] = {-1: 0}
    kinds: list[str] = []
    remaining = list(range(len(ops.ops)))
    while remaining:
        k = len(kinds) + 1
        ready = [i for i in remaining if all(layer_of.get(d, k) < k for d in ops.deps[i])]
        if not ready:
            raise CompileError("schedule: no operation is ready; the lane graph has a cycle")
        best: dict[str, tuple[int, int]] = {}
        for i in ready:
            kind = ops.ops[i].kind
            if kind != "any":
                h, n = best.get(kind, (0, 0))
                best[kind] = (max(h, ops.height[i]), n + 1)
        # a layer holding only identity lanes is a ReLU layer: it carries them without adding state dims
        kind = max(best, key=lambda kd: best[kd]) if best else "relu"
        chosen = {i for i in ready if ops.ops[i].kind in (kind, "any")}
        for i in chosen:
            layer_of[i] = k
        kinds.append(kind)
        remaining = [i for i in remaining if i not in chosen]
    return layer_of, kinds


def _lifetimes(graph: Graph, ops: _Operations, layer_of: dict[int, int], n_layers: int):
    """Phase 3: the layer producing each lane and the last layer reading it (n_layers + 1: the readout)."""
    produced = {lid: layer_of[ops.lane_op[lid]] for lid in graph.lanes}
    last: dict[int, int] = {}
    for i, rd in enumerate(ops.reads):
        for lid in rd:
            last[lid] = max(last.get(lid, 0), layer_of[i])
    for r in graph.outputs:
        for lid in r.lanes():
            last[lid] = n_layers + 1
    return produced, last


def _translate(row: Row, where: dict[int, Row]) -> Row:
    missing = [k for k in row.lanes() if k not in where]
    if missing:
        raise CompileError(f"schedule: lanes {missing[:5]} are read where they are not available (a pass bug)")
    return row.substitute(where)


def _emit_layer(
    graph: Graph,
    ops: _Operations,
    kind: str,
    here: list[int],
    carried_lanes: list[int],
    rep: dict[int, Row],
    nonneg: dict[int, bool],
) -> tuple[_LayerBuilder, dict[int, Row]]:
    """Phase 4, one layer: its operations and the lanes it carries; returns how to read every lane after it."""
    lb = _LayerBuilder(kind)
    new: dict[int, Row] = {}
    pending: list[tuple[int, Row, bool]] = []
    for i in here:
        op = ops.ops[i]
        if op.kind == "state":
            grp = graph.groups[op.group]
            idx = lb.add_group([_translate(r, rep) for r in grp.rows], grp.A, grp.init)
            for lid, p in zip(grp.lanes, idx):
                new[lid] = Row.lane(p)
        elif op.kind == "relu":
            new[op.lanes[0]] = lb.add_relu(_translate(graph.lanes[op.lanes[0]].row, rep))
        elif op.kind == "mul":
            lane = graph.lanes[op.lanes[0]]
            new[op.lanes[0]] = lb.add_mul(_translate(lane.left, rep), _translate(lane.right, rep))
        else:
            lid = op.lanes[0]
            pending.append((lid, _translate(graph.lanes[lid].row, rep), nonneg[lid]))
    pending.extend((lid, rep[lid], nonneg[lid]) for lid in carried_lanes)
    # pass-through lanes of a state layer sit after its recurrent lanes
    shift = lb.offset() if lb.kind == "state" else 0
    for lid, r, nn in pending:
        carried = lb.add_value(r, nn)
        new[lid] = Row(tuple((p + shift, c) for p, c in carried.terms), carried.bias)
    return lb, new


def _readout(graph: Graph, rep: dict[int, Row], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Phase 5: the output rows over the last layer's lanes."""
    W = np.zeros((graph.out_dim, width))
    b = np.zeros(graph.out_dim)
    for i, r in enumerate(graph.outputs):
        t = _translate(r, rep)
        b[i] = t.bias
        for p, c in t.terms:
            W[i, p] += c
    return W, b


def schedule(graph: Graph) -> Chain:
    ops = _operations(graph)
    layer_of, kinds = _assign_layers(ops)
    n_layers = len(kinds)
    produced, last = _lifetimes(graph, ops, layer_of, n_layers)
    nonneg = _nonnegative(graph)
    by_layer: dict[int, list[int]] = {}
    for i, k in layer_of.items():
        if i >= 0:
            by_layer.setdefault(k, []).append(i)

    rep: dict[int, Row] = {
        lid: Row.lane(lane.index) for lid, lane in graph.lanes.items() if isinstance(lane, InputLane)
    }
    width = graph.in_dim
    layers: list[Layer] = []
    for k in range(1, n_layers + 1):
        carried = [lid for lid in rep if produced[lid] < k < last.get(lid, -1)]
        lb, rep = _emit_layer(graph, ops, kinds[k - 1], sorted(by_layer.get(k, [])), carried, rep, nonneg)
        layer = lb.build(width)
        layers.append(layer)
        width = layer.width
    W, b = _readout(graph, rep, width)
    return Chain(in_dim=graph.in_dim, layers=tuple(layers), readout_weight=W, readout_bias=b)
