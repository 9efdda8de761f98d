"""Peak memory and step time of local learning against global BP, measured in one run.

ResNet-32 at CIFAR shape (32x32x3, 10 classes), batch 128, balanced-memory splits by default. For each
executor: the compiled step's
memory per device (argument + output - alias + temp, state donated) and its ratio to global BP, the temp
(activation) bytes and their ratio, the device allocator's peak where the backend reports one, and the
median step time and its ratio to BP; for local learning also the one-program-per-module executor's bound
(step_memory.host_loop_memory). Targets: plain local <= 0.60 at K = 2 and <= 0.40 at K = 4; with SGR
<= 0.60 at K = 4. ``--no-materialize`` measures the single-program step without ordering.materialize at the
module boundaries (the layout before it existed).

Run: ``python -m experiments.bench.local_memory [--batch-size 128] [--arch resnet32] [--iters 5]``; the JSON goes
to ``runs/bench/local_memory.json``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

from experiments.configs.local_learning import model_config
from local_learning import network
from local_learning import train_step as ts
from local_learning.reconcile import ReconcileConfig
from local_learning.memory import device_peak_bytes
from local_learning.partition import PartitionConfig
from local_learning.step_memory import host_loop_memory, step_memory, time_steps
from runtime.mesh import make_mesh
from runtime.train_state import init_train_state


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


def variants(cfg: Config):
    yield "bp", 1, None, "bp"
    yield "bp_checkpoint", 1, None, "bp_checkpoint"
    for k in cfg.modules:
        yield f"local K={k}", k, ReconcileConfig(weight=0.0), "local"
        yield f"local K={k} +SGR(jvp)", k, ReconcileConfig(weight=cfg.sgr_weight), "local"
        yield f"local K={k} +SGR(jvp,remat)", k, ReconcileConfig(weight=cfg.sgr_weight, remat=True), "local"
    k = max(cfg.modules)
    yield f"local K={k} +SGR(direct)", k, ReconcileConfig(weight=cfg.sgr_weight, impl="direct"), "local"


def main(cfg: Config) -> dict:
    model = model_config(cfg.arch, 10, cfg.image_size)
    mesh = make_mesh(devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.standard_normal((cfg.batch_size, cfg.image_size, cfg.image_size, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, cfg.batch_size), jnp.int32)}
    tx = optax.sgd(0.01, momentum=0.9)
    rows = []
    base = None
    for name, k, rc, executor in variants(cfg):
        plan = network.plan_partition(model, PartitionConfig(num_modules=k, split=cfg.split if k > 1 else "equal"))
        netdef, _ = network.abstract_network(model, plan)
        state = init_train_state(lambda: network.build(model, plan)[1], tx, mesh, seed=0, trainable=ts.trainable)[0]
        local_cfg = ts.LocalConfig(reconcile=rc or ReconcileConfig(), diagnostics=False, materialize=cfg.materialize)
        if executor == "local":
            step = ts.make_local_step(netdef, local_cfg, tx)
        else:
            step = ts.make_bp_step(netdef, tx, remat=executor == "bp_checkpoint")
        mem, compiled = step_memory(step, state, batch)
        # Memory comes from the compiled program alone; iters = 0 skips the timing (e.g. on a loaded machine).
        seconds = float("nan")
        if cfg.iters:
            seconds, state = time_steps(compiled, state, batch, iters=cfg.iters)
        row = {"executor": name, "K": k, "split_points": list(plan.split_points), "peak_bytes": mem.peak,
               "temp_bytes": mem.temp, "argument_bytes": mem.argument, "device_peak_bytes": device_peak_bytes(),
               "step_seconds": seconds}
        if base is None:
            base = row
        row["peak_ratio"] = row["peak_bytes"] / base["peak_bytes"]
        row["temp_ratio"] = row["temp_bytes"] / base["temp_bytes"]
        row["time_ratio"] = seconds / base["step_seconds"]
        rows.append(row)
        print(f"{name:24s} splits={str(plan.split_points):12s} peak={mem.peak / 2**20:8.1f} MiB "
              f"(x{row['peak_ratio']:.3f})  temp={mem.temp / 2**20:8.1f} MiB (x{row['temp_ratio']:.3f})  "
              f"step={seconds * 1e3:7.1f} ms (x{row['time_ratio']:.2f})", flush=True)
        if cfg.host_loop and executor == "local":
            hl = host_loop_memory(netdef, local_cfg, tx, state, batch)
            hl_row = {"executor": f"{name} host loop (bound)", "K": k, "peak_bytes": hl["peak"],
                      "peak_ratio": hl["peak"] / base["peak_bytes"],
                      "module_temp_bytes": [m.temp for m in hl["per_module"]]}
            rows.append(hl_row)
            print(f"{hl_row['executor']:24s} peak<={hl['peak'] / 2**20:7.1f} MiB (x{hl_row['peak_ratio']:.3f})  "
                  f"module temps={[round(m.temp / 2**20, 1) for m in hl['per_module']]} MiB", flush=True)
    machine = (f"{platform.processor() or platform.machine()}, backend {jax.default_backend()}, "
               f"{jax.devices()[0].device_kind}; jax {jax.__version__}")
    print(f"machine: {machine}")
    result = {"config": dataclasses.asdict(cfg), "machine": machine, "rows": rows}
    if cfg.json_out:
        Path(cfg.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Config))
