"""Peak memory and step time of local learning against global BP, measured in one run.

ResNet-32 at CIFAR shape (32x32x3, 10 classes), batch 128, balanced-memory splits by default. For each
executor: the compiled step's
memory per device (argument + output - alias + temp, state donated) and its ratio to global BP, the temp
(activation) bytes and their ratio, the device allocator's peak where the backend reports one, and the
median step time and its ratio to BP and to checkpointed BP (the memory-saving competitor); for local learning
also the one-program-per-module executor's bound (step_memory.host_loop_memory). Variants: BP, checkpointed BP,
and at every K plain local and local + SGR in the jvp form with and without the checkpointed second pass, plus
the direct (reverse-over-reverse) form at the largest K. Targets: plain local <= 0.60 at K = 2 and <= 0.40 at
K = 4; with SGR <= 0.60 at K = 4. ``--no-materialize`` measures the single-program step without
ordering.materialize at the module boundaries (the layout before it existed).

The allocator's peak (``device_peak_bytes``, GPU/TPU) is process-wide and never goes down, so on a backend that
reports one every variant runs in a fresh process (``--fresh-process auto``) and executes at least one step
before the peak is read; on the CPU the compiled figures are the measurement and one process serves.

Run: ``python -m experiments.bench.local_memory [--batch-size 128] [--arch resnet32] [--iters 5]``; the JSON goes
to ``runs/bench/local_memory.json``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

from experiments.configs.local_learning import model_config
from experiments.planning import placed
from local_learning import network
from local_learning import train_step as ts
from local_learning.reconcile import ReconcileConfig
from local_learning.memory import device_peak_bytes
from local_learning.partition import PartitionConfig
from local_learning.step_memory import host_loop_memory, step_memory, time_steps
from runtime import sharding as sharding_lib
from runtime.mesh import make_mesh
from runtime.accelerators import all_buffers_in_hbm, compile_only_devices, get_target
from runtime.train_state import init_train_state, train_state_spec


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    arch: str = "resnet32"
    batch_size: int = 128
    image_size: int = 32
    sgr_weight: float = 1.0
    modules: tuple[int, ...] = (2, 4)
    split: str = "balanced_memory"
    iters: int = 3
    """Timed steps per variant (median reported); 0: memory only."""
    host_loop: bool = True
    """Also measure the one-program-per-module executor."""
    materialize: bool = True
    """Hand h_k forward through ordering.materialize in the single-program local step."""
    json_out: str = "runs/bench/local_memory.json"
    fresh_process: Literal["auto", "yes", "no"] = "auto"
    """One process per variant: ``auto`` does so where the backend reports an allocator peak (GPU, TPU)."""
    only: str = ""
    """Measure this one variant (by name) and nothing else: what each fresh process runs."""
    target: str = ""
    """Compile every variant for one chip of this accelerator (``runtime.accelerators.TARGETS``, e.g. tpu-v5e-4,
    h100x1) without the hardware and report the compiler's memory; no timing. Empty: the local backend."""
    on_chip_memory: bool = True
    """With a TPU ``--target``: let the compiler keep buffers in the chip's on-chip memory (VMEM), as a real run
    does, so that the figures are HBM alone. ``--no-on-chip-memory`` keeps every buffer in HBM: the program's
    whole live set, comparable with the CPU and GPU figures (runtime.accelerators.all_buffers_in_hbm)."""


def variants(cfg: Config):
    yield "bp", 1, None, "bp"
    yield "bp_checkpoint", 1, None, "bp_checkpoint"
    for k in cfg.modules:
        yield f"local K={k}", k, ReconcileConfig(weight=0.0), "local"
        yield f"local K={k} +SGR(jvp)", k, ReconcileConfig(weight=cfg.sgr_weight), "local"
        yield f"local K={k} +SGR(jvp,remat)", k, ReconcileConfig(weight=cfg.sgr_weight, remat=True), "local"
    k = max(cfg.modules)
    yield f"local K={k} +SGR(direct)", k, ReconcileConfig(weight=cfg.sgr_weight, impl="direct"), "local"


