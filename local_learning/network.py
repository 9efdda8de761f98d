"""A network cut into K modules, each a run of blocks with its own head, and the pure functions that run them.

Module k computes h_k = f_k(h_{k-1}; theta_k) and the logits a_k(h_k; phi_k); its local loss is the
sum-reduced cross-entropy

    L_k = sum_i CE(a_k(h_{k,i} + p_i), y_i),

where p is a zero "probe" added at the head's input: dL_k/dp = dL_k/dh_k restricted to the head's path, the
output-side gradient g_out^(k) that module k hands forward with h_k (Sec. 3 of Yang et al., ICML 2024). The
last module's head is the network's own classifier. A network built with ``label_projection=True`` carries a
fixed random label projection per module and trains each body on the projected label instead
(label_projection.py).

Variables are kept as ``{"params": [P_1..P_K], "stats": [S_1..S_K]}``: one ``nnx.State`` of parameters and one
of everything else (BatchNorm statistics, fixed feedback matrices) per module, so that each module's update
touches only its own state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from local_learning.errors import ConfigError
from local_learning.heads import HeadConfig, make_aux_head
from local_learning.label_projection import new_projection_key, projected_term
from local_learning.memory import residual_bytes
from local_learning.ordering import ordered_checkpoint
from local_learning.models import ModelConfig, build_blocks
from local_learning.models.feedback import feedback_layers
from local_learning.partition import (
    PartitionConfig,
    balanced_split,
    check_split_points,
    equal_split,
    module_bounds,
)
from runtime.sharding import unsharded


# Everything a module carries that is not trained: BatchNorm statistics, feedback-alignment matrices, the
# label-projection key.
STATE = nnx.Not(nnx.Param)


@dataclasses.dataclass(frozen=True)
class PartitionPlan:
    """Where the network is cut, and the per-example output shape of every block."""

    split_points: tuple[int, ...]
    feature_shapes: tuple[tuple[int, ...], ...]
    block_costs: tuple[int, ...] | None = None
    head_costs: tuple[int, ...] | None = None

    @property
    def num_blocks(self) -> int:
        return len(self.feature_shapes)

    @property
    def num_modules(self) -> int:
        return len(self.split_points) + 1

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return module_bounds(self.split_points, self.num_blocks)


def input_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    return (cfg.image_size, cfg.image_size, cfg.in_channels)


def _call_abstract(module, x, train=True):
    gdef, state = nnx.split(module)
    fn = lambda s, x: nnx.merge(gdef, s)(x, train=train)  # noqa: E731
    return fn, state


def _block_profile(model_cfg: ModelConfig, head_cfg: HeadConfig, cost_batch: int, balanced: bool):
    """Each block's output shape and, when ``balanced``, its residual bytes and its head's."""
    blocks, classifier = nnx.eval_shape(lambda: build_blocks(model_cfg, rngs=nnx.Rngs(0)))
    n = len(blocks)
    x = jax.ShapeDtypeStruct((cost_batch, *input_shape(model_cfg)), jnp.float32)
    shapes, costs, head_costs = [], [], []
    for i, block in enumerate(blocks):
        fn, state = _call_abstract(block, x)
        out = jax.eval_shape(fn, state, x)
        if balanced:
            costs.append(residual_bytes(lambda s, x, fn=fn: jnp.sum(fn(s, x)), state, x))
            head = classifier if i == n - 1 else nnx.eval_shape(
                lambda: make_aux_head(head_cfg, out.shape[1:], 2, rngs=nnx.Rngs(0)))
            hfn, hstate = _call_abstract(head, out)
            head_costs.append(residual_bytes(lambda s, x, hfn=hfn: jnp.sum(hfn(s, x)), hstate, out))
        shapes.append(tuple(out.shape[1:]))
        x = out
    return shapes, costs, head_costs


def plan_partition(model_cfg: ModelConfig, partition: PartitionConfig, head_cfg: HeadConfig = HeadConfig(),
                   *, cost_batch: int = 2) -> PartitionPlan:
    """Split points for ``partition`` on ``model_cfg``; measures per-block residual bytes for ``balanced_memory``.

    Works on abstract shapes only (nothing is allocated), so it is cheap even for ImageNet models.
    """
    balanced = partition.split == "balanced_memory"
    # Shapes and residual sizes do not depend on where the activations are placed: no mesh is needed.
    with unsharded():
        shapes, costs, head_costs = _block_profile(model_cfg, head_cfg, cost_batch, balanced)
    n = len(shapes)
    k = partition.num_modules
    if partition.split == "equal":
        points = equal_split(n, k)
    elif partition.split == "explicit":
        points = check_split_points(partition.split_points, n, k)
    else:
        points = balanced_split(costs, k, head_costs)
    return PartitionPlan(
        split_points=points,
        feature_shapes=tuple(shapes),
        block_costs=tuple(costs) if balanced else None,
        head_costs=tuple(head_costs) if balanced else None,
    )


class Stage(nnx.Module):
    """One module: a run of blocks and its head (and, in the BP-free setting, its label-projection key)."""

    def __init__(self, blocks: Sequence[nnx.Module], head: nnx.Module, *, rngs: nnx.Rngs | None = None,
                 label_projection: bool = False):
        self.blocks = nnx.List(list(blocks))
        self.head = head
        self.projection = new_projection_key(rngs) if label_projection else None

    def features(self, x, *, train: bool):
        for block in self.blocks:
            x = block(x, train=train)
        return x

    def logits(self, h, *, train: bool):
        return self.head(h, train=train)


class LocalNetwork(nnx.Module):
    """The model's blocks grouped into stages by ``plan``; auxiliary heads on all stages but the last."""

    def __init__(self, model_cfg: ModelConfig, plan: PartitionPlan, head_cfg: HeadConfig, *, rngs: nnx.Rngs,
                 feedback: bool = False, label_projection: bool = False):
        with feedback_layers(feedback):
            blocks, classifier = build_blocks(model_cfg, rngs=rngs)
            if len(blocks) != plan.num_blocks:
                raise ConfigError(f"partition plan is for {plan.num_blocks} blocks but the model has {len(blocks)}")
            stages = []
            for k, (a, b) in enumerate(plan.bounds):
                last = k == plan.num_modules - 1
                head = classifier if last else make_aux_head(
                    head_cfg, plan.feature_shapes[b - 1], model_cfg.num_classes, rngs=rngs)
                stages.append(Stage(blocks[a:b], head, rngs=rngs, label_projection=label_projection))
        self.stages = nnx.List(stages)

    def __call__(self, x, *, train: bool = False):
        for stage in self.stages:
            x = stage.features(x, train=train)
        return self.stages[-1].logits(x, train=train)


