"""The five interchangeable conditional assignments "IF c THEN t [ELSE f]" of the paper's programs.

    direct                    f_ifelse(c, t, f or 0 t)            lambda, no product
    optimized                 ReLU(t - lambda (1 - c)) - ReLU(-t - lambda (1 - c))   (one branch, lambda)
    step_optimized            f_ifelse_step(c, t, f)             c re-binarised by a step, lambda
    multiplicative            f_ifelse_mul(c, t, f or 0 t)        c t + (1 - c) f, exact, no lambda
    multiplicative_optimized  f_ifelse_mul(c, t, f)              a single product c t when f is missing

The non-gated modes are valid only while |t|, |f| < lambda; the gated ones need a target with a native
product. ``c`` is broadcast to the dim of ``t`` (LSRL itself has no broadcasting).
"""

from __future__ import annotations

import numpy as np

from recurrent.errors import CompileError
from recurrent.lsrl import ReLU, Linear, Variable, f_ifelse, f_ifelse_mul, f_ifelse_step, f_not

MODES = ("direct", "optimized", "step_optimized", "multiplicative", "multiplicative_optimized")


def broadcast(c: Variable, dim: int) -> Variable:
    """A 1-dim value repeated ``dim`` times (a Linear with a column of ones)."""
    if c.dim == dim:
        return c
    if c.dim != 1:
        raise CompileError(f"broadcast: cannot broadcast {c.label()} of dim {c.dim} to {dim}")
    return Linear(c, np.ones((dim, 1)), np.zeros(dim), name="Broadcast")


def conditional(
    mode: str,
    c: Variable,
    t: Variable,
    f: Variable | None = None,
    *,
    large_constant: float = 1e10,
    scale: float = 1000,
) -> Variable:
    """IF c THEN t ELSE f (f missing: 0) in the given mode (see the module docstring)."""
    if mode not in MODES:
        raise CompileError(f"conditional: mode must be one of {MODES}, got {mode!r}")
    c = broadcast(c, t.dim)
    if mode == "direct":
        return f_ifelse(c, t, f if f is not None else t * 0, large_constant=large_constant)
    if mode == "step_optimized":
        return f_ifelse_step(c, t, f, large_constant=large_constant, scale=scale)
    if mode == "multiplicative":
        return f_ifelse_mul(c, t, f if f is not None else t * 0)
    if mode == "multiplicative_optimized":
        return f_ifelse_mul(c, t, f)
    off = f_not(c) * (-large_constant)
    out = ReLU(off + t) - ReLU(off - t)
    if f is not None:
        on = c * (-large_constant)
        out = out + (ReLU(on + f) - ReLU(on - f))
    return out
