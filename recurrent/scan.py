"""Jitted execution of a compiled chain over whole batched sequences.

Each state layer is a linear recurrence s_t = A s_{t-1} + z_t (z_t = W h_t + b) over its r recurrent lanes,
run either with ``lax.scan`` (sequential, O(T r^2)) or with ``lax.associative_scan`` (parallel in time,
O(T r^3 log T) work, depth O(log T)) on the affine maps (A, z_t), combined as
    (A_1, z_1) . (A_2, z_2) = (A_2 A_1, A_2 z_1 + z_2),
with s_0 folded into the first element (z_1 <- z_1 + A s_0). Pass-through lanes are the pre-activations
themselves; ReLU and product layers are position-wise. The dtype is the caller's: the parameters and tokens are
cast to it (float64 needs ``jax.enable_x64``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recurrent.chain import Chain
from recurrent.errors import CompileError

Params = dict  # {"layers": [ {weight, bias[, A, init]} ... ], "readout_weight", "readout_bias"}


def chain_params(chain: Chain, dtype=jnp.float32) -> Params:
    """The chain's arrays as a pytree of ``dtype`` arrays (the layer kinds stay static, in ``chain_kinds``)."""
    check_dtype(dtype)
    cast = lambda a: jnp.asarray(np.asarray(a), dtype=dtype)  # noqa: E731
    return {
        "layers": [{k: cast(v) for k, v in layer.arrays().items()} for layer in chain.layers],
        "readout_weight": cast(chain.readout_weight),
        "readout_bias": cast(chain.readout_bias),
    }


def chain_kinds(chain: Chain) -> tuple[str, ...]:
    return tuple(layer.kind for layer in chain.layers)


def check_dtype(dtype) -> None:
    if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise CompileError("dtype float64 needs 64-bit JAX: run under `with jax.enable_x64(True):`")


def linear_recurrence(A_RxR: jax.Array, s0_R: jax.Array, z_BxTxR: jax.Array, associative: bool = False) -> jax.Array:
    """s_t = A s_{t-1} + z_t for t = 1..T from s_0, for every batch row: (B, T, R)."""
    if z_BxTxR.shape[-1] == 0:
        return z_BxTxR
    if not associative:
        def step(s_BxR, z_BxR):
            s_BxR = s_BxR @ A_RxR.T + z_BxR
            return s_BxR, s_BxR

        s0_BxR = jnp.broadcast_to(s0_R, z_BxTxR.shape[::2]).astype(z_BxTxR.dtype)
        _, s_TxBxR = jax.lax.scan(step, s0_BxR, jnp.swapaxes(z_BxTxR, 0, 1))
        return jnp.swapaxes(s_TxBxR, 0, 1)
    steps = z_BxTxR.shape[1]
    z_TxBxR = jnp.swapaxes(z_BxTxR, 0, 1)
    z_TxBxR = z_TxBxR.at[0].add((s0_R @ A_RxR.T)[None])
    A_TxRxR = jnp.broadcast_to(A_RxR, (steps,) + A_RxR.shape)

    def combine(first, second):
        A1, z1 = first
        A2, z2 = second
        return A2 @ A1, jnp.einsum("trs,tbs->tbr", A2, z1) + z2

    _, s_TxBxR = jax.lax.associative_scan(combine, (A_TxRxR, z_TxBxR))
    return jnp.swapaxes(s_TxBxR, 0, 1)


def run_chain(
    params: Params, kinds: Sequence[str], x_BxTxD: jax.Array, *, associative: bool = False
) -> jax.Array:
    """Outputs (B, T, O) of the chain with these parameters (pure; jit it with ``kinds`` static)."""
    dtype = params["readout_weight"].dtype
    h = jnp.asarray(x_BxTxD, dtype)
    for kind, p in zip(kinds, params["layers"]):
        z = h @ p["weight"].T + p["bias"][None, None]
        if kind == "relu":
            h = jax.nn.relu(z)
        elif kind == "mul":
            w = z.shape[-1] // 2
            h = z[..., :w] * z[..., w:]
        elif kind == "state":
            r = p["A"].shape[0]
            s = linear_recurrence(p["A"], p["init"], z[..., :r], associative)
            h = jnp.concatenate([s, z[..., r:]], axis=-1)
        else:
            raise CompileError(f"run_chain: unknown layer kind {kind!r}")
    return h @ params["readout_weight"].T + params["readout_bias"][None, None]
