"""Per-device traffic of a compiled program, read from its optimized HLO text, with loops counted per iteration.

XLA's ``cost_analysis()`` counts a while loop's body once (and the GPU compiler gives no cost analysis at all),
so the planner reads the compiled module itself:

* ``bytes``: HBM bytes read and written by every top-level operation (as stored: a TPU tile layout pads the
  two most minor dimensions) (a fusion counts its operands and results,
  not its internals), in the style of XLA's HloCostAnalysis: an operand that a fusion only slices counts the
  slices it reads, a buffer updated in place by ``dynamic-update-slice`` counts the update; a ``while`` counts
  ``trip count x (body + condition)``, a ``conditional`` its largest branch.
* ``collective_bytes`` / ``wire_bytes``: the size of every all-gather, all-reduce, reduce-scatter, all-to-all and
  collective-permute, and the bytes each device sends for it on a ring ((n - 1) / n of the gathered or scattered
  size, twice that for an all-reduce), loops counted the same way.
* ``largest``: the largest values the program produces (per device), named by their JAX source op.

A trip count comes from the loop's ``known_trip_count`` annotation when the compiler wrote one, else from its
condition ``i < N`` (or ``<=``) against the induction variable's initial constant; a loop matching neither is
counted ``unknown_trips`` times (default once; the caller's bound for a loop the data stops, as generation) and
reported in ``unknown_trip_loops``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator

DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8,
    "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5, "s2": 0.25, "u2": 0.25, "token": 0,
}
ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\](\{[^}]*\})?")
HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
NAME = re.compile(r"%([\w.\-]+)")

NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id",
              "replica-id", "opt-barrier", "add-dependency", "domain"}
COLLECTIVES = {"all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all", "collective-broadcast"}
SLICING = {"dynamic-slice", "slice", "gather"}


def _padded_dims(dims: list[int], layout: str) -> list[int]:
    """Dimensions as stored: a TPU layout ``{minor-to-major:T(a,b)...}`` pads its two most minor dimensions up to
    multiples of the tile (a, b): an f32[.., 16] array with T(8,128) occupies (and moves) 8x its element bytes."""
    if not layout or ":" not in layout:
        return dims
    order, rest = layout.strip("{}").split(":", 1)
    tile = re.search(r"T\(([0-9,]+)\)", rest)
    try:
        minor_to_major = [int(x) for x in order.split(",") if x]
    except ValueError:
        return dims
    if tile is None or len(minor_to_major) != len(dims):
        return dims
    sizes = [int(x) for x in tile.group(1).split(",")]
    out = list(dims)
    for tile_size, dim in zip(reversed(sizes), minor_to_major):
        out[dim] = -(-out[dim] // tile_size) * tile_size
    return out


def _array_bytes(shape: str) -> float:
    total = 0.0
    for dtype, dims, layout in ARRAY.findall(shape):
        size = DTYPE_BYTES.get(dtype)
        if size is None:
            size = 1 if dtype.startswith("f8") else 0  # an unknown token-like type carries no data
        total += size * math.prod(_padded_dims([int(d) for d in dims.split(",") if d], layout))
    return total


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at ``text[start]``."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for i in range(start, len(text)):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    return len(text)


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    args: str
    """The text inside the opcode's parentheses (a parameter's number, a constant's value)."""
    attrs: str
    root: bool

    @property
    def bytes(self) -> float:
        return _array_bytes(self.shape)

    def attr(self, key: str) -> str | None:
        m = re.search(rf"\b{re.escape(key)}=(%?[\w.\-]+|\{{[^}}]*\}})", self.attrs)
        return None if m is None else m.group(1)

    def called(self, key: str) -> list[str]:
        value = self.attr(key)
        return [] if value is None else NAME.findall(value) or [value.lstrip("%")]

    @property
    def op_name(self) -> str:
        m = re.search(r'op_name="([^"]*)"', self.attrs)
        return m.group(1) if m else ""