def measure(cfg: Config, name: str, k: int, rc, executor: str) -> list[dict]:
    """The rows of one variant (its own, and for local learning the host-loop bound), ratios not yet filled."""
    devices = compile_only_devices(cfg.target)[:1] if cfg.target else jax.devices()[:1]
    mesh = make_mesh(devices=devices)
    with sharding_lib.activate(mesh):
        return _measure(cfg, name, k, rc, executor, mesh)


def _measure(cfg: Config, name: str, k: int, rc, executor: str, mesh) -> list[dict]:
    model = model_config(cfg.arch, 10, cfg.image_size)
    rng = np.random.default_rng(0)
    tx = optax.sgd(0.01, momentum=0.9)
    plan = network.plan_partition(model, PartitionConfig(num_modules=k, split=cfg.split if k > 1 else "equal"))
    netdef, _ = network.abstract_network(model, plan)
    init = lambda: network.build(model, plan)[1]  # noqa: E731
    if cfg.target:  # compile-only devices hold no arrays: abstract arguments carrying their shardings
        state = placed(*train_state_spec(init, tx, mesh, seed=0, trainable=ts.trainable))
        one = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        batch = placed({"image": jax.ShapeDtypeStruct((cfg.batch_size, cfg.image_size, cfg.image_size, 3),
                                                      jnp.float32),
                        "label": jax.ShapeDtypeStruct((cfg.batch_size,), jnp.int32)}, {"image": one, "label": one})
    else:
        state = init_train_state(init, tx, mesh, seed=0, trainable=ts.trainable)[0]
        batch = {"image": jnp.asarray(rng.standard_normal((cfg.batch_size, cfg.image_size, cfg.image_size, 3)),
                                      jnp.float32),
                 "label": jnp.asarray(rng.integers(0, 10, cfg.batch_size), jnp.int32)}
    local_cfg = ts.LocalConfig(reconcile=rc or ReconcileConfig(), diagnostics=False, materialize=cfg.materialize)
    if executor == "local":
        step = ts.make_local_step(netdef, local_cfg, tx)
    else:
        step = ts.make_bp_step(netdef, tx, remat=executor == "bp_checkpoint")
    options = all_buffers_in_hbm(get_target(cfg.target)) if cfg.target and not cfg.on_chip_memory else None
    mem, compiled = step_memory(step, state, batch, options)
    # Memory comes from the compiled program alone; iters = 0 skips the timing (e.g. on a loaded machine).
    seconds = float("nan")
    if cfg.iters and not cfg.target:
        seconds, state = time_steps(compiled, state, batch, iters=cfg.iters)
    rows = [{"executor": name, "K": k, "split_points": list(plan.split_points), "peak_bytes": mem.peak,
             "temp_bytes": mem.temp, "argument_bytes": mem.argument,
             "device_peak_bytes": None if cfg.target else device_peak_bytes(),
             "step_seconds": seconds}]
    if cfg.host_loop and executor == "local":
        hl = host_loop_memory(netdef, local_cfg, tx, state, batch, options)
        rows.append({"executor": f"{name} host loop (bound)", "K": k, "peak_bytes": hl["peak"],
                     "module_temp_bytes": [m.temp for m in hl["per_module"]]})
    return rows


def _flags(cfg: Config, name: str, json_out: str) -> list[str]:
    """The command line of one variant's fresh process."""
    out = ["--arch", cfg.arch, "--batch-size", str(cfg.batch_size), "--image-size", str(cfg.image_size),
           "--sgr-weight", str(cfg.sgr_weight), "--modules", *map(str, cfg.modules), "--split", cfg.split,
           "--iters", str(max(cfg.iters, 1)), "--host-loop" if cfg.host_loop else "--no-host-loop",
           "--materialize" if cfg.materialize else "--no-materialize", "--fresh-process", "no", "--only", name,
           "--json-out", json_out, "--on-chip-memory" if cfg.on_chip_memory else "--no-on-chip-memory"]
    return out


