"""The LSRL language: six primitives that build a DAG evaluated once per token (``ForEach``, the program, is in
``recurrent.lsrl.program``).

Semantics at token t, with u the value of a node's input at the same token (Petrov et al., 2024, Sec. 3):

    Input(dim)                          x_t
    Linear(input, A, b)                 A u + b
    Slice(input, start, end), x[i]      u[start:end]                 (a Linear with a 0/1 selection matrix)
    Concat([v1, v2, ...])               [v1; v2; ...]
    ReLU(input)                         max(u, 0)
    LinState(input, A, B, init_state, bias)
                                        s_t = A s_{t-1} + B u_t + bias,  s_0 = init_state; outputs s_t
    Multiplicative(input)               u[:h] * u[h:],  h = dim(u) / 2

The names and call signatures are those of the published language, so its programs port by changing the
import. Operators build nodes: ``x + y`` and ``x - y`` (equal dims) are a Concat and a Linear [I, +-I];
``x + c``, ``c - x``, ``x * c``, ``x / c`` with a scalar c are Linears; ``x[i]``, ``x[a:b]`` are Slices.
A variable times a variable is not an operator (use ``Multiplicative``).

Constructors do not raise on inconsistent shapes: ``ForEach`` validates the whole DAG and raises one
``CompileError`` listing every problem (no or several Inputs, a cycle, a dimension mismatch, a non-finite
weight, an odd-width Multiplicative, a slice out of range).

Weights are stored as float64 arrays (``b``, ``init_state`` and ``bias`` as vectors); column vectors (the
published (n, 1) convention) are accepted and flattened.

As in the published language every node can also be run on its own for one token: ``node(*inputs)`` calls the
``before_forward`` hooks (``h(node, *inputs)``), ``node.forward(*inputs)`` on (dim, 1) columns, then the
``after_forward`` hooks (``h(node, out, *inputs)``). A ``LinState`` keeps its current state (``state``, ``reset()``)
between such calls; ``ForEach`` writes its states back into the nodes after every call, so they can be read,
hooked and continued.
"""

from __future__ import annotations

import itertools
import numbers
from fractions import Fraction
from collections.abc import Sequence
from typing import Any

import numpy as np

from recurrent.errors import CompileError

_ids = itertools.count()


def _is_scalar(x: Any) -> bool:
    if isinstance(x, Variable) or isinstance(x, (str, bytes)):
        return False
    if isinstance(x, numbers.Number):
        return True
    if isinstance(x, np.ndarray):
        return x.ndim == 0
    # sympy numbers and other numeric scalars convert with float() but are not numbers.Number subclasses
    return hasattr(x, "__float__") and not hasattr(x, "__len__")


def _scalar(x: Any, what: str) -> float:
    if not _is_scalar(x):
        raise CompileError(f"{what}: expected a scalar (int, float, Fraction), got {type(x).__name__}")
    return float(x)


