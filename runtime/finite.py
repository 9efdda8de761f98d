"""The first leaf of a pytree that holds a NaN or an Inf: one fused reduction on the devices, one small flag array
back to the host (no parameter is gathered), so it can run before every checkpoint of a 7B state."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from runtime.tree_paths import path_str


def _flags(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    flags = [~jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.zeros((), bool)
             for x in leaves]
    return jnp.stack(flags) if flags else jnp.zeros((0,), bool)


_flags_jit = jax.jit(_flags)


def first_nonfinite(tree: Any) -> str | None:
    """The slash-joined path of the first leaf (in tree order) with a non-finite entry, or None."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        return None
    bad = np.flatnonzero(np.asarray(jax.device_get(_flags_jit(tree))))
    return path_str(flat[bad[0]][0]) if bad.size else None
