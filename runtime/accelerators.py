"""Accelerators a step can be compiled for without the hardware, and their published figures.

``TARGETS`` is the one table: each entry names a TPU slice or a set of H100/H200 GPUs, the compile-only
topology JAX builds for it, and the vendor's published per-chip figures (dense bfloat16 peak, HBM capacity and
bandwidth, interconnect bandwidth) that the planner's roofline projections use. ``compile_only_devices``
returns the target's devices from its compiler plugin (``libtpu`` for TPUs, the CUDA PJRT plugin for GPUs);
they compile programs but run nothing.

Sources of the figures: Google Cloud's TPU v5e / v5p / v6e (Trillium) system-architecture pages (per chip:
v5e 197 TFLOP/s, 16 GiB, 819 GB/s, ICI 1,600 Gbit/s; v5p 459 TFLOP/s, 95 GiB, 2,765 GB/s, ICI 4,800 Gbit/s; v6e
918 TFLOP/s, 32 GiB, 1,640 GB/s, ICI 3,584 Gbit/s) and NVIDIA's H100 SXM5 / H200 SXM datasheets (989.4 TFLOP/s
dense bf16; 80 GB HBM3 at 3.35 TB/s and 141 GB HBM3e at 4.8 TB/s; NVLink 900 GB/s in both directions together,
450 GB/s each way; between hosts, one 400 Gbit/s InfiniBand NIC per GPU, 50 GB/s).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Literal

import jax

from runtime.errors import RuntimeConfigError

GiB = 1 << 30


class TargetError(RuntimeConfigError):
    """An unknown target, or a target whose compiler plugin is not installed (the message says what to install)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """One compile target: a TPU slice or a set of GPUs. Figures are per chip, as published."""

    name: str
    platform: Literal["tpu", "gpu"]
    chip: str
    chips: int
    topology: str
    """TPU: a topology name ("v5e:2x2"); GPU: "hosts x 1 x GPUs per host" ("1x1x8")."""
    chips_per_host_bounds: tuple[int, int, int] = (1, 1, 1)
    peak_bf16_flops: float
    """Dense bfloat16 FLOP/s per chip."""
    hbm_bytes: int
    hbm_bandwidth: float
    """HBM bytes/s per chip."""
    interconnect_bandwidth: float
    """Bytes/s one chip sends over its fastest link set (ICI, NVLink) in one direction."""
    cross_host_bandwidth: float = 0.0
    """Bytes/s per chip between hosts where that path is slower (GPUs: InfiniBand); 0: same as interconnect."""

    @property
    def hosts(self) -> int:
        return max(1, self.chips // math.prod(self.chips_per_host_bounds)) if self.platform == "tpu" else int(
            self.topology.split("x")[0])

    def describe(self) -> str:
        return (f"{self.name}: {self.chips} x {self.chip} ({self.hosts} host{'s' if self.hosts > 1 else ''}), "
                f"{self.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16, {self.hbm_bytes / GiB:.1f} GiB at "
                f"{self.hbm_bandwidth / 1e9:.0f} GB/s per chip")


def _tpu(name, chip, chips, topology, bounds, flops, hbm_gib, bw, ici_gbit):
    return Target(name=name, platform="tpu", chip=chip, chips=chips, topology=topology, chips_per_host_bounds=bounds,
                  peak_bf16_flops=flops, hbm_bytes=hbm_gib * GiB, hbm_bandwidth=bw,
                  interconnect_bandwidth=ici_gbit * 1e9 / 8)


def _gpu(name, chip, hosts, per_host, flops, hbm_bytes, bw):
    return Target(name=name, platform="gpu", chip=chip, chips=hosts * per_host, topology=f"{hosts}x1x{per_host}",
                  peak_bf16_flops=flops, hbm_bytes=hbm_bytes, hbm_bandwidth=bw, interconnect_bandwidth=450e9,
                  cross_host_bandwidth=50e9 if hosts > 1 else 0.0)


# H100 80GB HBM3: the total memory CUDA reports (79.1 GiB); H200: 143,771 MiB (nvidia-smi).
H100_MEMORY = 84_978_434_048
H200_MEMORY = 143_771 << 20