class Variable:
    """A node of an LSRL program: its output dimension ``dim`` and its inputs; operators build new nodes.

    ``always_positive`` is the published hint that the value is never negative. The compiler does not trust it
    (it derives signs itself); it is kept so that ported programs run unchanged.
    """

    # numpy scalars on the left of an operator defer to the Variable's reflected operator
    __array_ufunc__ = None

    def __init__(self, dim: int, name: str):
        self.dim = int(dim)
        self.name = name
        self.uid = next(_ids)
        self.always_positive = False
        # Problems noticed while building (e.g. a sum of unequal dims); reported by validation with the rest.
        self.construction_problems: list[str] = []
        self.hooks: dict[str, list] = {"before_forward": [], "after_forward": []}

    # --- one token, the published way -------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any):
        for hook in self.hooks["before_forward"]:
            hook(self, *args, **kwargs)
        out = self.forward(*args, **kwargs)
        for hook in self.hooks["after_forward"]:
            hook(self, out, *args, **kwargs)
        return out

    def forward(self, *args: Any):
        """This node's output at one token from its inputs' values, each a (dim, 1) column."""
        raise NotImplementedError(f"{type(self).__name__} has no forward step")

    def graph(self, recompute: bool = False):
        """The DAG reachable backwards from this node as a ``networkx.DiGraph`` (input -> consumer edges)."""
        from recurrent.lsrl.graph_view import node_graph

        return node_graph(self)

    def topological_sort(self, recompute: bool = False) -> list["Variable"]:
        """The nodes of ``graph()``, inputs before their consumers."""
        return topological_order(self)[0]

    # --- graph ---------------------------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple["Variable", ...]:
        inp = getattr(self, "input", None)
        if inp is None:
            return ()
        if isinstance(inp, Variable):
            return (inp,)
        return tuple(inp)

    def label(self) -> str:
        kind = type(self).__name__
        return f"{kind}#{self.uid}" if self.name == kind else f"{kind}#{self.uid} {self.name!r}"

    def __repr__(self) -> str:
        return f"<{self.label()} dim={self.dim}>"

    def problems(self) -> list[str]:
        """Shape and value problems of this node alone (its inputs must exist; they are checked separately)."""
        return list(self.construction_problems)

    def __hash__(self) -> int:
        return self.uid

    def __eq__(self, other: object) -> bool:  # identity: operators must not be confused with comparisons
        return self is other

    # --- operators -----------------------------------------------------------------------------------------
    def __add__(self, other: Any) -> "Variable":
        if isinstance(other, Variable):
            r = _combine(self, other, 1.0, "Sum")
            r.always_positive = self.always_positive and other.always_positive
            return r
        c = _scalar(other, f"{self.label()} + scalar")
        r = Linear(self, np.eye(self.dim), np.full(self.dim, c), name="Sum")
        r.always_positive = self.always_positive and c >= 0
        return r

    def __radd__(self, other: Any) -> "Variable":
        return self.__add__(other)

    def __sub__(self, other: Any) -> "Variable":
        if isinstance(other, Variable):
            return _combine(self, other, -1.0, "Sub")
        c = _scalar(other, f"{self.label()} - scalar")
        return Linear(self, np.eye(self.dim), np.full(self.dim, -c), name="Sub")

    def __rsub__(self, other: Any) -> "Variable":
        c = _scalar(other, f"scalar - {self.label()}")
        return Linear(self, -np.eye(self.dim), np.full(self.dim, c), name="Sub")

    def __neg__(self) -> "Variable":
        return self * -1

    def __mul__(self, other: Any) -> "Variable":
        if isinstance(other, Variable):
            raise CompileError(
                f"{self.label()} * {other.label()}: a variable times a variable is not an operator; "
                "use Multiplicative(Concat([x, y]))"
            )
        c = _scalar(other, f"{self.label()} * scalar")
        r = Linear(self, c * np.eye(self.dim), np.zeros(self.dim), name="Scale")
        r.always_positive = self.always_positive and c >= 0
        return r

    def __rmul__(self, other: Any) -> "Variable":
        return self.__mul__(other)

    def __truediv__(self, other: Any) -> "Variable":
        c = _scalar(other, f"{self.label()} / scalar")
        if c == 0:
            raise CompileError(f"{self.label()} / 0: division by zero")
        r = Linear(self, np.eye(self.dim) / c, np.zeros(self.dim), name="Scale")
        r.always_positive = self.always_positive and c > 0
        return r

    def __getitem__(self, key: int | slice) -> "Variable":
        if isinstance(key, (int, np.integer)):
            k = int(key)
            if k < 0:
                k += self.dim
            return Slice(self, k, k + 1)
        if isinstance(key, slice):
            if key.step not in (None, 1):
                raise CompileError(f"{self.label()}[{key}]: slices with a step are not part of LSRL")
            # Python's clamping is not applied: a slice reaching past either end is an error (Slice.problems).
            start = _slice_end(key.start, 0, self.dim, self, key)
            stop = _slice_end(key.stop, self.dim, self.dim, self, key)
            return Slice(self, start, stop)
        raise CompileError(f"{self.label()}[{key!r}]: index with an int or a slice")


def _slice_end(end: Any, default: int, dim: int, var: Variable, key: slice) -> int:
    if end is None:
        return default
    if not isinstance(end, (int, np.integer)):
        raise CompileError(f"{var.label()}[{key}]: slice ends must be ints, got {type(end).__name__}")
    return int(end) + dim if end < 0 else int(end)


def _variable(value: Any, node: str, field: str = "input") -> "Variable":
    if not isinstance(value, Variable):
        raise CompileError(f"{node}: {field} must be an LSRL variable, got {type(value).__name__}")
    return value


