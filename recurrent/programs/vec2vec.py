"""Continuous function approximation in context (Petrov et al., 2024, Sec. 4, Listing 1).

A fixed program, prompted with a discretised lookup table of any continuous f: [0, 1]^d -> R^o, outputs the
value of f at the centre of the grid cell holding the query x, a piecewise-constant approximation whose error
shrinks as the grid is refined (O(1/N) for Lipschitz f).

Prompt (token dim 1 + d + o): token 1 is [x, 0, ..., 0]; then one token per cell of the N^d grid,
[1/N, lower corner of the cell (d values), f(cell centre) (o values)]. The answer is read at the last token.

Program (n the token counter, IF one of the conditional modes):

    x     = state accumulating  IF n < 1.5 THEN tok[0:d]                   (holds the query)
    in    = sum_i bump(x_i; lb_i, lb_i + 1/N) > d - 1/2                    (x is inside this cell)
    y     = state accumulating  IF in THEN tok[1+d:]                       (the cell's value, once)

A query within 1/scale of a cell edge falls on a step ramp; ``vec2vec_queries`` keeps queries 2/scale away.
lambda (non-gated modes) must exceed every |f| and |x|; the default 100 is far from float64's limit, unlike the
published 1e10.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np

from recurrent.errors import CompileError
from recurrent.lsrl import ForEach, Input, LinState, Linear, f_bump, f_constant, f_larger, f_smaller
from recurrent.programs.conditionals import MODES, broadcast, conditional


@dataclasses.dataclass(frozen=True, kw_only=True)
class Vec2VecSpec:
    in_dim: int = 1
    out_dim: int = 1
    mode: str = "multiplicative_optimized"
    scale: float = 1024.0
    """Step slope; a power of two makes folding a step into a scaled reader exact (see passes.lower)."""
    large_constant: float = 100.0

    def __post_init__(self):
        for name in ("in_dim", "out_dim"):
            if getattr(self, name) < 1:
                raise CompileError(f"Vec2VecSpec.{name}={getattr(self, name)}: must be at least 1")
        if self.mode not in MODES:
            raise CompileError(f"Vec2VecSpec.mode={self.mode!r}: must be one of {MODES}")
        if not self.scale > 0 or not self.large_constant > 0:
            raise CompileError("Vec2VecSpec.scale and .large_constant must be positive")

    @property
    def token_dim(self) -> int:
        return 1 + self.in_dim + self.out_dim


def vec2vec_program(spec: Vec2VecSpec) -> ForEach:
    d, o = spec.in_dim, spec.out_dim
    kw = dict(large_constant=spec.large_constant, scale=spec.scale)
    tok = Input(spec.token_dim)
    n = LinState(f_constant(tok, 1.0), np.eye(1), np.eye(1), [0.0], name="Position")
    first = f_smaller(n, 1.5, scale=spec.scale)
    x = LinState(conditional(spec.mode, first, tok[0:d], **kw), np.eye(d), np.eye(d), np.zeros(d), name="Query")
    lower = tok[1 : 1 + d]
    upper = lower + broadcast(tok[0], d)
    bumps = f_bump(x, lower, upper, scale=spec.scale)
    inside = f_larger(Linear(bumps, np.ones((1, d)), [0.0], name="BumpSum"), d - 0.5, scale=spec.scale)
    y = LinState(conditional(spec.mode, inside, tok[1 + d :], **kw), np.eye(o), np.eye(o), np.zeros(o), name="Value")
    return ForEach(y)


def grid_cells(n: int, in_dim: int) -> np.ndarray:
    """Lower corners of the N^d cells, (N^d, d), in lexicographic order."""
    return np.array(list(itertools.product(range(n), repeat=in_dim)), dtype=np.float64).reshape(-1, in_dim) / n


def vec2vec_prompts(
    fn: Callable[[np.ndarray], np.ndarray], spec: Vec2VecSpec, n: int, queries: np.ndarray
) -> np.ndarray:
    """Tokens (B, 1 + N^d, 1 + d + o), one prompt per query row of ``queries`` (B, d), all for the same f."""
    queries = np.asarray(queries, dtype=np.float64).reshape(-1, spec.in_dim)
    lower = grid_cells(n, spec.in_dim)
    values = np.asarray(fn(lower + 0.5 / n), dtype=np.float64).reshape(len(lower), spec.out_dim)
    body = np.concatenate([np.full((len(lower), 1), 1.0 / n), lower, values], axis=1)
    head = np.zeros((len(queries), 1, spec.token_dim))
    head[:, 0, : spec.in_dim] = queries
    return np.concatenate([head, np.broadcast_to(body, (len(queries),) + body.shape)], axis=1)


def vec2vec_ideal(fn: Callable[[np.ndarray], np.ndarray], n: int, queries: np.ndarray) -> np.ndarray:
    """f at the centre of the cell holding each query: what the program must output, (B, o)."""
    cell = np.clip(np.floor(np.asarray(queries) * n), 0, n - 1)
    return np.asarray(fn((cell + 0.5) / n))


def vec2vec_queries(rng: np.random.Generator, count: int, in_dim: int, n: int, scale: float) -> np.ndarray:
    """Uniform queries in [0, 1)^d at least 2/scale from every cell edge (off the step ramps)."""
    margin = 2.0 / scale
    if margin * 2 >= 1.0 / n:
        raise CompileError(f"vec2vec_queries: cells of width 1/{n} are too narrow for step ramps of width 1/{scale}")
    out = []
    while len(out) < count:
        q = rng.uniform(0.0, 1.0, size=(count, in_dim))
        frac = q * n - np.floor(q * n)
        ok = np.all((frac > margin * n) & (frac < 1 - margin * n), axis=1)
        out.extend(q[ok])
    return np.array(out[:count])


def random_target(seed: int, in_dim: int, out_dim: int, components: int = 4) -> Callable[[np.ndarray], np.ndarray]:
    """A random smooth f: [0, 1]^d -> [-1, 1]^o (a normalised sum of random sinusoids)."""
    rng = np.random.default_rng(seed)
    freq = rng.normal(0.0, 3.0, size=(components, in_dim, out_dim))
    phase = rng.uniform(0, 2 * np.pi, size=(components, out_dim))
    amp = rng.uniform(0.3, 1.0, size=(components, out_dim))
    amp = amp / amp.sum(axis=0)

    def f(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        z = np.einsum("...d,kdo->...ko", x, freq) + phase
        return np.sum(amp * np.sin(z), axis=-2)

    return f
