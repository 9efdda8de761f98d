"""What a launcher gives ``experiments.plan``: its real step as a ``Program`` built without data or weights.

Each launcher module that can be planned defines ``PLAN = LauncherPlan(...)``:

* ``parse(preset, args) -> cfg``: the launcher's own config, from a preset name and its own command-line flags;
* ``program(cfg, mesh) -> Program``: the jitted function the launcher runs (for training launchers the loop's
  ``experiments.run.jit_train_step``) and abstract, sharded arguments at the preset's real shapes;
* ``without_remat(cfg) -> cfg``: the same computation without rematerialisation (its FLOPs are the model
  FLOPs that MFU is quoted in; the compiled step's own FLOPs include the recomputation);
* ``alternatives(cfg, mesh_sizes) -> [(label, cfg)]``: memory-saving variants the planner compiles when a
  configuration does not fit (more fsdp, full remat, micro-batches, attention query chunks).

Nothing here reads a file: shapes come from the config (and, for a local model directory, its config.json).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import tyro

from experiments.run import RunError, jit_train_step
from runtime import batches as batches_lib
from runtime.errors import RuntimeConfigError
from runtime.mesh import MeshConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Program:
    """A jitted function and abstract arguments (``jax.ShapeDtypeStruct`` leaves carrying their shardings);
    ``work`` is what one call processes (``{"tokens": ..., "pairs": ...}``) for throughput figures."""

    name: str
    fn: Callable
    args: tuple
    work: Mapping[str, float]
    arg_names: tuple[str, ...] = ("state", "batch")
    unknown_trips: int = 1
    """How many times to count a while loop whose length the data decides (generation, which stops when every
    row has emitted a stop token, runs at most max_new_tokens steps: planned at that worst case)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LauncherPlan:
    parse: Callable[[str, Sequence[str]], Any]
    program: Callable[[Any, jax.sharding.Mesh], Program]
    presets: Sequence[str]
    without_remat: Callable[[Any], Any] = lambda cfg: cfg
    alternatives: Callable[[Any, Mapping[str, int]], list[tuple[str, Any]]] = lambda cfg, sizes: []
    mesh_of: Callable[[Any], MeshConfig] = lambda cfg: cfg.run.mesh
    """The mesh the config asks for (``--mesh.*`` of the planner replaces it through ``with_mesh``; a launcher
    whose config holds no mesh has ``with_mesh=None`` and runs on the planner's)."""
    with_mesh: Callable[[Any, MeshConfig], Any] | None = lambda cfg, mesh: dataclasses.replace(
        cfg, run=dataclasses.replace(cfg.run, mesh=mesh))


def parse_preset(config_type: Any, preset: str, args: Sequence[str], prog: str) -> Any:
    """A launcher config from ``<preset> <flags...>`` through the launcher's own tyro CLI."""
    return tyro.cli(config_type, args=[preset, *args], prog=prog)


def abstract_microbatches(batch: Any, grad_accum: int) -> Any:
    """``runtime.batches.split_microbatches`` on abstract leaves: [B, ...] -> [A, B / A, ...]."""
    if grad_accum == 1:
        return batch

    def one(x):
        if x.shape[0] % grad_accum:
            raise RunError(f"batch size {x.shape[0]} is not divisible by grad_accum={grad_accum}")
        return jax.ShapeDtypeStruct((grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), x.dtype)

    return jax.tree.map(one, batch)


def placed(tree: Any, shardings: Any) -> Any:
    """Abstract leaves carrying their shardings."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def train_step_program(name: str, state_spec: Callable, step_fn: Callable, batch: Any, grad_accum: int, mesh,
                       work: Mapping[str, float], batch_axes: Callable = batches_lib.batch_axes) -> Program:
    """The loop's step (``jit_train_step``) on the abstract state and an abstract global batch (given before the
    micro-batch split), laid out exactly as ``experiments.run.train`` lays them out."""
    abstract, shardings = state_spec(mesh)
    split = abstract_microbatches(batch, grad_accum)
    batch_shardings = batches_lib.batch_shardings(split, batch_axes(split, grad_accum), mesh)
    return Program(name=name, fn=jit_train_step(step_fn, shardings, batch_shardings, mesh),
                   args=(placed(abstract, shardings), placed(split, batch_shardings)), work=dict(work))


# --- the launchers that can be planned, by name ----------------------------------------------------------------

LAUNCHERS = {
    "bfpo_train": "experiments.bfpo_train",
    "hft": "experiments.hft",
    "local_learning_train": "experiments.local_learning_train",
    "lm_generate": "experiments.lm_generate",
    "lsrl_approx": "experiments.lsrl_approx",
    "mlp_regression": "experiments.mlp_regression",
}


class PlanError(RuntimeConfigError):
    """The planner cannot plan this launcher, preset or target (the message says what to change)."""


# Launchers with no step of their own to plan, and what to plan instead.
NOT_PLANNED = {
    "bfpo_compare": "it runs bfpo_train's step for each objective (and an SFT step of the same shape): plan "
                    "--launcher bfpo_train with the compared --objective",
    "local_learning_compare": "it runs local_learning_train's steps: plan --launcher local_learning_train with the "
                              "compared --executor / --partition.num-modules / --local.reconcile.weight",
    "lsrl_stability": "it is a float64 CPU study of many small compiled models; the LSRL forward pass that runs at "
                      "scale is planned with --launcher lsrl_approx",
}


def launcher_plan(name: str) -> LauncherPlan:
    if name in NOT_PLANNED:
        raise PlanError(f"launcher {name!r} has no step of its own to plan: {NOT_PLANNED[name]}")
    if name not in LAUNCHERS:
        raise PlanError(f"unknown launcher {name!r}; the planner knows {', '.join(LAUNCHERS)}")
    return importlib.import_module(LAUNCHERS[name]).PLAN