def _combine(x: Variable, y: Variable, sign: float, name: str) -> "Linear":
    both = Concat([x, y])
    r = Linear(both, np.hstack([np.eye(x.dim), sign * np.eye(x.dim)]), np.zeros(x.dim), name=name)
    if x.dim != y.dim:
        r.construction_problems.append(
            f"{r.label()}: {'sum' if sign > 0 else 'difference'} of {x.label()} (dim {x.dim}) and "
            f"{y.label()} (dim {y.dim}); both operands must have the same dim"
        )
    return r


def _numbers(value: Any, node: Variable, field: str, convert) -> np.ndarray | None:
    """``value`` as float64 (Fractions and other scalars entry by entry); None, with the problem recorded, when
    it is ragged or holds something that is not a number."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    try:
        return np.asarray(convert(np.asarray(value, dtype=object)), dtype=np.float64)
    except (TypeError, ValueError) as e:
        node.construction_problems.append(f"{node.label()}: {field} must hold numbers in a regular array ({e})")
        return None


def _matrix(value: Any, node: Variable, field: str) -> np.ndarray:
    a = _numbers(value, node, field, lambda rows: [[float(v) for v in row] for row in rows])
    if a is None:
        return np.zeros((0, 0))
    if a.ndim != 2:
        node.construction_problems.append(f"{node.label()}: {field} must be a 2-D matrix, got shape {a.shape}")
        a = np.zeros((0, 0))
    return _published(a)


def _published(a: np.ndarray) -> np.ndarray:
    """A weight as a ``Matrix`` view (float64, same shape), so published code can call ``.numpy()`` on it."""
    from recurrent.lsrl.matrix import Matrix

    return np.ascontiguousarray(a).view(Matrix)


def _vector(value: Any, node: Variable, field: str) -> np.ndarray:
    a = _numbers(value, node, field, lambda v: [float(x) for x in v.reshape(-1)])
    if a is None:
        return np.zeros(0)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        node.construction_problems.append(f"{node.label()}: {field} must be a vector, got shape {a.shape}")
        a = np.zeros(0)
    return _published(a)


def _finite(node: Variable, **arrays: np.ndarray) -> list[str]:
    out = []
    for field, a in arrays.items():
        bad = ~np.isfinite(a)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            out.append(f"{node.label()}: {field} has {int(bad.sum())} non-finite entries (first at {idx})")
    return out


def _column(x: Any, dim: int, node: Variable) -> np.ndarray:
    """A token value as a (dim, 1) column: float64, or rationals (object) when it holds Fractions."""
    arr = np.asarray(x)
    if arr.dtype == object and not all(isinstance(v, (Fraction, int)) for v in arr.reshape(-1)):
        arr = np.vectorize(float, otypes=[np.float64])(arr) if arr.size else arr.astype(np.float64)
    arr = arr.astype(np.float64) if arr.dtype != object else arr
    if arr.size != dim:
        raise CompileError(f"{node.label()}: expected a value of {dim} entries, got shape {arr.shape}")
    return arr.reshape(dim, 1)


def _out(value: np.ndarray):
    """A node's one-token output as a ``Matrix`` column (exact values are rounded to float64 here; a
    ``LinState`` keeps its own state exact)."""
    from recurrent.lsrl.matrix import Matrix

    return Matrix(value)


class Input(Variable):
    """The program's token x_t (exactly one per program)."""

    def __init__(self, dim: int, name: str = "Input"):
        super().__init__(dim, name)
        if int(dim) < 1:
            self.construction_problems.append(f"{self.label()}: dim must be at least 1, got {dim}")

    def forward(self, x: Any):
        return _out(_column(x, self.dim, self))


class Linear(Variable):
    """A u + b (affine, no activation)."""

    def __init__(self, input: Variable, A: Any, b: Any = None, name: str = "Linear"):
        _variable(input, name)
        super().__init__(0, name)
        self.A = _matrix(A, self, "A")
        self.dim = self.A.shape[0]
        self.b = _published(np.zeros(self.dim)) if b is None else _vector(b, self, "b")
        self.input = input

    def forward(self, x: Any):
        u = _column(x, self.input.dim, self)
        return _out(self.A @ u + self.b[:, None] if u.dtype != object else _exact_affine(self.A, u, self.b))

    def problems(self) -> list[str]:
        out = super().problems()
        if self.A.shape[1] != self.input.dim:
            out.append(
                f"{self.label()}: A has {self.A.shape[1]} columns but its input {self.input.label()} has dim "
                f"{self.input.dim}"
            )
        if self.b.shape != (self.dim,):
            out.append(f"{self.label()}: b has {self.b.shape[0]} entries, expected {self.dim} (the rows of A)")
        return out + _finite(self, A=self.A, b=self.b)