@dataclasses.dataclass(frozen=True)
class NetworkDef:
    """The static structure of a ``LocalNetwork``: one graph definition per module."""

    graphdefs: tuple[Any, ...]
    num_classes: int

    @property
    def num_modules(self) -> int:
        return len(self.graphdefs)


def network_variables(net: LocalNetwork) -> dict[str, list]:
    return {
        "params": [nnx.state(s, nnx.Param) for s in net.stages],
        "stats": [nnx.state(s, STATE) for s in net.stages],
    }


def build(model_cfg: ModelConfig, plan: PartitionPlan, head_cfg: HeadConfig = HeadConfig(),
          *, seed: int = 0, feedback: bool = False, label_projection: bool = False) -> tuple[NetworkDef, dict[str, list]]:
    """(structure, variables) of a freshly initialised network; call it under ``jax.jit`` to place it sharded.

    ``feedback=True`` builds every dense and convolutional layer as a feedback-alignment layer;
    ``label_projection=True`` gives every module a fixed random label projection drawn from the init key."""
    net = LocalNetwork(model_cfg, plan, head_cfg, rngs=nnx.Rngs(seed), feedback=feedback,
                       label_projection=label_projection)
    return network_def(net, model_cfg.num_classes), network_variables(net)


def network_def(net: LocalNetwork, num_classes: int) -> NetworkDef:
    return NetworkDef(graphdefs=tuple(nnx.graphdef(s) for s in net.stages), num_classes=num_classes)