TARGETS: dict[str, Target] = {t.name: t for t in (
    _tpu("tpu-v5e-4", "TPU v5e", 4, "v5e:2x2", (2, 2, 1), 197e12, 16, 819e9, 1600),
    _tpu("tpu-v5e-8", "TPU v5e", 8, "v5e:2x4", (2, 4, 1), 197e12, 16, 819e9, 1600),
    _tpu("tpu-v5e-256", "TPU v5e", 256, "v5e:16x16", (2, 2, 1), 197e12, 16, 819e9, 1600),
    _tpu("tpu-v5p-8", "TPU v5p", 4, "v5p:2x2x1", (2, 2, 1), 459e12, 95, 2765e9, 4800),
    _tpu("tpu-v5p-128", "TPU v5p", 64, "v5p:4x4x4", (2, 2, 1), 459e12, 95, 2765e9, 4800),
    _tpu("tpu-v6e-8", "TPU v6e", 8, "v6e:2x4", (2, 4, 1), 918e12, 32, 1640e9, 3584),
    _tpu("tpu-v6e-256", "TPU v6e", 256, "v6e:16x16", (2, 2, 1), 918e12, 32, 1640e9, 3584),
    _gpu("h100x1", "NVIDIA H100 80GB HBM3", 1, 1, 989.4e12, H100_MEMORY, 3.35e12),
    _gpu("h100x8", "NVIDIA H100 80GB HBM3", 1, 8, 989.4e12, H100_MEMORY, 3.35e12),
    _gpu("h100x16", "NVIDIA H100 80GB HBM3", 2, 8, 989.4e12, H100_MEMORY, 3.35e12),
    _gpu("h100x64", "NVIDIA H100 80GB HBM3", 8, 8, 989.4e12, H100_MEMORY, 3.35e12),
    _gpu("h200x1", "NVIDIA H200", 1, 1, 989.4e12, H200_MEMORY, 4.8e12),
    _gpu("h200x8", "NVIDIA H200", 1, 8, 989.4e12, H200_MEMORY, 4.8e12),
)}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")
    return TARGETS[name]


def all_buffers_in_hbm(target: Target) -> dict:
    """Compiler options that keep every buffer of a program in HBM, for memory figures comparable across backends.

    libtpu's memory-space assignment moves buffers that fit into the chip's on-chip vector memory (VMEM), and
    ``memory_analysis`` then counts only what stays in HBM: a program whose live set fits on chip reports no
    temporaries at all (measured: one ResNet module of 65 MiB of activations, 0 B of temp on TPU v5e). That is
    the right figure for "does it fit in HBM", but not the program's live set; with assignment off it is.
    GPUs have no such memory space: no options.
    """
    return {"xla_msa_enable": False} if target.platform == "tpu" else {}


def gpu_target_config(target: Target) -> str:
    """The text form of XLA's ``stream_executor.GpuTargetConfigProto`` for a Hopper GPU (132 SMs, compute
    capability 9.0), with the target's memory size and bandwidth."""
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(target.hbm_bandwidth)}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {target.hbm_bytes}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
device_description_str: "{target.chip}"
"""


def _missing(target: Target, error: Exception) -> TargetError:
    if target.platform == "tpu":
        return TargetError(f"target {target.name}: the TPU compiler is not available ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''}); install it with "
                           "pip install -e '.[tpu-aot]' (libtpu)")
    return TargetError(f"target {target.name}: the CUDA compiler plugin is not available ({type(error).__name__}: "
                       f"{str(error).splitlines()[0] if str(error) else ''}); install it with "
                       "pip install -e '.[gpu-aot]' (jax-cuda13-plugin, jax-cuda13-pjrt, cuDNN)")


@functools.lru_cache(maxsize=None)
def compile_only_devices(name: str) -> tuple[jax.Device, ...]:
    """The target's compile-only devices (cached: a topology is built once per process)."""
    from jax.experimental import topologies

    target = get_target(name)
    try:
        if target.platform == "tpu":
            import libtpu  # noqa: F401  (a clear error before libtpu's own start-up messages)

            # libtpu looks for a TPU VM's metadata at start-up and prints warnings where there is none; these
            # settings only describe the (absent) local host, the compile target is the topology below.
            # ALLOW_MULTIPLE_LIBTPU_LOAD: a compile-only libtpu needs no exclusive lock on a (non-existent) chip,
            # so several planners may run at once.
            for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                               ("TPU_ACCELERATOR_TYPE", "v5litepod-4"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
                os.environ.setdefault(key, value)

            topo = topologies.get_topology_desc(platform="tpu", topology_name=target.topology,
                                                chip_config_name="default",
                                                chips_per_host_bounds=target.chips_per_host_bounds, num_slices=1)
        else:
            import jax_plugins.xla_cuda13  # noqa: F401

            topo = topologies.get_topology_desc("h100", "cuda", target_config=gpu_target_config(target),
                                                topology=target.topology)
    except (ImportError, RuntimeError) as e:
        raise _missing(target, e) from e
    devices = tuple(topo.devices)
    if len(devices) != target.chips:
        raise TargetError(f"target {target.name}: its topology {target.topology} gave {len(devices)} devices, "
                          f"expected {target.chips}")
    return devices