class Slice(Linear):
    """u[start:end], a Linear with a 0/1 selection matrix."""

    def __init__(self, input: Variable, start: int, end: int, name: str | None = None):
        _variable(input, name or "Slice")
        self.start, self.end = int(start), int(end)
        width = max(self.end - self.start, 0)
        A = np.zeros((width, input.dim))
        if 0 <= self.start and self.end <= input.dim:
            A[np.arange(width), self.start + np.arange(width)] = 1.0
        super().__init__(input, A, np.zeros(width), name=name or f"Slice[{self.start}:{self.end}]")
        self.always_positive = input.always_positive

    def problems(self) -> list[str]:
        out = Variable.problems(self)
        if not (0 <= self.start < self.end <= self.input.dim):
            out.append(
                f"{self.label()}: slice [{self.start}:{self.end}] is empty or outside its input "
                f"{self.input.label()} of dim {self.input.dim}"
            )
        elif self.A.shape[1] != self.input.dim:
            out.append(f"{self.label()}: its input {self.input.label()} changed dim to {self.input.dim}")
        return out


class Concat(Variable):
    """[v1; v2; ...]; the same variable may appear several times."""

    def __init__(self, inputs: Sequence[Variable], name: str = "Concat"):
        inputs = [_variable(i, name, f"input {k}") for k, i in enumerate(inputs)]
        super().__init__(sum(i.dim for i in inputs), name)
        self.input = inputs
        self.always_positive = bool(inputs) and all(i.always_positive for i in inputs)

    def forward(self, *args: Any):
        if len(args) != len(self.input):
            raise CompileError(f"{self.label()}: expected {len(self.input)} input values, got {len(args)}")
        return _out(np.vstack([_column(a, i.dim, self) for a, i in zip(args, self.input)]))

    def problems(self) -> list[str]:
        out = super().problems()
        if not self.input:
            out.append(f"{self.label()}: needs at least one input")
        elif self.dim != sum(i.dim for i in self.input):
            out.append(f"{self.label()}: dim {self.dim} is not the sum of its inputs' dims")
        return out


class ReLU(Variable):
    """max(u, 0) elementwise."""

    def __init__(self, input: Variable, name: str = "ReLU"):
        super().__init__(_variable(input, name).dim, name)
        self.input = input
        self.always_positive = True

    def forward(self, x: Any):
        u = _column(x, self.dim, self)
        return _out(np.maximum(u, 0.0) if u.dtype != object else np.where(u > 0, u, 0))

    def problems(self) -> list[str]:
        out = super().problems()
        if self.dim != self.input.dim:
            out.append(f"{self.label()}: dim {self.dim} differs from its input's {self.input.dim}")
        return out


class LinState(Variable):
    """s_t = A s_{t-1} + B u_t + bias with s_0 = init_state; outputs the updated s_t (the only stateful node)."""

    def __init__(
        self, input: Variable, A: Any, B: Any, init_state: Any, name: str = "LinState", bias: Any = None
    ):
        _variable(input, name)
        super().__init__(0, name)
        self.A = _matrix(A, self, "A")
        self.dim = self.A.shape[0]
        self.B = _matrix(B, self, "B")
        self.init_state = _vector(init_state, self, "init_state")
        self.bias = _published(np.zeros(self.dim)) if bias is None else _vector(bias, self, "bias")
        self.input = input
        self._state = self.init_state.copy()

    @property
    def state(self):
        """The current state s_t as a (dim, 1) column (``init_state`` before the first token or after ``reset``)."""
        return _out(np.asarray(self._state).reshape(-1, 1))

    def reset(self) -> None:
        self._state = self.init_state.copy()

    def forward(self, x: Any):
        u = _column(x, self.input.dim, self)
        s = np.asarray(self._state).reshape(-1, 1)
        if u.dtype == object or s.dtype == object:
            from recurrent.lsrl.exact import rational_array

            s = s if s.dtype == object else rational_array(s)
            new = _exact_affine(self.A, s, self.bias) + _exact_affine(self.B, u, np.zeros(self.dim))
        else:
            new = self.A @ s + self.B @ u + self.bias[:, None]
        self._state = new.reshape(-1)
        return self.state

    def problems(self) -> list[str]:
        out = super().problems()
        d = self.dim
        if self.A.shape != (d, d):
            out.append(f"{self.label()}: A must be square, got shape {self.A.shape}")
        if self.B.shape != (d, self.input.dim):
            out.append(
                f"{self.label()}: B has shape {self.B.shape}, expected ({d}, {self.input.dim}) for state dim {d} "
                f"and input {self.input.label()} of dim {self.input.dim}"
            )
        if self.init_state.shape != (d,):
            out.append(f"{self.label()}: init_state has {self.init_state.shape[0]} entries, expected {d}")
        if self.bias.shape != (d,):
            out.append(f"{self.label()}: bias has {self.bias.shape[0]} entries, expected {d}")
        return out + _finite(self, A=self.A, B=self.B, init_state=self.init_state, bias=self.bias)


