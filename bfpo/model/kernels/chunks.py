"""Positions in chunks: T padded to a multiple of C with zero-weight positions, a ``lax.scan`` over the chunks."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def over_chunks(chunk_fn: Callable, h_BxTxD: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                chunk: int) -> jax.Array:
    """sum over chunks of ``chunk_fn(h [B, C, D], targets [B, C], weights [B, C] float32) -> [B]``."""
    b, t, _ = h_BxTxD.shape
    chunk = max(1, min(chunk, t))
    pad = -t % chunk
    weights = weights_BxT.astype(jnp.float32)
    if pad:
        h_BxTxD = jnp.pad(h_BxTxD, ((0, 0), (0, pad), (0, 0)))
        targets_BxT = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    if n == 1:  # one chunk: no loop to pay for
        return chunk_fn(h_BxTxD, targets_BxT, weights)
    to_chunks = lambda x: jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)  # noqa: E731

    def body(total_B, xs):
        return total_B + chunk_fn(*xs), None

    total, _ = jax.lax.scan(body, jnp.zeros((b,), jnp.float32),
                            (to_chunks(h_BxTxD), to_chunks(targets_BxT), to_chunks(weights)))
    return total
