"""The train state: one pytree of (step, params, optimizer state, rng), plus a static mask of trainable leaves.

Parameters are any pytree of arrays, typically the ``nnx.State`` of a model's ``nnx.Param`` variables (so each
leaf keeps its logical axes for sharding). The mask is a tuple of booleans, one per parameter leaf in
``jax.tree.leaves`` order; the optimizer state exists only for the trainable leaves, so a model with most of
its weights frozen pays no optimizer memory for them. The rng is raw ``uint32[2]`` key data so that it
checkpoints like any array; each step uses ``fold_in(rng, step)``, which makes a resumed run identical.

Under a ``runtime.precision.Precision`` policy the trainable floating leaves are master copies (float32 by default)
and ``forward_dtypes`` records the dtype the model stores each leaf in; ``forward_params()`` is the copy the forward
pass sees. Frozen leaves are kept as stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from runtime import precision as precision_lib
from runtime import sharding as sharding_lib
from runtime.tree_paths import path_str
from runtime.errors import RuntimeConfigError
from runtime.precision import Precision


def _is_none(x) -> bool:
    return x is None


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: the number of optimizer updates applied so far
    params: Any
    opt_state: Any  # optimizer state of the trainable subset of ``params``
    rng: jax.Array  # uint32[2] raw key data
    trainable: tuple[bool, ...] = struct.field(pytree_node=False)
    # The dtype each parameter leaf is stored in by its model (empty: as in ``params``); trained leaves may be
    # kept wider than this as master copies.
    forward_dtypes: tuple[str, ...] = struct.field(pytree_node=False, default=())

    def forward_params(self, params: Any = None) -> Any:
        """The parameters as the model stores them: masters cast to their forward dtypes (a no-op in float32)."""
        return precision_lib.to_forward(self.params if params is None else params, self.forward_dtypes)

    def split_params(self, params: Any = None) -> tuple[Any, Any]:
        """(trainable, frozen): two trees shaped like ``params`` with ``None`` at the other part's leaves."""
        return split_by_mask(self.params if params is None else params, self.trainable)

    def apply_gradients(self, grads: Any, tx: optax.GradientTransformation) -> "TrainState":
        """One optimizer update from gradients of the trainable subset; frozen leaves are untouched."""
        train, frozen = self.split_params()
        grads = jax.tree.map(lambda g, w: g.astype(w.dtype), grads, train)
        updates, opt_state = tx.update(grads, self.opt_state, train)
        # Keep the state's dtypes (narrow moments stay narrow; optax would promote them to the gradients' dtype).
        opt_state = jax.tree.map(lambda new, old: new.astype(old.dtype), opt_state, self.opt_state)
        train = optax.apply_updates(train, updates)
        return self.replace(step=self.step + 1, params=merge_by_mask(train, frozen), opt_state=opt_state)

    @property
    def num_params(self) -> int:
        return sum(int(x.size) for x in jax.tree.leaves(self.params))

    @property
    def num_trainable(self) -> int:
        return sum(int(x.size) for x, m in zip(jax.tree.leaves(self.params), self.trainable) if m)


def split_by_mask(params: Any, mask: tuple[bool, ...]) -> tuple[Any, Any]:
    leaves, treedef = jax.tree.flatten(params)
    if len(leaves) != len(mask):
        raise RuntimeConfigError(f"trainable mask has {len(mask)} entries but the parameters have {len(leaves)} leaves")
    train = treedef.unflatten([x if m else None for x, m in zip(leaves, mask)])
    frozen = treedef.unflatten([None if m else x for x, m in zip(leaves, mask)])
    return train, frozen


def merge_by_mask(train: Any, frozen: Any) -> Any:
    """Inverse of ``split_by_mask``."""
    a, treedef = jax.tree.flatten(train, is_leaf=_is_none)
    b = treedef.flatten_up_to(frozen)
    return treedef.unflatten([x if x is not None else y for x, y in zip(a, b)])


