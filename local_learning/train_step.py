"""Executors: one training step of a ``LocalNetwork`` under global BP, checkpointed BP, or local learning.

Local learning (``make_local_step``): for k = 1..K, module k takes the stop-gradient pair
(h_{k-1}, g_out^(k-1)) from module k-1, runs its own ``value_and_grad`` of J_k (estimators.py), and hands
(sg[h_k], sg[g_out^(k)]) forward. No gradient crosses a module boundary. All modules update at once from the
same batch (non-greedy, simultaneous training), with one optimizer step.

Memory: module k's activations must be dead before module k+1 runs. Module k+1's forward needs only h_k, so
inside one XLA program the scheduler could run every forward first and keep all modules' residuals alive at
once; making h_k depend on module k's gradients makes module k+1 wait for module k's backward (a data
dependency: ordering.py explains why not a barrier). Ordering is not enough on residual networks: h_k is an
elementwise function of module k's raw convolution outputs, and XLA's fusion recomputes it inside module k+1's
consumers instead of writing it once, which keeps those outputs alive; ``materialize`` hands h_k forward
through a conditional, which fusion cannot see through. ``make_host_loop_step`` instead runs each module as its
own compiled program (K + 1 programs per step), the layout whose peak is exactly the largest module's; the two
give identical updates. Measured on the CPU backend (ResNet-32, batch 128, balanced splits, jax 0.10.2),
compiled peak per device against 468 MiB for global BP: K = 4, 342 MiB unordered, 214 MiB ordered, 165 MiB
ordered and materialised (host loop 158 MiB); K = 2, 307 MiB ordered, 267 MiB materialised (host loop 263 MiB).

Global BP (``make_bp_step``) backpropagates the last head's loss through every module (the auxiliary heads
are unused), optionally with every block under ``jax.checkpoint`` (gradient checkpointing, the honest memory
baseline). Variables are ``{"params": [...], "stats": [...]}`` as in network.py; the train state keeps the
BatchNorm statistics as its frozen (non-trainable) leaves and each step writes the new ones.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from local_learning import network, reconcile
from local_learning.errors import ConfigError
from local_learning.ordering import after, materialize, ordered_checkpoint
from local_learning.estimators import (ESTIMATOR_NAMES, UNBIASED_FORWARD_DISTANCES, ModuleGrads, forward_distance_error,
                                      get_estimator)
from local_learning.reconcile import ReconcileConfig
from runtime.metrics import Metric
from runtime.train_state import TrainState, merge_by_mask, split_by_mask

Batch = dict[str, jax.Array]  # {"image": f32[B, H, W, C], "label": i32[B]}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalConfig:
    reconcile: ReconcileConfig = ReconcileConfig()
    estimator: str = "backprop"
    """``backprop`` (local BP), ``feedback_alignment`` (BP-free: local backprop through a network built with
    ``feedback=True``), ``label_projection`` (BP-free: feedback alignment inside each module and a fixed random
    projection of the label as the body's error signal) or ``forward_gradient`` (BP-free, forward mode only)."""
    ordered: bool = True
    """Make module k+1 start after module k's backward (ordering.after), so one module's activations are alive."""
    materialize: bool = True
    """With ``ordered``: hand h_k forward through a conditional (ordering.materialize), so that XLA writes it to
    memory instead of recomputing it in module k+1 from module k's activations, which would keep them alive."""
    diagnostics: bool = True
    """Compute g_in^(k) for k >= 2 even without SGR, for the reconciliation cosine."""

    def __post_init__(self):
        if self.estimator not in ESTIMATOR_NAMES:
            raise ConfigError(f"LocalConfig.estimator={self.estimator!r}: expected one of {ESTIMATOR_NAMES}")
        r = self.reconcile
        if (self.estimator == "forward_gradient" and r.active and r.placement == "input_side"
                and r.distance not in UNBIASED_FORWARD_DISTANCES):
            raise ConfigError(f"LocalConfig: {forward_distance_error(r.distance)}")
        if self.feedback and self.reconcile.active and self.reconcile.impl != "direct":
            raise ConfigError(
                f"LocalConfig.estimator={self.estimator!r} with SGR needs reconcile.impl='direct' (feedback layers "
                "define a custom backward pass, which forward mode cannot go through)"
            )

    @property
    def feedback(self) -> bool:
        """Whether the network must be built with feedback-alignment layers."""
        return self.estimator in ("feedback_alignment", "label_projection")

    @property
    def label_projection(self) -> bool:
        """Whether the network must be built with a fixed random label projection per module."""
        return self.estimator == "label_projection"


def trainable(path: str) -> bool:
    """Trainable-mask predicate over train-state parameter paths: parameters train, BatchNorm statistics do not."""
    return path.startswith("params/")


def _accuracy(logits, labels):
    return Metric.from_values((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def apply_update(state: TrainState, grads: list, new_stats: list, tx: optax.GradientTransformation) -> TrainState:
    """One optimizer step on every module's parameters; the BatchNorm statistics are replaced by ``new_stats``."""
    grads_full, _ = split_by_mask({"params": grads, "stats": state.params["stats"]}, state.trainable)
    updated = state.apply_gradients(grads_full, tx)
    _, frozen = split_by_mask({"params": updated.params["params"], "stats": new_stats}, state.trainable)
    train, _ = updated.split_params()
    return updated.replace(params=merge_by_mask(train, frozen))


def module_gradients(netdef: network.NetworkDef, cfg: LocalConfig, k: int, params, stats, h_in, target, labels,
                     rng) -> ModuleGrads:
    """Module k's estimator on its local objective J_k (0-based k; ``target`` is None for the first module)."""
    gdef = netdef.graphdefs[k]

    def loss_fn(p, x, probe):
        return network.local_loss(gdef, p, stats, x, probe, labels, train=True)

    probe = network.head_probe(gdef, params, stats, h_in)
    def remat_directional(p, x, u):
        return network.directional_loss(gdef, p, stats, x, u, probe, labels, remat=True)

    directional = remat_directional if cfg.reconcile.remat else None

    estimator = get_estimator(cfg.estimator)
    return estimator(loss_fn, params, h_in, probe, target, scale=1.0 / labels.shape[0], rc=cfg.reconcile,
                     need_g_in=(cfg.diagnostics and k > 0) or cfg.reconcile.placement == "output_side", rng=rng,
                     directional=directional)


def _module_metric_values(k: int, res: ModuleGrads, labels, target, cfg: LocalConfig) -> dict[str, Metric]:
    """Module diagnostics by name (without the module number): local loss and accuracy, the reconciliation
    cosine between g_in^(k) and g_out^(k-1), and the SGR term."""
    b = labels.shape[0]
    out = {"loss": Metric.from_mean(res.loss_sum / b, b), "accuracy": _accuracy(res.aux.logits, labels)}
    if target is not None and res.g_in is not None:
        out["cos"] = Metric.from_values(reconcile.cosine_similarity(res.g_in, target))
    if cfg.reconcile.active and k > 0 and cfg.reconcile.placement == "input_side":
        out["sgr"] = Metric.from_mean(res.term, b)
    return out


def _numbered(values: dict[str, Metric], n: int) -> dict[str, Metric]:
    return {f"{name}_{n}": value for name, value in values.items()}


def _module_metrics(k: int, res: ModuleGrads, labels, target, cfg: LocalConfig) -> dict[str, Metric]:
    return _numbered(_module_metric_values(k, res, labels, target, cfg), k + 1)


def output_side_terms(netdef, cfg: LocalConfig, k: int, params, stats, h_in, labels, target_g_in):
    """(D(g_out^(k), sg[g_in^(k+1)]), its gradient w.r.t. module k's parameters): the ``output_side`` placement.

    g_out^(k) depends on the module's blocks (through h_k) and on its head.
    """
    gdef = netdef.graphdefs[k]
    probe = network.head_probe(gdef, params, stats, h_in)
    distance = reconcile.get_distance(cfg.reconcile.distance)

    def scalar(p, z):
        return network.local_loss(gdef, p, stats, h_in, z, labels, train=True)[0]

    if cfg.reconcile.impl == "direct":
        return reconcile.term_direct(scalar, params, probe, target_g_in, distance)
    g_out = reconcile.input_gradient(scalar, params, probe)
    return reconcile.term_jvp(scalar, params, probe, g_out, target_g_in, distance)


def _with_totals(metrics: dict[str, Metric], num_modules: int, grads: Any = None) -> dict[str, Metric]:
    """The step's ``loss`` and ``accuracy`` are the last module's; ``grad_norm`` is over every module's gradients."""
    metrics = dict(metrics)
    metrics["loss"] = metrics[f"loss_{num_modules}"]
    metrics["accuracy"] = metrics[f"accuracy_{num_modules}"]
    if grads is not None:
        metrics["grad_norm"] = Metric.scalar(optax.global_norm(grads))
    return metrics


def local_step_fn(netdef: network.NetworkDef, cfg: LocalConfig, params: list, stats: list, batch: Batch,
                  rng: jax.Array) -> tuple[list, list, dict[str, Metric]]:
    """(gradients, new statistics, metrics) of one local-learning step: the modules in sequence, isolated."""
    labels = batch["label"]
    h = batch["image"]
    target = None
    grads, new_stats, metrics, inputs, g_ins = [], [], {}, [], []
    for k in range(netdef.num_modules):
        h_in = jax.lax.stop_gradient(h)
        res = module_gradients(netdef, cfg, k, params[k], stats[k], h_in, target, labels, jax.random.fold_in(rng, k))
        metrics.update(_module_metrics(k, res, labels, target, cfg))
        h_out, g_out, g = res.aux.h_out, res.g_out, res.grads
        if cfg.ordered:
            h_out = materialize(h_out, g, g_out) if cfg.materialize else after(h_out, g, g_out)
        grads.append(g)
        new_stats.append(res.aux.stats)
        inputs.append(h_in)
        g_ins.append(res.g_in)
        h, target = h_out, jax.lax.stop_gradient(g_out)
    if cfg.reconcile.active and cfg.reconcile.placement == "output_side":
        for k in range(netdef.num_modules - 1):
            t = jax.lax.stop_gradient(g_ins[k + 1])
            d, tg = output_side_terms(netdef, cfg, k, params[k], stats[k], inputs[k], labels, t)
            grads[k] = jax.tree.map(lambda a, b: a + cfg.reconcile.weight * b, grads[k], tg)
            metrics[f"sgr_{k + 1}"] = Metric.from_mean(d, labels.shape[0])
    return grads, new_stats, _with_totals(metrics, netdef.num_modules)


def make_local_step(netdef: network.NetworkDef, cfg: LocalConfig, tx: optax.GradientTransformation):
    """``step(state, batch) -> (state, metrics)``: one program, modules chained in order (see module docstring)."""

    def step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        grads, new_stats, metrics = local_step_fn(
            netdef, cfg, state.forward_params()["params"], state.params["stats"], batch, rng)
        return apply_update(state, grads, new_stats, tx), _with_totals(metrics, netdef.num_modules, grads)

    return step


def make_host_loop_step(netdef: network.NetworkDef, cfg: LocalConfig, tx: optax.GradientTransformation):
    """``step(state, batch)`` that runs each module as its own jitted program, then one update program.

    Returns (step, programs) where ``programs`` is the list of jitted module functions followed by the update,
    for memory measurement. Supports the ``input_side`` placement only (``output_side`` needs module k+1's
    gradient before module k can finish, which a host loop would have to hold on to).
    """
    if cfg.reconcile.active and cfg.reconcile.placement != "input_side":
        raise ConfigError("make_host_loop_step supports ReconcileConfig.placement='input_side' only")

    def module_program(k, params, stats, h_in, target, labels, rng):
        res = module_gradients(netdef, cfg, k, params, stats, h_in, target, labels, rng)
        return res, _module_metrics(k, res, labels, target, cfg)

    programs = [jax.jit(functools.partial(module_program, k)) for k in range(netdef.num_modules)]

    def update(state, grads, new_stats, metrics):
        return apply_update(state, grads, new_stats, tx), _with_totals(metrics, netdef.num_modules, grads)

    update_jit = jax.jit(update, donate_argnums=0)

    def step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        labels, h, target = batch["label"], batch["image"], None
        grads, new_stats, metrics = [], [], {}
        for k, program in enumerate(programs):
            res, m = program(state.forward_params()["params"][k], state.params["stats"][k], h, target, labels,
                             jax.random.fold_in(rng, k))
            grads.append(res.grads)
            new_stats.append(res.aux.stats)
            metrics.update(m)
            h, target = res.aux.h_out, res.g_out
        return update_jit(state, grads, new_stats, metrics)

    return step, programs + [update_jit]


def scannable_modules(netdef: network.NetworkDef) -> bool:
    """Whether modules 2..K share one structure (same blocks and head type), as needed by ``make_scan_local_step``."""
    return netdef.num_modules >= 3 and all(g == netdef.graphdefs[1] for g in netdef.graphdefs[2:])


def make_scan_local_step(netdef: network.NetworkDef, cfg: LocalConfig, tx: optax.GradientTransformation):
    """``step(state, batch)``: module 1 unrolled, modules 2..K by ``lax.scan`` with each module's gradients
    computed inside the scan body, carrying only the stop-gradient (h_k, g_out^(k)).

    For stacks of identical modules (a ViT cut after the patch embedding into equal runs of transformer blocks,
    with ``pool="mean"`` so that the last head has the auxiliary heads' structure): one compiled module body
    instead of K - 1. Taking ``jax.grad`` of a summed loss over a scan would instead keep every iteration's
    residuals; here the body's residuals die inside each iteration. Same updates as ``make_local_step``.
    """
    if not scannable_modules(netdef):
        raise ConfigError(
            "make_scan_local_step needs K >= 3 and modules 2..K of identical structure (equal block counts, and "
            "the model's classifier shaped like the auxiliary heads, e.g. a ViT with pool='mean')"
        )
    if cfg.reconcile.active and cfg.reconcile.placement != "input_side":
        raise ConfigError("make_scan_local_step supports ReconcileConfig.placement='input_side' only")
    k_rest = netdef.num_modules - 1

    def step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        labels = batch["label"]
        params, stats = state.forward_params()["params"], state.params["stats"]
        first = module_gradients(netdef, cfg, 0, params[0], stats[0], jax.lax.stop_gradient(batch["image"]), None,
                                 labels, jax.random.fold_in(rng, 0))
        metrics = _module_metrics(0, first, labels, None, cfg)
        h = after(first.aux.h_out, first.grads, first.g_out) if cfg.ordered else first.aux.h_out
        carry = (jax.lax.stop_gradient(h), jax.lax.stop_gradient(first.g_out))
        stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
        rngs = jnp.stack([jax.random.fold_in(rng, k) for k in range(1, netdef.num_modules)])

        def body(carry, xs):
            h_in, target = carry
            p, s, key = xs
            res = module_gradients(netdef, cfg, 1, p, s, h_in, target, labels, key)
            h_out = after(res.aux.h_out, res.grads, res.g_out) if cfg.ordered else res.aux.h_out
            out = (res.grads, res.aux.stats, _module_metric_values(1, res, labels, target, cfg))
            return (jax.lax.stop_gradient(h_out), jax.lax.stop_gradient(res.g_out)), out

        _, (grads_st, stats_st, metrics_st) = jax.lax.scan(body, carry, (stack(params[1:]), stack(stats[1:]), rngs))
        unstack = lambda tree: [jax.tree.map(lambda x: x[i], tree) for i in range(k_rest)]  # noqa: E731
        grads = [first.grads] + unstack(grads_st)
        new_stats = [first.aux.stats] + unstack(stats_st)
        for i, m in enumerate(unstack(metrics_st)):
            metrics.update(_numbered(m, i + 2))
        return apply_update(state, grads, new_stats, tx), _with_totals(metrics, netdef.num_modules, grads)

    return step


def _run_block(block: nnx.Module, h, remat: bool):
    if not remat:
        return block(h, train=True)
    gdef, st = nnx.split(block)

    def call(st, h):
        b = nnx.merge(gdef, st)
        y = b(h, train=True)
        return y, nnx.state(b)

    y, new_st = ordered_checkpoint(call)(st, h)
    nnx.update(block, new_st)
    return y


def global_loss(netdef: network.NetworkDef, params: list, stats: list, batch: Batch, *, remat: bool = False):
    """(mean CE of the last head through all modules, (logits, new statistics)): global BP's objective."""
    h = batch["image"]
    stages = [nnx.merge(g, p, s, copy=True) for g, p, s in zip(netdef.graphdefs, params, stats)]
    for stage in stages:
        for block in stage.blocks:
            h = _run_block(block, h, remat)
    logits = stages[-1].logits(h, train=True)
    loss = jnp.mean(network.cross_entropy(logits, batch["label"]))
    return loss, (logits, [nnx.state(s, network.STATE) for s in stages])


def make_bp_step(netdef: network.NetworkDef, tx: optax.GradientTransformation, *, remat: bool = False):
    """``step(state, batch)`` of global backpropagation (``remat=True``: every block gradient-checkpointed)."""

    def step(state: TrainState, batch: Batch):
        (loss, (logits, new_stats)), grads = jax.value_and_grad(
            lambda p: global_loss(netdef, p, state.params["stats"], batch, remat=remat), has_aux=True
        )(state.forward_params()["params"])
        b = batch["label"].shape[0]
        metrics = {"loss": Metric.from_mean(loss, b), "accuracy": _accuracy(logits, batch["label"]),
                   "grad_norm": Metric.scalar(optax.global_norm(grads))}
        return apply_update(state, grads, new_stats, tx), metrics

    return step


def make_predict(netdef: network.NetworkDef) -> Callable[[Any, jax.Array], list[jax.Array]]:
    """Jitted ``predict(variables, images) -> [logits of each module's head]`` in inference mode."""
    return jax.jit(lambda variables, x: network.predict(netdef, variables, x, train=False))
