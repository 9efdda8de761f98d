"""Logical axis names -> mesh axes: the single table, and everything that applies it.

Models annotate every parameter with logical axis names (``("vocab", "embed")``) through the variable
metadata key ``logical_axes`` (see ``logical``), and activations through ``constrain``. Only this module maps
those names to the mesh axes ``data``, ``fsdp`` and ``tensor``. Mistakes raise ``ShardingError``; nothing is
silently replicated:

* a logical name missing from the rules,
* two logical dimensions of one array mapped to the same mesh axis,
* a dimension whose size is not divisible by the product of its mesh axes.

A variable with no ``logical_axes`` metadata (a BatchNorm statistic, a scalar) is replicated: that is a property
of the model code, visible in it, not a fallback taken on an error.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from runtime.errors import ShardingError
from runtime.tree_paths import path_str

LogicalAxes = Sequence[str | None]
Rules = Mapping[str, str | tuple[str, ...] | None]

# The one table. A value is a mesh axis, a tuple of mesh axes (sharded over their product), or None (replicated).
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    # activations and batches
    "batch": ("data", "fsdp"),
    "microbatch": None,  # the gradient-accumulation axis
    "seq": None,
    "kv_seq": None,
    "act_embed": None,
    "act_mlp": "tensor",
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_vocab": "tensor",
    # transformer parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "norm": None,
    "layers": None,
    # convolutional and vision parameters
    "conv_height": None,
    "conv_width": None,
    "conv_in": None,
    "conv_out": "tensor",
    "channels": None,
    "height": None,
    "width": None,
    "patch": None,
    "classes": None,
    # recurrent models
    "state": None,
    "features": None,
}

METADATA_KEY = "logical_axes"


def logical(init, *names: str | None):
    """Wraps a flax initializer so the variable it creates carries ``logical_axes=names``."""
    return nnx.with_metadata(init, **{METADATA_KEY: tuple(names)})


def _mesh_axes_of(name: str | None, rules: Rules) -> tuple[str, ...]:
    if name is None:
        return ()
    if name not in rules:
        raise ShardingError(
            f"unknown logical axis name {name!r}; known names: {sorted(rules)}. "
            "Add it to runtime.sharding.LOGICAL_AXIS_RULES or pass rules=..."
        )
    target = rules[name]
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def logical_to_spec(
    names: LogicalAxes, rules: Rules | None = None, mesh: jax.sharding.Mesh | None = None
) -> PartitionSpec:
    """Maps logical names to a ``PartitionSpec``; raises on unknown names and on a mesh axis used twice.

    With a ``mesh``, mesh axes it does not have are dropped (they have size 1 by construction).
    """
    rules = LOGICAL_AXIS_RULES if rules is None else rules
    used: dict[str, str | None] = {}
    spec = []
    for name in names:
        axes = _mesh_axes_of(name, rules)
        if mesh is not None:
            axes = tuple(a for a in axes if a in mesh.axis_names)
        for axis in axes:
            if axis in used:
                raise ShardingError(
                    f"mesh axis {axis!r} is used twice in logical axes {tuple(names)}: by {used[axis]!r} and {name!r}"
                )
            used[axis] = name
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def logical_to_sharding(
    names: LogicalAxes,
    mesh: jax.sharding.Mesh,
    shape: Sequence[int] | None = None,
    rules: Rules | None = None,
    what: str = "array",
) -> NamedSharding:
    """``NamedSharding`` for an array with these logical axes; checks rank and divisibility when ``shape`` is given."""
    spec = logical_to_spec(names, rules, mesh)
    if shape is not None:
        if len(shape) != len(names):
            raise ShardingError(f"{what}: shape {tuple(shape)} has rank {len(shape)} but logical axes {tuple(names)}")
        for dim, (size, entry, name) in enumerate(zip(shape, spec, names)):
            axes, parts = _entry_axes(entry), _split_count(entry, mesh)
            if size % parts:
                raise ShardingError(
                    f"{what}: dimension {dim} ({name!r}) has size {size}, not divisible by mesh axes {axes} "
                    f"of total size {parts}"
                )
    return NamedSharding(mesh, spec)


def _entry_axes(entry) -> tuple[str, ...]:
    """The mesh axes of one ``PartitionSpec`` entry."""
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _split_count(entry, mesh: jax.sharding.Mesh) -> int:
    return math.prod(mesh.shape[a] for a in _entry_axes(entry))


def shards_of(name: str, mesh: jax.sharding.Mesh, rules: Rules | None = None) -> int:
    """How many ways the logical axis ``name`` is split on ``mesh`` (a dimension must be a multiple of it)."""
    return _split_count(logical_to_spec((name,), rules, mesh)[0], mesh)


def state_shardings(state: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None) -> Any:
    """A tree of ``NamedSharding`` matching an NNX state (abstract or concrete), from each variable's logical axes.

    The result has the same structure as ``state`` (``nnx.Variable`` nodes included), so it can be given to
    ``jax.jit(out_shardings=...)`` or ``jax.device_put``. Leaves that are not variables (an optimizer's step
    count) are replicated; variables holding ``None`` (the frozen part of a split state) stay ``None``.
    """

    def one(path, leaf):
        if isinstance(leaf, nnx.Variable):
            if leaf.get_value() is None:
                return leaf
            names = leaf.get_metadata().get(METADATA_KEY)
            shape = leaf.shape
            if names is None:
                return leaf.replace(NamedSharding(mesh, PartitionSpec()))
            return leaf.replace(logical_to_sharding(names, mesh, shape, rules, what=path_str(path)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def logical_axes_tree(state: Any) -> Any:
    """The logical axes of every leaf of an NNX state (``None`` where a variable has no annotation)."""
    return jax.tree_util.tree_map(
        lambda v: v.get_metadata().get(METADATA_KEY) if isinstance(v, nnx.Variable) else None,
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def tree_shardings(tree: Any, axes: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None) -> Any:
    """Shardings for a plain pytree of arrays given a matching pytree of logical-axes tuples (leaves)."""
    arrays, treedef = jax.tree_util.tree_flatten_with_path(tree)
    axes_leaves = treedef.flatten_up_to(axes)
    out = [
        logical_to_sharding(names, mesh, getattr(leaf, "shape", None), rules, what=path_str(path))
        for (path, leaf), names in zip(arrays, axes_leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


# --- activations -------------------------------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[tuple[jax.sharding.Mesh, Rules] | None] = contextvars.ContextVar(
    "runtime_sharding_active", default=None
)


# Set by ``RUNTIME_STRICT_SHARDING=1`` (the test configuration sets it): ``constrain`` outside ``activate`` then
# raises, so a step that forgot its mesh fails in the tests instead of running replicated. Code that runs model
# functions on one device on purpose (a reference comparison, a notebook) says so with ``unsharded()``.
STRICT_ENV = "RUNTIME_STRICT_SHARDING"
_UNSHARDED = object()


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, rules: Rules | None = None) -> Iterator[None]:
    """Within this context ``constrain`` places activations on ``mesh``."""
    token = _ACTIVE.set((mesh, LOGICAL_AXIS_RULES if rules is None else rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def unsharded() -> Iterator[None]:
    """Within this context ``constrain`` is the identity: model code run on one device, on purpose."""
    token = _ACTIVE.set(_UNSHARDED)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _active(what: str) -> tuple[jax.sharding.Mesh, Rules] | None:
    active = _ACTIVE.get()
    if active is _UNSHARDED:
        return None
    if active is None:
        if _strict():
            raise ShardingError(
                f"{what} outside an active mesh: run it under runtime.sharding.activate(mesh), or under "
                f"unsharded() when one device is meant ({STRICT_ENV} is set)"
            )
        return None
    return active


def active_mesh() -> jax.sharding.Mesh | None:
    """The mesh set by ``activate`` (None outside it, or under ``unsharded``)."""
    active = _ACTIVE.get()
    return None if active is None or active is _UNSHARDED else active[0]


def active_spec(names: LogicalAxes) -> PartitionSpec:
    """``logical_to_spec`` under the active mesh and rules (a replicated spec under ``unsharded``)."""
    active = _active(f"active_spec({tuple(names)})")
    if active is None:
        return PartitionSpec()
    mesh, rules = active
    return logical_to_spec(names, rules, mesh)


def constrain(x: jax.Array, names: LogicalAxes) -> jax.Array:
    """``with_sharding_constraint`` by logical names, under the mesh set by ``activate`` (traced code only).

    Outside ``activate`` it returns ``x`` unchanged, unless ``RUNTIME_STRICT_SHARDING`` is set (the tests), where
    it raises ``ShardingError``; ``unsharded()`` makes it the identity in both cases.
    """
    active = _active(f"constrain of an activation {tuple(names)}")
    if active is None:
        return x
    mesh, rules = active
    sharding = logical_to_sharding(names, mesh, x.shape, rules, what="activation")
    return jax.lax.with_sharding_constraint(x, sharding)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