def abstract_network(model_cfg: ModelConfig, plan: PartitionPlan, head_cfg: HeadConfig = HeadConfig(),
                     *, feedback: bool = False, label_projection: bool = False) -> tuple[NetworkDef, dict[str, list]]:
    net = nnx.eval_shape(lambda: LocalNetwork(model_cfg, plan, head_cfg, rngs=nnx.Rngs(0), feedback=feedback,
                                              label_projection=label_projection))
    return network_def(net, model_cfg.num_classes), network_variables(net)


def module_features(graphdef, params, stats, x, *, train: bool):
    """(h_k, new statistics) of one module's blocks."""
    stage = nnx.merge(graphdef, params, stats, copy=True)
    h = stage.features(x, train=train)
    return h, nnx.state(stage, STATE)


@dataclasses.dataclass(frozen=True)
class LocalAux:
    h_out: jax.Array
    logits: jax.Array
    stats: Any


jax.tree_util.register_dataclass(LocalAux, data_fields=["h_out", "logits", "stats"], meta_fields=[])


def cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Per-example cross-entropy, computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxC.astype(jnp.float32), labels_B)


def local_loss(graphdef, params, stats, h_in, probe, labels_B, *, train: bool = True):
    """(L_k = sum_i CE(a_k(f_k(h_in)_i + probe_i), y_i), LocalAux): module k's sum-reduced local loss.

    A module with a label projection detaches its head from its body and adds the projected-label term, which
    changes the body's gradient and not the value (label_projection.py)."""
    stage = nnx.merge(graphdef, params, stats, copy=True)
    h = stage.features(h_in, train=train)
    projection = stage.projection
    head_in = h if projection is None else jax.lax.stop_gradient(h)
    logits = stage.logits(head_in + probe.astype(h.dtype), train=train)
    loss = jnp.sum(cross_entropy(logits, labels_B))
    if projection is not None:
        loss = loss + projected_term(h, labels_B, projection[...])
    return loss, LocalAux(h_out=h, logits=logits, stats=nnx.state(stage, STATE))


def directional_loss(graphdef, params, stats, h_in, u, probe, labels_B, *, remat: bool = True) -> jax.Array:
    """<dL_k/dh_in, u>, the directional derivative of module k's loss along u, carried block by block.

    Each block maps (x, x_dot) to its jvp (f(x), f'(x) x_dot); with ``remat`` each block runs under
    ``ordered_checkpoint``, so the reverse pass over this function (the jvp form of the SGR term) keeps only
    the blocks' inputs and one block's primal and tangent activations at a time, instead of the whole module's.
    BatchNorm statistics are not updated here (the module's first pass already did).
    """
    stage = nnx.merge(graphdef, params, stats, copy=True)
    x, x_dot = h_in, u
    for block in stage.blocks:
        block_def, block_state = nnx.split(block)

        def block_jvp(state, xs, block_def=block_def):
            # Modules are rebuilt inside each traced function: a BatchNorm may only update its statistics in
            # the trace that created it.
            return jax.jvp(lambda y: nnx.merge(block_def, state, copy=True)(y, train=True), (xs[0],), (xs[1],))

        x, x_dot = (ordered_checkpoint(block_jvp) if remat else block_jvp)(block_state, (x, x_dot))

    head_def, head_state = nnx.split(stage.head)

    def head_loss(h):
        head = nnx.merge(head_def, head_state, copy=True)
        return jnp.sum(cross_entropy(head(h + probe.astype(h.dtype), train=True), labels_B))

    return jax.jvp(head_loss, (x,), (x_dot,))[1]


def predict(netdef: NetworkDef, variables, x, *, train: bool = False) -> list[jax.Array]:
    """Logits of every module's head (the last is the network's prediction), statistics not updated."""
    out = []
    h = x
    for k, gdef in enumerate(netdef.graphdefs):
        stage = nnx.merge(gdef, variables["params"][k], variables["stats"][k], copy=True)
        h = stage.features(h, train=train)
        out.append(stage.logits(h, train=train))
    return out


def head_probe(gdef, params, stats, h_in):
    """Zeros shaped like module ``gdef``'s head input: the point at which dL/dprobe = g_out is taken."""
    out = jax.eval_shape(lambda p, s, x: module_features(gdef, p, s, x, train=True)[0], params, stats, h_in)
    return jnp.zeros(out.shape, out.dtype)
