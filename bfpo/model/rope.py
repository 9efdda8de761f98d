"""Rotary position embeddings (RoFormer, Su et al. 2021) in the rotate-half layout, with rope scaling.

For head dimension E and base theta the inverse frequencies are w_i = theta^(-2i/E), i < E/2. A vector
x = [x1, x2] (halves of size E/2) at position p becomes

    rope(x, p) = [x1 cos(p w) - x2 sin(p w),  x2 cos(p w) + x1 sin(p w)] * a,

with a = 1 except for YaRN's attention factor. ``RopeScaling`` documents how w is rescaled.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bfpo.model.config import LlamaConfig, RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None,
                        max_position_embeddings: int | None = None) -> tuple[np.ndarray, float]:
    """(w [E/2] float32, attention factor a) for the given base and scaling."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv = (1.0 / np.power(np.float32(theta), exponents)).astype(np.float32)
    if scaling is None:
        return inv, 1.0
    if scaling.kind == "linear":
        return (inv / np.float32(scaling.factor)).astype(np.float32), 1.0
    if scaling.kind == "llama3":
        original = scaling.original_max_position_embeddings
        low_wavelen = original / scaling.low_freq_factor
        high_wavelen = original / scaling.high_freq_factor
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
        smooth = (original / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # yarn
    original = scaling.original_max_position_embeddings or max_position_embeddings
    factor = scaling.factor
    attention = scaling.attention_factor
    if attention is None:
        attention = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(scaling.beta_fast)), 0)
    high = min(math.ceil(correction_dim(scaling.beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolate = 1 - ramp
    inv = (inv / factor) * (1 - extrapolate) + inv * extrapolate
    return inv.astype(np.float32), float(attention)


def rotary_tables(cfg: LlamaConfig, positions_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) of shape [B, T, E/2] in float32 for integer positions."""
    inv, attention = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)
    angles = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv)[None, None]
    return jnp.cos(angles) * attention, jnp.sin(angles) * attention


def apply_rotary(x_BxTxNxE: jax.Array, cos_BxTxE2: jax.Array, sin_BxTxE2: jax.Array) -> jax.Array:
    """Rotates each head's halves; computed in float32 and cast back to the input dtype."""
    x = x_BxTxNxE.astype(jnp.float32)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos_BxTxE2[:, :, None, :], sin_BxTxE2[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxE.dtype)