def in_fresh_process(cfg: Config, name: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "rows.json")
        cmd = [sys.executable, "-m", "experiments.bench.local_memory", *_flags(cfg, name, path)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{name}: the fresh process failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return json.loads(Path(path).read_text())["rows"]


def add_ratios(rows: list[dict]) -> None:
    """peak and temp relative to BP; step time relative to BP and to checkpointed BP."""
    base = next(r for r in rows if r["executor"] == "bp")
    ckpt = next((r for r in rows if r["executor"] == "bp_checkpoint"), None)
    for row in rows:
        row["peak_ratio"] = row["peak_bytes"] / base["peak_bytes"]
        if "temp_bytes" in row:
            row["temp_ratio"] = row["temp_bytes"] / base["temp_bytes"]
        if "step_seconds" in row:
            row["time_ratio"] = row["step_seconds"] / base["step_seconds"]
            row["time_ratio_vs_checkpoint"] = row["step_seconds"] / ckpt["step_seconds"] if ckpt else None
        if row.get("device_peak_bytes") and base.get("device_peak_bytes"):
            row["device_peak_ratio"] = row["device_peak_bytes"] / base["device_peak_bytes"]


def _print(row: dict) -> None:
    if "step_seconds" not in row:
        print(f"{row['executor']:28s} peak<={row['peak_bytes'] / 2**20:7.1f} MiB (x{row['peak_ratio']:.3f})  "
              f"module temps={[round(t / 2**20, 1) for t in row['module_temp_bytes']]} MiB", flush=True)
        return
    device = (f"  device peak={row['device_peak_bytes'] / 2**20:8.1f} MiB (x{row.get('device_peak_ratio', float('nan')):.3f})"
              if row.get("device_peak_bytes") else "")
    ckpt = row.get("time_ratio_vs_checkpoint")
    print(f"{row['executor']:28s} splits={str(row['split_points']):12s} peak={row['peak_bytes'] / 2**20:8.1f} MiB "
          f"(x{row['peak_ratio']:.3f})  temp={row['temp_bytes'] / 2**20:8.1f} MiB (x{row['temp_ratio']:.3f})  "
          f"step={row['step_seconds'] * 1e3:7.1f} ms (x{row['time_ratio']:.2f} BP, "
          f"x{ckpt if ckpt is not None else float('nan'):.2f} checkpointed BP){device}", flush=True)


def main(cfg: Config) -> dict:
    chosen = [v for v in variants(cfg) if not cfg.only or v[0] == cfg.only]
    if not chosen:
        raise SystemExit(f"--only {cfg.only!r}: no such variant; expected one of {[v[0] for v in variants(cfg)]}")
    fresh = cfg.fresh_process == "yes" or (cfg.fresh_process == "auto" and not cfg.only and not cfg.target
                                           and jax.local_devices()[0].memory_stats() is not None)
    rows = []
    for name, k, rc, executor in chosen:
        new = in_fresh_process(cfg, name) if fresh else measure(cfg, name, k, rc, executor)
        if not cfg.only:
            print(f"measured {name}: peak {new[0]['peak_bytes'] / 2**20:.1f} MiB", flush=True)
        rows += new
    if not cfg.only:
        add_ratios(rows)
        for row in rows:
            _print(row)
    machine = (f"{platform.processor() or platform.machine()}, backend {jax.default_backend()}, "
               f"{jax.devices()[0].device_kind}; jax {jax.__version__}")
    if cfg.target:
        placement = ("" if cfg.on_chip_memory or not all_buffers_in_hbm(get_target(cfg.target))
                     else ", every buffer in HBM (on-chip memory assignment off)")
        machine = (f"compiled for one chip of {cfg.target} ({compile_only_devices(cfg.target)[0].device_kind}"
                   f"{placement}) on {machine}")
    print(f"machine: {machine}; {'one process per variant' if fresh else 'one process'}")
    result = {"config": dataclasses.asdict(cfg), "machine": machine, "fresh_process": fresh, "rows": rows}
    if cfg.json_out:
        Path(cfg.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Config))
