"""Reference semantics of LSRL: a program run token by token, in float64 or in exact rational arithmetic.

For every token t = 0 .. T-1 the nodes are evaluated in topological order (inputs first), each on the values
of its inputs at the same token (the table in ``recurrent.lsrl.syntax``). A ``LinState`` reads its own state
from token t-1 (``init_state`` before the first token) and outputs the updated state, so a state read in the
same step already holds this token's update. All states start at ``init_state`` for each sequence.

Sequences are batched: ``x`` is (B, T, in_dim), the output (B, T, out_dim). ``exact=True`` runs in
``fractions.Fraction`` arithmetic with every weight read as a rational (``recurrent.lsrl.exact``), so a
construction error (wrong even in exact arithmetic) can be told apart from a rounding error. It is slow: use
it for small programs and short sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from recurrent.errors import CompileError
from recurrent.lsrl.exact import rational_array
from recurrent.lsrl.syntax import Concat, Input, LinState, Linear, Multiplicative, ReLU, Variable, validate


def _weights(node: Variable, exact: bool, cache: dict) -> dict[str, np.ndarray]:
    key = node.uid
    if key not in cache:
        if isinstance(node, Linear):
            w = {"A": node.A, "b": node.b}
        elif isinstance(node, LinState):
            w = {"A": node.A, "B": node.B, "bias": node.bias, "init_state": node.init_state}
        else:
            w = {}
        if exact:
            w = {k: rational_array(v) for k, v in w.items()}
        cache[key] = w
    return cache[key]


def _relu(u: np.ndarray) -> np.ndarray:
    if u.dtype == object:
        return np.where(u > 0, u, Fraction(0))
    return np.maximum(u, 0.0)


def _as_tokens(x: Any, in_dim: int, exact: bool) -> np.ndarray:
    if exact:
        arr = np.asarray(x, dtype=object)
        if arr.ndim == 2:
            arr = arr[None]
        flat = arr.reshape(-1)
        if not all(isinstance(v, (Fraction, int)) for v in flat):
            arr = rational_array(np.asarray(arr, dtype=np.float64))
    else:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim == 2:
            arr = arr[None]
    if arr.ndim != 3 or arr.shape[2] != in_dim:
        raise CompileError(f"interpreter: expected tokens of shape (B, T, {in_dim}) or (T, {in_dim}), got {arr.shape}")
    return arr


def program_nodes(program: Any) -> list[Variable]:
    """The nodes of ``program`` in evaluation order: a ``ForEach`` (anything with ``nodes``), an output node (its
    DAG, validated), or a node list already in topological order."""
    if isinstance(program, Variable):
        return validate(program)
    if isinstance(program, Sequence):
        return list(program)
    return list(program.nodes)


def program_output(program: Any) -> Variable:
    if isinstance(program, Variable):
        return program
    if isinstance(program, Sequence):
        return program[-1]
    return program.output


def run_nodes(
    program: Any,
    x: Any,
    probes: Sequence[Variable],
    *,
    exact: bool = False,
    initial_states: Mapping[int, np.ndarray] | None = None,
    return_states: bool = False,
):
    """Values of each node in ``probes`` at every token, as a list of (B, T, dim) arrays.

    ``initial_states`` (keyed by ``LinState.uid``, each (B, dim)) continues from earlier states instead of
    ``init_state``; with ``return_states`` the final states come back too, in the same form.
    """
    nodes = program_nodes(program)
    inp = next(n for n in nodes if isinstance(n, Input))
    known = {n.uid for n in nodes}
    for p in probes:
        if p.uid not in known:
            raise CompileError(f"interpreter: probe {p.label()} is not part of the program")
    x = _as_tokens(x, inp.dim, exact)
    batch, steps, _ = x.shape
    cache: dict[int, dict[str, np.ndarray]] = {}
    states: dict[int, np.ndarray] = {}
    for n in nodes:
        if isinstance(n, LinState):
            if initial_states is not None and n.uid in initial_states:
                states[n.uid] = np.asarray(initial_states[n.uid], dtype=x.dtype)
            else:
                s0 = _weights(n, exact, cache)["init_state"]
                states[n.uid] = np.broadcast_to(s0, (batch, n.dim)).copy()
    traces: list[list[np.ndarray]] = [[] for _ in probes]
    for t in range(steps):
        value: dict[int, np.ndarray] = {}
        for n in nodes:
            if isinstance(n, Input):
                v = x[:, t, :]
            elif isinstance(n, Linear):  # Slice included
                w = _weights(n, exact, cache)
                v = value[n.input.uid] @ w["A"].T + w["b"]
            elif isinstance(n, Concat):
                v = np.concatenate([value[i.uid] for i in n.input], axis=1)
            elif isinstance(n, ReLU):
                v = _relu(value[n.input.uid])
            elif isinstance(n, LinState):
                w = _weights(n, exact, cache)
                v = states[n.uid] @ w["A"].T + value[n.input.uid] @ w["B"].T + w["bias"]
                states[n.uid] = v
            elif isinstance(n, Multiplicative):
                u = value[n.input.uid]
                v = u[:, : n.dim] * u[:, n.dim :]
            else:
                raise CompileError(f"interpreter: {n.label()} is not an LSRL primitive")
            value[n.uid] = v
        for k, p in enumerate(probes):
            traces[k].append(value[p.uid])
    dtype = object if exact else np.float64
    out = [
        np.stack(tr, axis=1) if tr else np.zeros((batch, 0, p.dim), dtype=dtype) for tr, p in zip(traces, probes)
    ]
    if return_states:
        return out, states
    return out


def run(program: Any, x: Any, *, exact: bool = False, initial_states=None, return_states=False):
    """The program's output at every token: (B, T, out_dim) for tokens (B, T, in_dim) (float64 or Fractions).

    ``program``: a ``ForEach``, its output node, or a node list in topological order (output last)."""
    output = program_output(program)
    res = run_nodes(
        program, x, [output], exact=exact, initial_states=initial_states, return_states=return_states
    )
    if return_states:
        (y,), states = res
        return y, states
    return res[0]