def _parse_instruction(line: str) -> Instruction | None:
    text = line.strip()
    root = text.startswith("ROOT ")
    if root:
        text = text[5:]
    m = re.match(r"%?([\w.\-]+)\s*=\s*", text)
    if not m:
        return None
    rest = text[m.end():]
    if rest.startswith("("):
        end = _balanced(rest, 0)
        shape, rest = rest[:end], rest[end:].lstrip()
    else:
        sm = re.match(r"\S+", rest)
        shape, rest = sm.group(0), rest[sm.end():].lstrip()
        # a layout with spaces never occurs; a shape is one token
    om = re.match(r"([\w\-]+)\(", rest)
    if not om:
        return None
    opcode = om.group(1)
    end = _balanced(rest, om.end() - 1)
    args = rest[om.end():end - 1]
    return Instruction(m.group(1), shape, opcode, NAME.findall(args), args, rest[end:], root)


@dataclasses.dataclass
class Module:
    computations: dict[str, dict[str, Instruction]]
    order: dict[str, list[str]]
    entry: str

    def root(self, computation: str) -> Instruction:
        instrs = self.computations[computation]
        for name in self.order[computation]:
            if instrs[name].root:
                return instrs[name]
        return instrs[self.order[computation][-1]]


def parse_module(text: str) -> Module:
    computations: dict[str, dict[str, Instruction]] = {}
    order: dict[str, list[str]] = {}
    entry = current = None
    for line in text.splitlines():
        if current is None:
            m = HEADER.match(line.strip())
            if m:
                current = m.group(2)
                computations[current], order[current] = {}, []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        instr = _parse_instruction(line)
        if instr is not None:
            computations[current][instr.name] = instr
            order[current].append(instr.name)
    if entry is None:
        raise ValueError("HLO text has no ENTRY computation")
    return Module(computations, order, entry)


@dataclasses.dataclass
class Traffic:
    bytes: float = 0.0
    collective_bytes: float = 0.0
    wire_bytes: float = 0.0
    cross_group_wire_bytes: dict[int, float] = dataclasses.field(default_factory=dict)
    """Wire bytes by collective group size (which links a collective uses depends on how many devices it spans)."""
    unknown_trip_loops: int = 0

    def add(self, other: "Traffic", times: float = 1.0) -> None:
        self.bytes += other.bytes * times
        self.collective_bytes += other.collective_bytes * times
        self.wire_bytes += other.wire_bytes * times
        for k, v in other.cross_group_wire_bytes.items():
            self.cross_group_wire_bytes[k] = self.cross_group_wire_bytes.get(k, 0.0) + v * times
        self.unknown_trip_loops += other.unknown_trip_loops


def _group_size(instr: Instruction, num_devices: int) -> int:
    m = re.search(r"replica_groups=\[([0-9,]+)\]<=", instr.attrs)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", instr.attrs)
    if m:
        return max(1, len([x for x in m.group(1).split(",") if x]))
    if instr.opcode.startswith("collective-permute"):
        return 2
    return num_devices


