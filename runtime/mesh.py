"""Device meshes and multi-host start-up.

Every mesh this project builds has the three axes of ``MESH_AXES`` in that order:

* ``data``: pure data parallelism (parameters replicated),
* ``fsdp``: data parallelism with parameters and optimizer state sharded (ZeRO-3 style),
* ``tensor``: tensor (model) parallelism inside a layer.

An axis left out has size 1, and one axis may be ``-1`` meaning "all remaining devices".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from runtime.errors import MeshError

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Named mesh axis sizes; ``-1`` on one axis takes the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        for name in MESH_AXES:
            size = getattr(self, name)
            if size == 0 or size < -1:
                raise MeshError(f"MeshConfig.{name}={size}: an axis size is a positive integer or -1")

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in MESH_AXES}


def resolve_axis_sizes(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Turns ``{"fsdp": -1, "tensor": 2}`` into sizes for all of ``MESH_AXES`` whose product is ``num_devices``."""
    unknown = sorted(set(axes) - set(MESH_AXES))
    if unknown:
        raise MeshError(f"unknown mesh axis name(s) {unknown}; the mesh axes are {list(MESH_AXES)}")
    sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
    for name, size in sizes.items():
        if size == 0 or size < -1:
            raise MeshError(f"mesh axis {name!r} has size {size}; use a positive integer or -1")
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise MeshError(f"only one mesh axis may be -1 ('the rest'); got -1 for {free}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise MeshError(
                f"mesh axes {sizes} need a multiple of {fixed} devices for axis {free[0]!r}=-1, "
                f"but there are {num_devices} devices"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshError(f"mesh axes {sizes} use {fixed} devices, but there are {num_devices}")
    return sizes


def make_mesh(
    axes: Mapping[str, int] | MeshConfig | None = None,
    devices: Sequence[jax.Device] | None = None,
    *,
    whole_topology: bool = False,
) -> jax.sharding.Mesh:
    """Builds a mesh with axes ``("data", "fsdp", "tensor")`` over ``devices`` (default: all devices).

    The axes are of the Auto type so that ``with_sharding_constraint`` and GSPMD propagation work the same on
    every JAX version this project supports. ``whole_topology``: ``devices`` are every device of a topology
    (e.g. an accelerator's compile-only devices), ordered physically like the default devices.
    """
    if axes is None:
        axes = MeshConfig()
    if isinstance(axes, MeshConfig):
        axes = axes.as_dict()
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_axis_sizes(axes, len(devices))
    shape = tuple(sizes[name] for name in MESH_AXES)
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if whole_topology or len(devices) == len(jax.devices()):
        # jax.make_mesh orders devices by the physical topology (ICI rings, NVLink islands).
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """Multi-host start: leave ``coordinator_address`` empty for a single process."""

    coordinator_address: str = ""
    num_processes: int = 1
    process_id: int = 0

    def __post_init__(self):
        if self.num_processes < 1:
            raise MeshError(f"DistributedConfig.num_processes={self.num_processes}: must be at least 1")
        if not 0 <= self.process_id < self.num_processes:
            raise MeshError(
                f"DistributedConfig.process_id={self.process_id}: must be in [0, {self.num_processes})"
            )
        if self.num_processes > 1 and not self.coordinator_address:
            raise MeshError("DistributedConfig.coordinator_address is required when num_processes > 1")


_initialized = False


def initialize_distributed(cfg: DistributedConfig) -> bool:
    """Starts ``jax.distributed`` when a coordinator is given; returns whether it did.

    Must run before the first JAX computation. On CPU the cross-process collectives go through gloo.
    """
    global _initialized
    if not cfg.coordinator_address or _initialized:
        return _initialized
    # Only the CPU client reads this setting; accelerators keep their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
    )
    _initialized = True
    return True
