"""Per-module gradient estimators: how one module turns its local objective into a parameter update.

Each estimator receives the module's sum-reduced loss ``loss_fn(params, h_in, probe) -> (L_k, LocalAux)``
(see ``network.local_loss``), its stop-gradient input h_in, the zero probe at its head's input, the target
t = sg[g_out^(k-1)] handed forward by the previous module (None for module 1), and returns a ``ModuleGrads``:
the gradient (or its estimate) of

    J_k = L_k / B + lambda * D(g_in^(k), t)                     (reconcile.py)

w.r.t. the module's parameters, g_in^(k) = dL_k/dh_in, and g_out^(k) = dL_k/dprobe to hand forward.

* ``backprop`` (local BP, the default): exact, by reverse mode inside the module; the SGR term by the jvp form
  or the direct double-reverse form.
* ``feedback_alignment`` (BP-free; Lillicrap et al., 2016): local backprop through a network whose dense and
  convolutional layers send errors backward through fixed random matrices (models/feedback.py); g_in and
  g_out are the feedback-propagated errors, so SGR reconciles those (direct form only).
* ``label_projection`` (BP-free; direct random target projection, Frenkel et al., 2021, with feedback
  alignment inside each module): the body of module k learns from its one-hot label projected by a fixed
  random matrix to h_k's shape instead of from its head's backward pass; the head learns from its own loss;
  inside the body, errors travel through the fixed feedback matrices (label_projection.py). The network is built
  with ``feedback=True, label_projection=True`` and differentiated as usual; g_in is the projected error carried
  back through the feedback matrices, g_out the head's input gradient, and SGR reconciles those (direct form).
* ``forward_gradient`` (BP-free; Baydin et al., 2022, "Gradients without backpropagation"): with v ~ N(0, I)
  over the parameters, the unbiased estimate (dJ/dtheta . v) v from one forward-mode pass. The boundary
  gradients are estimated the same way, g_in ~ (dL/dh . u) u and g_out ~ (dL/dp . w) w with u, w ~ N(0, I),
  so the SGR term uses forward mode only (forward over forward). The term is estimated without bias: D must be
  estimated, not evaluated at a noisy g_in, since E[D(g_hat, t)] != D(g_in, t) (for ``sq_l2`` it adds
  (N+1)/B ||g_in||^2, a penalty on the gradient's norm; ``cosine`` of (s u, t) does not depend on the parameters
  at all). With two independent tangents u_1, u_2 and g_hat_j = (dL/dh . u_j) u_j, both unbiased for g_in,

      D_hat = mean_i <g_hat_1,i - t_i, g_hat_2,i - t_i>,      E[D_hat] = mean_i ||g_in,i - t_i||^2 = D_sq_l2,

  and its forward gradient along v is unbiased for dD/dtheta. ``l2`` and ``cosine`` (a square root, a ratio of
  norms) have no unbiased estimate from finitely many such measurements, so ``LocalConfig`` refuses them with
  this estimator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from local_learning import reconcile
from local_learning.reconcile import ReconcileConfig
from local_learning.errors import ConfigError

ESTIMATOR_NAMES = ("backprop", "feedback_alignment", "label_projection", "forward_gradient")


@dataclasses.dataclass(frozen=True)
class ModuleGrads:
    grads: Any
    loss_sum: jax.Array
    aux: Any  # network.LocalAux
    g_in: jax.Array | None
    g_out: jax.Array
    term: jax.Array  # D (0 where the term is off)


jax.tree_util.register_dataclass(
    ModuleGrads, data_fields=["grads", "loss_sum", "aux", "g_in", "g_out", "term"], meta_fields=[]
)

LossFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def local_backprop(loss_fn: LossFn, params, h_in, probe, target, *, scale: float, rc: ReconcileConfig,
                   need_g_in: bool, rng: jax.Array | None = None, directional=None) -> ModuleGrads:
    """Exact gradient of J_k by reverse mode inside the module.

    ``directional(params, h, u)`` = <dL_k/dh, u> (network.directional_loss) is used by the jvp form when given.
    """
    del rng
    sgr = rc.active and rc.placement == "input_side" and target is not None
    zero = jnp.zeros((), jnp.float32)
    if sgr and rc.impl == "direct":
        distance = reconcile.get_distance(rc.distance)

        def objective(p):
            (loss, aux), (g_in, g_out) = jax.value_and_grad(loss_fn, argnums=(1, 2), has_aux=True)(p, h_in, probe)
            d = distance(g_in, target)
            return loss * scale + rc.weight * d, (loss, aux, g_in, g_out, d)

        (_, (loss, aux, g_in, g_out, d)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return ModuleGrads(grads, loss, aux, g_in, g_out, d)

    argnums = (0, 1, 2) if (need_g_in or sgr) else (0, 2)
    (loss, aux), grads_all = jax.value_and_grad(loss_fn, argnums=argnums, has_aux=True)(params, h_in, probe)
    grads = jax.tree.map(lambda g: g * scale, grads_all[0])
    g_out = grads_all[-1]
    g_in = grads_all[1] if len(argnums) == 3 else None
    d = zero
    if sgr:
        scalar = lambda p, x: loss_fn(p, x, probe)[0]  # noqa: E731
        d, term_grads = reconcile.term_jvp(scalar, params, h_in, g_in, target, reconcile.get_distance(rc.distance),
                                           directional=directional, first_pass=(grads_all[0], g_out))
        grads = jax.tree.map(lambda a, b: a + rc.weight * b, grads, term_grads)
    return ModuleGrads(grads, loss, aux, g_in, g_out, d)


def _normal_like(rng, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(rng, max(len(leaves), 1))
    return treedef.unflatten([jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype) for k, x in zip(keys, leaves)])


def forward_gradient(loss_fn: LossFn, params, h_in, probe, target, *, scale: float, rc: ReconcileConfig,
                     need_g_in: bool, rng: jax.Array | None = None, directional=None) -> ModuleGrads:
    """Unbiased forward-mode estimate (dJ/dtheta . v) v, v ~ N(0, I); no reverse pass anywhere."""
    del directional  # forward mode needs no reverse pass to checkpoint
    if rng is None:
        raise ConfigError("estimator 'forward_gradient' needs a random key (rng)")
    k_v, k_u, k_w = jax.random.split(rng, 3)
    v = _normal_like(k_v, params)
    u = _normal_like(k_u, h_in)
    w = _normal_like(k_w, probe)
    sgr = rc.active and rc.placement == "input_side" and target is not None
    if sgr and rc.distance not in UNBIASED_FORWARD_DISTANCES:
        raise ConfigError(forward_distance_error(rc.distance))
    # A second tangent, independent of u, for the unbiased estimate of D (module docstring).
    u2 = _normal_like(jax.random.fold_in(k_u, 1), h_in) if sgr else None

    def g_in_estimate(p, tangent):
        dl = jax.jvp(lambda x: loss_fn(p, x, probe)[0], (h_in,), (tangent,))[1]
        return dl * tangent

    def sq_l2_estimate(p):
        t = reconcile.per_example(target)
        a = reconcile.per_example(g_in_estimate(p, u)) - t
        b = reconcile.per_example(g_in_estimate(p, u2)) - t
        return jnp.mean(jnp.sum(a * b, axis=-1))

    def objective(p):
        loss, aux = loss_fn(p, h_in, probe)
        d = sq_l2_estimate(p) if sgr else jnp.zeros((), jnp.float32)
        return loss * scale + rc.weight * d, (loss, aux, d)

    (_, (loss, aux, d)), (dj, _) = jax.jvp(objective, (params,), (v,))
    grads = jax.tree.map(lambda x: dj.astype(x.dtype) * x, v)
    g_out = jax.jvp(lambda z: loss_fn(params, h_in, z)[0], (probe,), (w,))[1] * w
    g_in = g_in_estimate(params, u) if (need_g_in or sgr) else None
    return ModuleGrads(grads, loss, aux, g_in, g_out, d)


UNBIASED_FORWARD_DISTANCES = ("sq_l2",)


def forward_distance_error(distance: str) -> str:
    return (f"SGR distance {distance!r} with estimator 'forward_gradient': it has no unbiased forward-mode estimate "
            "(a noisy g_in inside a square root or a cosine biases the term, and the cosine of a random direction "
            "does not depend on the parameters); use distance 'sq_l2', estimated without bias from two independent "
            "tangents, or estimator 'backprop'")


# Feedback alignment and label projection are local backprop through a network built differently: layers whose
# backward pass uses fixed random matrices (models/feedback.py), and for label projection a loss whose body
# gradient is the projected label (label_projection.py). Only the network changes, not the differentiation.
ESTIMATORS = {"backprop": local_backprop, "feedback_alignment": local_backprop, "label_projection": local_backprop,
              "forward_gradient": forward_gradient}


def get_estimator(name: str):
    if name not in ESTIMATORS:
        raise ConfigError(f"estimator {name!r}: expected one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name]