class _Counter:
    def __init__(self, module: Module, num_devices: int, unknown_trips: int = 1):
        self.m = module
        self.num_devices = num_devices
        self.unknown_trips = unknown_trips
        self.memo: dict[str, Traffic] = {}
        self.users: dict[str, dict[str, list[Instruction]]] = {}

    def shape_of(self, computation: str, name: str) -> str:
        instr = self.m.computations[computation].get(name)
        return "" if instr is None else instr.shape

    def _fusion_bytes(self, computation: str, instr: Instruction) -> float:
        called = instr.called("calls")
        if not called or called[0] not in self.m.computations:
            return instr.bytes + sum(_array_bytes(self.shape_of(computation, o)) for o in instr.operands)
        total = 0.0
        in_place: set[str] = set()
        for i, operand in enumerate(instr.operands):
            reads, updated = self._param_reads(called[0], i)
            total += _array_bytes(self.shape_of(computation, operand)) if reads is None else reads
            in_place |= updated
        fused = self.m.computations[called[0]]
        return total + self._output_bytes(fused, self.m.root(called[0]), in_place)

    def _users(self, computation: str) -> dict[str, list[Instruction]]:
        if computation not in self.users:
            users: dict[str, list[Instruction]] = {}
            for sub in self.m.computations[computation].values():
                for o in sub.operands:
                    users.setdefault(o, []).append(sub)
            self.users[computation] = users
        return self.users[computation]

    def _param_reads(self, computation: str, position: int) -> tuple[float | None, set[str]]:
        """(bytes a fused computation reads of its parameter ``position`` (None: all of it), the
        dynamic-update-slices that update it in place)."""
        for sub in self.m.computations[computation].values():
            if sub.opcode == "parameter" and sub.args.strip() == str(position):
                return self._reads(computation, sub.name)
        return None, set()

    def _reads(self, computation: str, name: str) -> tuple[float | None, set[str]]:
        total, in_place = 0.0, set()
        for u in self._users(computation).get(name, []):
            if u.opcode == "bitcast":
                reads, updated = self._reads(computation, u.name)
            elif u.opcode in SLICING and u.operands[0] == name:
                reads, updated = u.bytes, set()
            elif u.opcode == "dynamic-update-slice" and u.operands[0] == name and name not in u.operands[1:]:
                reads, updated = 0.0, {u.name}
            elif u.opcode == "fusion" and u.called("calls") and u.called("calls")[0] in self.m.computations:
                reads, updated = 0.0, set()
                for i, o in enumerate(u.operands):
                    if o == name:
                        r, up = self._param_reads(u.called("calls")[0], i)
                        if r is None or up:  # an in-place update inside a nested fusion: count it whole
                            return None, set()
                        reads += r
            else:
                return None, set()
            if reads is None:
                return None, set()
            total += reads
            in_place |= updated
        return total, in_place

    def _output_bytes(self, fused: dict[str, Instruction], root: Instruction, in_place: set[str]) -> float:
        if root.opcode == "tuple":
            return sum(self._output_bytes(fused, fused[o], in_place) for o in root.operands if o in fused)
        if root.opcode == "bitcast" and root.operands and root.operands[0] in fused:
            return self._output_bytes(fused, fused[root.operands[0]], in_place)
        if root.name in in_place and len(root.operands) > 1 and root.operands[1] in fused:
            return fused[root.operands[1]].bytes
        return root.bytes

    def trip_count(self, computation: str, instr: Instruction) -> int | None:
        m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr.attrs)
        if m:
            return int(m.group(1))
        cond = instr.called("condition")
        if not cond or cond[0] not in self.m.computations:
            return None
        cinstrs = self.m.computations[cond[0]]
        root = self.m.root(cond[0])
        if root.opcode != "compare" or len(root.operands) != 2:
            return None
        direction = re.search(r"direction=(\w+)", root.attrs)
        direction = direction.group(1) if direction else ""
        a, b = (cinstrs.get(o) for o in root.operands)
        if a is None or b is None:
            return None
        if direction in ("GT", "GE"):
            a, b = b, a
            direction = {"GT": "LT", "GE": "LE"}[direction]
        if direction not in ("LT", "LE") or b.opcode != "constant" or a.opcode != "get-tuple-element":
            return None
        limit = _constant_value(b)
        position = re.search(r"index=(\d+)", a.attrs)
        if limit is None or position is None:
            return None
        init = self._initial_value(computation, instr, int(position.group(1)))
        trips = limit - init + (1 if direction == "LE" else 0)
        return max(trips, 0)

    def _initial_value(self, computation: str, instr: Instruction, position: int) -> int:
        instrs = self.m.computations[computation]
        tup = instrs.get(instr.operands[0]) if instr.operands else None
        if tup is None or tup.opcode != "tuple" or position >= len(tup.operands):
            return 0
        value = instrs.get(tup.operands[position])
        while value is not None and value.opcode in ("copy", "bitcast") and value.operands:
            value = instrs.get(value.operands[0])
        if value is not None and value.opcode == "constant":
            return _constant_value(value) or 0
        return 0

    def computation(self, name: str) -> Traffic:
        if name in self.memo:
            return self.memo[name]
        out = Traffic()
        self.memo[name] = out  # recursion guard
        for iname in self.m.order[name]:
            instr = self.m.computations[name][iname]
            out.add(self.instruction(name, instr))
        return out

    def instruction(self, computation: str, instr: Instruction) -> Traffic:
        op = instr.opcode
        t = Traffic()
        if op in NO_TRAFFIC or op.endswith("-done") or op.endswith("-update"):
            return t
        if op == "while":
            trips = self.trip_count(computation, instr)
            body = Traffic()
            for key in ("body", "condition"):
                for c in instr.called(key):
                    if c in self.m.computations:
                        body.add(self.computation(c))
            t.add(body, self.unknown_trips if trips is None else trips)
            t.unknown_trip_loops += trips is None
            return t
        if op == "conditional":
            names = instr.called("branch_computations") or (instr.called("true_computation")
                                                            + instr.called("false_computation"))
            branches = [self.computation(c) for c in names if c in self.m.computations]
            if branches:
                t.add(max(branches, key=lambda b: b.bytes))
            return t
        if op in ("call", "async-start") or (op.endswith("-start") and instr.called("calls")):
            for c in instr.called("to_apply") + instr.called("calls"):
                if c in self.m.computations:
                    t.add(self.computation(c))
            if op == "call" or op == "async-start":
                return t
        base = op[:-6] if op.endswith("-start") else op
        operand_bytes = sum(_array_bytes(self.shape_of(computation, o)) for o in instr.operands)
        if op == "fusion":
            t.bytes += self._fusion_bytes(computation, instr)
        elif op in SLICING:
            t.bytes += 2 * instr.bytes
        elif op == "dynamic-update-slice" and len(instr.operands) > 1:
            t.bytes += 2 * _array_bytes(self.shape_of(computation, instr.operands[1]))
        elif base in COLLECTIVES:
            out = instr.bytes / (2 if op.endswith("-start") and base != "all-reduce" else 1)
            size = max(out, operand_bytes)
            n = _group_size(instr, self.num_devices)
            share = (n - 1) / n if n > 1 else 0.0
            wire = {"all-reduce": 2 * share * size, "collective-permute": size}.get(base, share * size)
            t.bytes += out + operand_bytes
            t.collective_bytes += size
            t.wire_bytes += wire
            t.cross_group_wire_bytes[n] = wire
        else:
            t.bytes += instr.bytes + operand_bytes
        return t

    def largest(self, top: int) -> list[tuple[float, str, str]]:
        seen: list[tuple[float, str, str]] = []
        control = self._control_computations()
        for cname in control:
            for instr in self.m.computations[cname].values():
                if instr.opcode in NO_TRAFFIC and instr.opcode != "parameter":
                    continue
                for dtype, dims, layout in ARRAY.findall(instr.shape):
                    size = _array_bytes(f"{dtype}[{dims}]{layout}")
                    seen.append((size, f"{dtype}[{dims}]", instr.op_name or f"{instr.opcode} {instr.name}"))
        seen.sort(key=lambda x: -x[0])
        out, names = [], set()
        for item in seen:
            key = (item[1], item[2])
            if key not in names:
                names.add(key)
                out.append(item)
            if len(out) == top:
                break
        return out

    def _control_computations(self) -> Iterator[str]:
        stack, done = [self.m.entry], set()
        while stack:
            name = stack.pop()
            if name in done or name not in self.m.computations:
                continue
            done.add(name)
            yield name
            for instr in self.m.computations[name].values():
                if instr.opcode in ("while", "conditional"):
                    for key in ("body", "condition", "branch_computations", "true_computation", "false_computation"):
                        stack.extend(instr.called(key))
                elif instr.opcode == "call":
                    stack.extend(instr.called("to_apply"))
                elif instr.opcode == "async-start":
                    stack.extend(instr.called("calls"))


def _constant_value(instr: Instruction) -> int | None:
    try:
        return int(instr.args.strip())
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class HloStats:
    bytes: float
    collective_bytes: float
    wire_bytes: float
    wire_bytes_by_group: dict[int, float]
    unknown_trip_loops: int
    largest: list[tuple[float, str, str]]

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, "collective_bytes": self.collective_bytes, "wire_bytes": self.wire_bytes,
                "wire_bytes_by_group": {str(k): v for k, v in self.wire_bytes_by_group.items()},
                "unknown_trip_loops": self.unknown_trip_loops,
                "largest": [{"bytes": b, "shape": s, "op": o} for b, s, o in self.largest]}


def hlo_stats(text: str, num_devices: int, top: int = 8, unknown_trips: int = 1) -> HloStats:
    """Loop-aware traffic of one device's program, from ``compiled.as_text()``."""
    module = parse_module(text)
    counter = _Counter(module, num_devices, unknown_trips)
    t = counter.computation(module.entry)
    return HloStats(t.bytes, t.collective_bytes, t.wire_bytes, dict(t.cross_group_wire_bytes), t.unknown_trip_loops,
                    counter.largest(top))
