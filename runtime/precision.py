"""Mixed precision for training: float32 master copies of the trained weights, a narrow copy for the forward pass.

A model stores its weights in ``param_dtype`` (bfloat16 for the 7B presets) and computes in ``dtype``. Training
those weights in place fails silently: an AdamW update at step t is about ``lr_t`` in magnitude (the normalised
update m_hat / (sqrt(v_hat) + eps) is of order 1 in the first steps), and a float x stored with p mantissa bits
only moves when |update| > spacing(x) / 2, with

    spacing(x) = 2^floor(log2 |x|) * eps_dtype,        eps_bfloat16 = 2^-7,  eps_float32 = 2^-23,

so at |x| = 0.02 bfloat16 resolves 1.2e-4 and a recipe's lr 5e-7 rounds away (float32 resolves 1.9e-9).

The policy (``Precision``) keeps each trained floating leaf in ``master`` (float32 by default) inside the train
state, and remembers the dtype the model stores it in (its *forward dtype*). The train step casts the masters to
their forward dtypes once per step, differentiates the loss with respect to that copy, accumulates the gradients
in the master dtype and updates the masters. Frozen leaves stay as stored and pay nothing. The checkpoint holds
the masters; a float32 run is untouched (every forward dtype equals its master dtype).

``update_resolution`` is the guard: for every trained leaf it compares the spacing of its stored dtype at its
typical magnitude with the first steps' typical update, so a run that keeps narrow masters is told what it gets.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from runtime.errors import RuntimeConfigError

FLOAT_DTYPES = ("float64", "float32", "bfloat16", "float16")


class PrecisionWarning(UserWarning):
    """The trained parameters' dtype cannot resolve the optimizer's updates at their magnitude."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Precision:
    """How trained weights and optimizer moments are stored.

    ``master``: dtype of the trained floating parameters in the train state ("float32"; "stored" keeps the dtype the
    model stores them in, e.g. bfloat16 masters, which the start-up guard warns about when the updates round away).
    ``moments``: dtype of the optimizer's floating state ("master": the same as the masters; "bfloat16" halves its
    memory, each update computed in the master dtype and the state rounded back to nearest).
    """

    master: str = "float32"
    moments: str = "master"

    def __post_init__(self):
        if self.master not in ("stored", *FLOAT_DTYPES):
            raise RuntimeConfigError(f"Precision.master={self.master!r}: expected 'stored' or one of {FLOAT_DTYPES}")
        if self.moments not in ("master", *FLOAT_DTYPES):
            raise RuntimeConfigError(f"Precision.moments={self.moments!r}: expected 'master' or one of {FLOAT_DTYPES}")