def leaf_paths(params: Any) -> list[str]:
    """Slash-joined key paths of the parameter leaves, e.g. ``layers/3/mlp/down_proj/kernel``."""
    return [path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def trainable_mask(params: Any, trainable: str | Callable[[str], bool] | None = None) -> tuple[bool, ...]:
    """Which leaves train: all (``None``), those whose path matches a regex (``re.search``), or a predicate on paths."""
    paths = leaf_paths(params)
    if trainable is None:
        return tuple(True for _ in paths)
    if isinstance(trainable, str):
        pattern = re.compile(trainable)
        mask = tuple(bool(pattern.search(p)) for p in paths)
    else:
        mask = tuple(bool(trainable(p)) for p in paths)
    if not any(mask):
        raise RuntimeConfigError(
            f"trainable={trainable!r} selects no parameter; parameter paths look like {paths[:5]}"
        )
    return mask


def state_shardings(abstract: TrainState, mesh: jax.sharding.Mesh, rules=None) -> TrainState:
    """Shardings of a train state: parameters and their optimizer moments from logical axes, scalars replicated."""
    repl = sharding_lib.replicated(mesh)
    return TrainState(
        step=repl,
        params=sharding_lib.state_shardings(abstract.params, mesh, rules),
        opt_state=sharding_lib.state_shardings(abstract.opt_state, mesh, rules),
        rng=repl,
        trainable=abstract.trainable,
        forward_dtypes=abstract.forward_dtypes,
    )


def _fresh_state(params: Any, tx: optax.GradientTransformation, seed: int, mask: tuple[bool, ...],
                 precision: Precision = Precision()) -> TrainState:
    """Step 0 around ``params``: trained leaves as masters, optimizer state for the trainable leaves only."""
    dtypes = precision_lib.forward_dtypes(params)
    params = precision_lib.to_masters(params, mask, precision)
    train, _ = split_by_mask(params, mask)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=precision_lib.moments_state(tx, train, precision),
        rng=jax.random.PRNGKey(seed),
        trainable=mask,
        forward_dtypes=dtypes,
    )


def _builder(init_params: Callable[[], Any], tx: optax.GradientTransformation, seed: int, mask,
             precision: Precision) -> Callable[[], TrainState]:
    return lambda: _fresh_state(init_params(), tx, seed, mask, precision)


def train_state_spec(
    init_params: Callable[[], Any],
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    seed: int,
    trainable: str | Callable[[str], bool] | None = None,
    rules=None,
    precision: Precision = Precision(),
) -> tuple[TrainState, TrainState]:
    """(abstract state, shardings) without allocating anything: what a restore needs."""
    mask = trainable_mask(jax.eval_shape(init_params), trainable)
    abstract = jax.eval_shape(_builder(init_params, tx, seed, mask, precision))
    return abstract, state_shardings(abstract, mesh, rules)


def init_train_state(
    init_params: Callable[[], Any],
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    seed: int,
    trainable: str | Callable[[str], bool] | None = None,
    rules=None,
    precision: Precision = Precision(),
) -> tuple[TrainState, TrainState]:
    """Builds the train state abstractly, shards it, then initialises it under jit straight onto the mesh.

    ``init_params`` returns the parameter pytree (e.g. ``nnx.state(Model(cfg, rngs=nnx.Rngs(seed)), nnx.Param)``);
    it is traced, never run eagerly, so no full copy ever lives on one device. Returns (state, shardings).
    """
    abstract, shardings = train_state_spec(init_params, tx, mesh, seed=seed, trainable=trainable, rules=rules,
                                           precision=precision)
    with sharding_lib.activate(mesh, rules):
        state = jax.jit(_builder(init_params, tx, seed, abstract.trainable, precision), out_shardings=shardings)()
    return state, shardings


def train_state_from_params(
    params: Any,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    seed: int,
    trainable: str | Callable[[str], bool] | None = None,
    rules=None,
    precision: Precision = Precision(),
) -> tuple[TrainState, TrainState]:
    """A train state around already-placed parameters (e.g. a loaded checkpoint); the parameters are donated
    (those that become wider masters are copied, the rest alias)."""
    mask = trainable_mask(params, trainable)
    build = lambda params: _fresh_state(params, tx, seed, mask, precision)  # noqa: E731
    shardings = state_shardings(jax.eval_shape(build, params), mesh, rules)
    state = jax.jit(build, in_shardings=(shardings.params,), out_shardings=shardings, donate_argnums=0)(params)
    return state, shardings
