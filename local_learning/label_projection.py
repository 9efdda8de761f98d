"""Direct random target projection (Frenkel, Lefebvre and Bol, Front. Neurosci. 2021, Eq. 6-7): the learning
signal of a module's body is the one-hot label projected by a fixed random matrix, not an error propagated
back from its head.

For module k with output h_k = f_k(h_{k-1}; theta_k) of per-example size F and a fixed random
P_k in R^{C x F} (entries N(0, 1/F)), the surrogate error at h_k is

    e_i = P_k^T onehot(y_i) = row y_i of P_k,  reshaped to h_k's per-example shape,

and the body's update is (dh_k/dtheta_k)^T e, summed over the batch. The head a_k still learns from its own
cross-entropy, at a stop-gradient h_k. Both come from one objective,

    L_k = sum_i CE(a_k(sg[h_{k,i}] + p_i), y_i) + sum_i <h_{k,i}, sg[e_i]> - sg[sum_i <h_{k,i}, e_i>],

whose value is the cross-entropy (the last two terms cancel) and whose gradient w.r.t. theta_k is exactly the
projected update. Built with feedback-alignment layers, the error inside the body also travels through fixed
random matrices, so no weight is transported anywhere (the BP-free setting).

P_k is never stored: it is defined by a key drawn once at initialisation (a ``LabelProjectionKey`` variable,
part of the module's non-trainable state) and its rows are regenerated on demand, row c from
``fold_in(key, c)``, so the memory cost is that of one activation whatever C and F are.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


class LabelProjectionKey(nnx.Variable):
    """Raw uint32[2] key data that defines a module's fixed label projection; never trained."""


def new_projection_key(rngs: nnx.Rngs) -> LabelProjectionKey:
    return LabelProjectionKey(jax.random.key_data(rngs.params()))


def projection_rows(key_data: jax.Array, labels_B: jax.Array, feature_shape: tuple[int, ...]) -> jax.Array:
    """[B, *feature_shape]: row y_i of the fixed matrix P for every example (entries N(0, 1/F))."""
    key = jax.random.wrap_key_data(key_data)
    scale = 1.0 / math.sqrt(math.prod(feature_shape))
    return jax.vmap(lambda y: jax.random.normal(jax.random.fold_in(key, y), feature_shape) * scale)(labels_B)


def projection_matrix(key_data: jax.Array, num_classes: int, feature_shape: tuple[int, ...]) -> jax.Array:
    """[C, *feature_shape]: the whole fixed matrix P (for inspection and tests)."""
    return projection_rows(key_data, jnp.arange(num_classes), feature_shape)


def projected_term(h_BxF: jax.Array, labels_B: jax.Array, key_data: jax.Array) -> jax.Array:
    """sum_i <h_i, sg[e_i]> - sg[...]: zero in value, (dh/dtheta)^T e in gradient."""
    e = jax.lax.stop_gradient(projection_rows(key_data, labels_B, h_BxF.shape[1:]).astype(jnp.float32))
    inner = jnp.sum(h_BxF.astype(jnp.float32) * e)
    return inner - jax.lax.stop_gradient(inner)