class Multiplicative(Variable):
    """u[:h] * u[h:] with h = dim(u) / 2 (the input dim must be even)."""

    def __init__(self, input: Variable, name: str = "Multiplicative"):
        super().__init__(_variable(input, name).dim // 2, name)
        self.input = input

    def forward(self, x: Any):
        u = _column(x, self.input.dim, self)
        return _out(u[: self.dim] * u[self.dim :])

    def problems(self) -> list[str]:
        out = super().problems()
        if self.input.dim % 2:
            out.append(
                f"{self.label()}: its input {self.input.label()} has odd dim {self.input.dim}; Multiplicative "
                "multiplies the two halves of an even-width input"
            )
        elif self.dim != self.input.dim // 2:
            out.append(f"{self.label()}: its input {self.input.label()} changed dim to {self.input.dim}")
        return out


def _exact_affine(A: np.ndarray, u: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A u + b in rational arithmetic (A and b read as the rationals their floats are)."""
    from recurrent.lsrl.exact import rational_array

    u = u if u.dtype == object else rational_array(u)
    return rational_array(A).dot(u) + rational_array(b).reshape(-1, 1)


def f_relu_identity(x: Variable) -> Variable:
    """x = ReLU(x) - ReLU(-x): the identity built from ReLUs (exact in floating point, one of the terms is 0)."""
    d = x.dim
    both = Concat([ReLU(x), ReLU(Linear(x, -np.eye(d), np.zeros(d), name="FlipSign"))])
    return Linear(both, np.hstack([np.eye(d), -np.eye(d)]), np.zeros(d), name="PosAndNegFuse")


# --- the program --------------------------------------------------------------------------------------------


def topological_order(output: Variable) -> tuple[list[Variable], list[str]]:
    """Nodes reachable backwards from ``output``, inputs before consumers, and the cycles found (as messages)."""
    order: list[Variable] = []
    state: dict[int, int] = {}  # 1 = on the stack, 2 = done
    problems: list[str] = []
    stack: list[tuple[Variable, int]] = [(output, 0)]
    path: list[Variable] = []
    while stack:
        node, i = stack.pop()
        if i == 0:
            if state.get(node.uid) == 2:
                continue
            state[node.uid] = 1
            path.append(node)
        ins = node.inputs
        if i < len(ins):
            stack.append((node, i + 1))
            child = ins[i]
            if not isinstance(child, Variable):
                problems.append(f"{node.label()}: input {i} is a {type(child).__name__}, not an LSRL variable")
            elif state.get(child.uid) == 1:
                cyc = path[path.index(child):] + [child]
                problems.append("cycle: " + " -> ".join(n.label() for n in reversed(cyc)))
            elif state.get(child.uid) != 2:
                stack.append((child, 0))
        else:
            state[node.uid] = 2
            path.pop()
            order.append(node)
    return order, problems


def validate(output: Variable) -> list[Variable]:
    """Every node of the program in topological order; raises one ``CompileError`` listing every problem."""
    if not isinstance(output, Variable):
        raise CompileError(f"ForEach: the output must be an LSRL variable, got {type(output).__name__}")
    nodes, problems = topological_order(output)
    acyclic = not problems
    inputs = [n for n in nodes if isinstance(n, Input)]
    if not inputs:
        problems.append("the program has no Input node; exactly one is required")
    elif len(inputs) > 1:
        problems.append(
            f"the program has {len(inputs)} Input nodes ({', '.join(n.label() for n in inputs)}); exactly one "
            "is required"
        )
    for n in nodes:  # shape checks read input dims, which need an acyclic graph of variables
        problems.extend(n.problems() if acyclic else n.construction_problems)
    if problems:
        raise CompileError(problems)
    return nodes
