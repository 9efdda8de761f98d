"""Which keys each query may see, in the form every attention kernel takes.

Query t (at cache slot q_t) may see key s (at slot k_s) when s is a real token, k_s <= q_t, and, for a
sliding-window model, q_t - k_s < window:

    allowed[b, t, s] = valid[b, s]  and  k_s <= q_t  and  (window is None or q_t - k_s < window).

The reference kernel materialises ``allowed``; fused kernels (cuDNN, Pallas) take the same facts in their own form
(causal offsets, segment ids, sequence lengths) and never build the [B, T, S] array. ``self_attention`` marks a
full-sequence pass, where queries and keys are the same slots (q = k = 0..T-1): the case fused kernels serve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class AttentionMask:
    q_slots: jax.Array  # [T] int32
    k_slots: jax.Array  # [S] int32
    valid: jax.Array  # [B, S] bool: key slots holding real tokens
    window: int | None = struct.field(pytree_node=False, default=None)
    self_attention: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def full_sequence(cls, valid_BxT: jax.Array, window: int | None = None) -> "AttentionMask":
        """A pass over T tokens attending to themselves (training, scoring, prefill without a cache)."""
        slots = jnp.arange(valid_BxT.shape[1], dtype=jnp.int32)
        return cls(q_slots=slots, k_slots=slots, valid=valid_BxT.astype(bool), window=window, self_attention=True)

    def allowed(self) -> jax.Array:
        """[B, T, S] bool."""
        causal = self.k_slots[None, :] <= self.q_slots[:, None]
        if self.window is not None:
            causal &= self.q_slots[:, None] - self.k_slots[None, :] < self.window
        return causal[None] & self.valid[:, None, :]