def _is_float(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


def master_dtype(stored, precision: Precision):
    """The dtype a trained leaf stored as ``stored`` is kept in: never narrower than stored."""
    if precision.master == "stored" or not jnp.issubdtype(stored, jnp.floating):
        return jnp.dtype(stored)
    want = jnp.dtype(precision.master)
    return want if jnp.finfo(want).bits >= jnp.finfo(stored).bits else jnp.dtype(stored)


def forward_dtypes(params: Any) -> tuple[str, ...]:
    """The stored dtype of every leaf (by name, so that it is hashable static metadata of the train state)."""
    return tuple(jnp.dtype(x.dtype).name for x in jax.tree.leaves(params))


def to_masters(params: Any, mask: Sequence[bool], precision: Precision) -> Any:
    """``params`` with every trained floating leaf cast to its master dtype (a no-op for float32 parameters)."""
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten([x.astype(master_dtype(x.dtype, precision)) if m else x for x, m in zip(leaves, mask)])


def to_forward(params: Any, dtypes: Sequence[str]) -> Any:
    """The copy the forward pass sees: every leaf in the dtype the model stores it in (no-op where they agree)."""
    leaves, treedef = jax.tree.flatten(params)
    if not dtypes:
        return params
    if len(dtypes) != len(leaves):
        raise RuntimeConfigError(f"{len(dtypes)} forward dtypes for {len(leaves)} parameter leaves")
    return treedef.unflatten([x if x.dtype == jnp.dtype(d) else x.astype(d) for x, d in zip(leaves, dtypes)])


def moments_state(tx: optax.GradientTransformation, train: Any, precision: Precision) -> Any:
    """``tx.init(train)`` with its floating state in ``precision.moments``. The dtypes fixed here are kept by every
    update (``TrainState.apply_gradients`` rounds the new state back to them), and each update computes in the
    wider of the two dtypes, so narrow moments cost only their rounding."""
    state = tx.init(train)
    if precision.moments == "master":
        return state
    narrow = jnp.dtype(precision.moments)
    return jax.tree.map(lambda x: x.astype(narrow) if _is_float(x) else x, state)


@dataclasses.dataclass(frozen=True)
class LeafResolution:
    """One trained leaf: its dtype, typical magnitude (mean |x|), the spacing there, and the update it is told."""

    path: str
    dtype: str
    size: int
    magnitude: float
    spacing: float
    update: float

    @property
    def resolved(self) -> bool:
        """Whether an update of this size moves a typical entry at all (round to nearest: |u| > spacing / 2)."""
        return self.update > self.spacing / 2


def spacing_at(magnitude: float, dtype) -> float:
    """The distance between adjacent floats of ``dtype`` at |x| = magnitude (0 for 0: zeros resolve anything)."""
    if magnitude <= 0 or not math.isfinite(magnitude):
        return 0.0
    info = jnp.finfo(dtype)
    exponent = max(math.floor(math.log2(magnitude)), int(info.minexp))
    return float(2.0 ** exponent * float(info.eps))


@jax.jit
def _mean_abs(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.mean(jnp.abs(x.astype(jnp.float32))) for x in leaves]) if leaves else jnp.zeros((0,))


def update_resolution(params: Any, mask: Sequence[bool], update: float, paths: Sequence[str]) -> list[LeafResolution]:
    """Every trained floating leaf against an update of size ``update`` (the peak learning rate for Adam)."""
    leaves = jax.tree.leaves(params)
    chosen = [(p, x) for p, x, m in zip(paths, leaves, mask) if m and _is_float(x) and x.size]
    means = np.asarray(jax.device_get(_mean_abs([x for _, x in chosen])), np.float64)
    return [LeafResolution(p, jnp.dtype(x.dtype).name, int(x.size), float(mu), spacing_at(float(mu), x.dtype),
                           float(update))
            for (p, x), mu in zip(chosen, means)]


def unresolved_summary(report: Sequence[LeafResolution]) -> str | None:
    """A warning's text naming the trained leaves whose updates round away, or None when every leaf resolves."""
    bad = [r for r in report if not r.resolved]
    if not bad:
        return None
    n_bad, n_all = sum(r.size for r in bad), sum(r.size for r in report)
    worst = sorted(bad, key=lambda r: r.update / r.spacing)[:4]
    lines = [f"{r.path} ({r.dtype}, {r.size:,} entries): typical |w| {r.magnitude:.3g}, spacing there "
             f"{r.spacing:.3g}, update {r.update:.3g}" for r in worst]
    return (f"{len(bad)} of {len(report)} trained parameter arrays ({n_bad:,} of {n_all:,} entries) are stored in a "
            f"dtype that cannot resolve the first steps' updates: an update below half the spacing of floats at the "
            f"weights' magnitude rounds to no change. Keep float32 masters (--run.precision.master float32) or raise "
            f"the learning rate. " + "; ".join(lines))


def warn_if_unresolved(params: Any, mask: Sequence[bool], update: float, paths: Sequence[str]) -> list[LeafResolution]:
    """Issues a ``PrecisionWarning`` with the numbers when some trained leaf cannot be moved by ``update``."""
    report = update_resolution(params, mask, update, paths)
    text = unresolved_summary(report)
    if text is not None:
        warnings.warn(text, PrecisionWarning, stacklevel=2)
    return report
