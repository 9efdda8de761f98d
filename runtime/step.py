"""The generic supervised train step: gradients of the trainable parameters, accumulation, optimizer update.

A loss function has the signature ``loss_fn(params, batch, rng) -> (loss, metrics)`` where ``metrics`` is a dict
of ``Metric`` and must contain ``metrics["loss"]`` with ``loss == total / count``. The count is the loss's
denominator (examples, tokens, pairs), and the step uses it to weight micro-batches, so that

    grad = sum_i grad(total_i) / sum_i count_i

is the exact gradient of the mean over the whole batch, whatever the split into micro-batches and however the
count varies between them (token-weighted losses included).

Mixed precision (``runtime.precision``): the loss sees ``state.forward_params()``, the masters cast once per step to
the dtypes the model stores them in; the gradient of that copy is widened to the masters' dtype per micro-batch,
summed there, and the optimizer updates the masters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from runtime.errors import RuntimeConfigError
from runtime.metrics import Metric
from runtime.metrics import merge as merge_metrics
from runtime.train_state import TrainState, merge_by_mask

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict[str, Metric]]]
StepFn = Callable[[TrainState, Any], tuple[TrainState, dict[str, Metric]]]
WeightedLoss = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, dict[str, Metric]]]
"""``weighted_loss(train, frozen, batch, rng) -> (loss * count, metrics)`` of one micro-batch."""
GradFn = Callable[[Any, Any, Any, jax.Array], tuple[Any, dict[str, Metric]]]
"""``grad_fn(train, frozen, batch, rng) -> (update direction of the trainable tree, metrics)``."""
GradientRule = Callable[[WeightedLoss], GradFn]


def loss_gradient(weighted_loss: WeightedLoss) -> GradFn:
    """The default rule: the gradient of the count-weighted loss with respect to the trainable tree."""
    return jax.grad(weighted_loss, has_aux=True)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, grad_accum: int = 1,
                    gradient: GradientRule = loss_gradient) -> StepFn:
    """``step(state, batch) -> (state, metrics)``, pure and ready for ``jax.jit``.

    With ``grad_accum > 1`` every batch leaf has a leading micro-batch axis of that size and the step scans
    over it, holding one micro-batch's activations at a time.

    ``gradient`` turns a micro-batch's count-weighted loss into the direction the optimizer follows; a rule
    other than the loss's gradient (an update rule such as Booster's, ``bfpo.defences``) returns its direction
    scaled by the micro-batch's count like the gradient it replaces, so that accumulation still divides by the
    total count.
    """
    if grad_accum < 1:
        raise RuntimeConfigError(f"grad_accum={grad_accum}: must be at least 1")

    def weighted_loss(train, frozen, batch, rng):
        loss, metrics = loss_fn(merge_by_mask(train, frozen), batch, rng)
        if "loss" not in metrics:
            raise RuntimeConfigError(
                "loss_fn must return metrics['loss'] = Metric(total, count) with loss == total / count; "
                f"got metric keys {sorted(metrics)}"
            )
        count = jax.lax.stop_gradient(metrics["loss"].count)
        return loss * count, metrics

    grad_fn = gradient(weighted_loss)

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Metric]]:
        rng = jax.random.fold_in(state.rng, state.step)
        masters, _ = state.split_params()
        # One forward-dtype copy of the masters per step (not per micro-batch); the gradient is taken with respect
        # to that copy and accumulated in the masters' dtype.
        train, frozen = state.split_params(state.forward_params())
        widen = lambda tree: jax.tree.map(lambda g, w: g.astype(w.dtype), tree, masters)  # noqa: E731
        if grad_accum == 1:
            grads, metrics = grad_fn(train, frozen, batch, rng)
            grads = widen(grads)
        else:
            leading = {x.shape[0] for x in jax.tree.leaves(batch)}
            if leading != {grad_accum}:
                raise RuntimeConfigError(
                    f"grad_accum={grad_accum} needs a leading micro-batch axis of that size on every batch leaf; "
                    f"got leading sizes {sorted(leading)}"
                )
            first = jax.tree.map(lambda x: x[0], batch)
            _, metrics0 = jax.eval_shape(grad_fn, train, frozen, first, rng)
            zeros = (jax.tree.map(jnp.zeros_like, masters),
                     jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics0))

            def body(carry, xs):
                g_acc, m_acc = carry
                micro, index = xs
                g, m = grad_fn(train, frozen, micro, jax.random.fold_in(rng, index))
                return (jax.tree.map(jnp.add, g_acc, widen(g)), merge_metrics(m_acc, m)), None

            (grads, metrics), _ = jax.lax.scan(body, zeros, (batch, jnp.arange(grad_accum)))
        total_count = metrics["loss"].count
        # A batch whose loss counts nothing (e.g. SafeDPO dropping every unsafe/unsafe pair) carries no gradient:
        # divide by at least 1 so no 0/0 appears, and keep parameters and optimizer state as they were (an Adam
        # update with a zero gradient would still move them by its momentum). The step counter still advances.
        has_data = total_count > 0
        grads = jax.tree.map(lambda g: g / jnp.maximum(total_count, 1).astype(g.dtype), grads)
        updated = state.apply_gradients(grads, tx)
        keep = lambda new, old: jnp.where(has_data, new, old)  # noqa: E731
        new_state = updated.replace(params=jax.tree.map(keep, updated.params, state.params),
                                    opt_state=jax.tree.map(keep, updated.opt_state, state.opt_state))
        metrics = dict(metrics)
        metrics["grad_norm"] = Metric.scalar(optax.global_norm(grads))
        return new_state, metrics

    return step
