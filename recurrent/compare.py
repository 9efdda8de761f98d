"""Where does a compiled model depart from its program? Per-value deviations of the compiled chain.

``compare`` compiles a program whose output is the concatenation of named intermediate values (counters,
switches, registers), runs it with the interpreter in float64 (the reference) and as a jitted chain in the
requested dtype, and reports for each name the largest deviation and the first token where it exceeds a
tolerance. The first value to go wrong, in program order, is where a numerical problem starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from recurrent.compile import CompileConfig, compile_program
from recurrent.lsrl import Concat, ForEach, Variable
from recurrent.lsrl.interpreter import run
from recurrent.scan import chain_kinds, chain_params, run_chain


@dataclasses.dataclass(frozen=True)
class Deviation:
    name: str
    max_abs: float
    first_token: int | None
    """First token where |compiled - interpreted| > tol (None: never)."""


def compare(
    values: Mapping[str, Variable],
    tokens_BxTxD: np.ndarray,
    *,
    dtype=jnp.float32,
    tol: float = 1e-3,
    cfg: CompileConfig = CompileConfig(),
) -> list[Deviation]:
    """Deviation of every named value, compiled and run in ``dtype``, from the float64 interpreter."""
    names = list(values)
    prog = ForEach(Concat([values[n] for n in names]))
    want = run(prog, tokens_BxTxD)
    chain = compile_program(prog, cfg)
    with jax.enable_x64(jnp.dtype(dtype) == jnp.float64):
        got = np.asarray(run_chain(chain_params(chain, dtype), chain_kinds(chain), tokens_BxTxD), np.float64)
    out, start = [], 0
    for n in names:
        d = values[n].dim
        err = np.abs(got[..., start : start + d] - want[..., start : start + d])
        bad = np.flatnonzero(err.max(axis=(0, 2)) > tol)
        out.append(Deviation(n, float(err.max()) if err.size else 0.0, int(bad[0]) if len(bad) else None))
        start += d
    return out
