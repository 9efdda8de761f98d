"""Per-step overhead of the shared training loop ``experiments.run.train`` against a bare jitted loop.

What is compared
----------------
*ours*: ``train(RunConfig, task)`` on the teacher-student MLP task (``experiments.tasks.mlp_regression.make_task``),
with the loop's per-step work left on as a user gets it: progress bar, metrics fetched one step late, the NaN
guard, a JSONL + TensorBoard record every ``log_every`` steps, and batch placement through
``jax.make_array_from_callback``. Periodic evaluations and checkpoints are off (they are not per-step costs);
the final checkpoint, evaluation and summary happen after the timed span.

*peer*: a hand-written loop that jits the very same ``task.step_fn`` with the same in/out shardings and the
same donated state (``jax.jit(step_fn, in_shardings=(state, batch), out_shardings=(state, replicated),
donate_argnums=0)``), places each host batch with ``jax.device_put`` and fetches nothing. It waits for the
device once every ``log_every`` steps, at the same step numbers where ``train`` drains its pipeline to write a
log record. It cannot simply wait only at the end: XLA:CPU runs the step's gradient all-reduce over the
simulated devices in-process, and with 8 simulated devices on a 2-core machine a long queue of dispatched
steps deadlocks that rendezvous (64 or 100 queued steps did, 40 did not; the process aborts after 40 s), so
the peer must bound the number of steps in flight. Waiting every ``log_every`` steps bounds it and gives both loops the same
synchronisation points, so the difference between them is the host-side work per step.

Both loops run in the same process, on the same mesh, with the same model config, batch size and step count,
and read their host batches from the same pre-generated pool (``batch_pool`` batches of the task's own data,
cycled), so the teacher's data generation is in neither timing.

How it is timed
---------------
Both loops take their batches from a ``_TimedBatches`` iterator that records ``time.perf_counter()`` each time
a batch is requested. Each run does ``warmup + steps + 1`` steps; the timing is the interval between the
request for batch ``warmup`` and the request for batch ``warmup + steps``, i.e. exactly ``steps`` complete
steps, and ``steps / interval`` is the rate. ``warmup`` and ``steps`` are multiples of ``log_every``, so both
ends of the interval fall right after a drain of the pipeline (``train`` has fetched the last step's metrics
and written its log record; the peer has blocked on the last step's outputs): the interval contains neither
compilation nor work still queued from before it, and it ends only when its last step has finished. The
extra step after the interval only provides the closing timestamp.

As a cross-check, the JSON output also holds ``train``'s own rate over the same steps, read from the
``steps_per_second`` of its metrics.jsonl windows (each window covers ``log_every`` steps).

Each repeat runs both loops once, alternating which goes first; the figures are the medians over repeats and
the ratio is median(ours) / median(peer) (below 1.0x: the loop costs throughput).

Run: ``python -m experiments.bench.loop_overhead --help``. ``make bench`` exports
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (8 simulated CPU devices); without it the mesh spans
whatever devices JAX finds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import tyro

from experiments.configs.mlp_regression import MLPConfig, MLPRegressionConfig
from experiments.tasks.mlp_regression import make_batch_fn, make_task
from experiments.run import RunConfig, Task, train
from runtime import batches as batches_lib
from runtime import sharding as sharding_lib
from runtime.mesh import MeshConfig, make_mesh


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Loop overhead of ``experiments.run.train`` vs a bare jitted loop on the teacher-student MLP."""

    steps: int = 500
    """Timed steps per run (a multiple of log_every)."""
    warmup: int = 20
    """Steps before the timed span (compilation included; a multiple of log_every)."""
    hidden: int = 256
    """Student MLP width."""
    depth: int = 3
    """Student MLP hidden layers."""
    batch_size: int = 256
    """Global batch (split over the data axes of the mesh)."""
    log_every: int = 10
    """train's logging interval, and the peer's synchronisation interval."""
    mesh: MeshConfig = MeshConfig()
    repeats: int = 5
    """Runs of each loop; the reported figures are medians."""
    batch_pool: int = 64
    """Distinct host batches generated up front and cycled by both loops."""
    out: str = "runs/bench/loop_overhead.json"
    """Where the JSON result is written."""

    def __post_init__(self):
        for name in ("steps", "warmup", "hidden", "depth", "batch_size", "log_every", "repeats", "batch_pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"Config.{name}={getattr(self, name)}: must be at least 1")
        for name in ("steps", "warmup"):
            if getattr(self, name) % self.log_every:
                raise ValueError(f"Config.{name}={getattr(self, name)}: must be a multiple of log_every={self.log_every}")


class _TimedBatches:
    """A ``BatchIterator`` cycling a fixed pool of host batches and recording when each batch is requested."""

    def __init__(self, pool: list[Any]):
        self._pool = pool
        self.index = 0
        self.requested_at: list[float] = []

    def __iter__(self) -> "_TimedBatches":
        return self

    def __next__(self) -> Any:
        self.requested_at.append(time.perf_counter())
        batch = self._pool[self.index % len(self._pool)]
        self.index += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"index": self.index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])

    def rate(self, first: int, steps: int) -> float:
        """Steps per second between the requests for batch ``first`` and batch ``first + steps``."""
        return steps / (self.requested_at[first + steps] - self.requested_at[first])


def model_config(cfg: Config, out_dir: str) -> MLPRegressionConfig:
    run = RunConfig(
        out_dir=out_dir,
        steps=cfg.warmup + cfg.steps + 1,
        log_every=cfg.log_every,
        eval_every=0,
        checkpoint_every=0,
        mesh=cfg.mesh,
        progress=True,
        tensorboard=True,
        plot=False,
    )
    return MLPRegressionConfig(run=run, student=MLPConfig(hidden=cfg.hidden, depth=cfg.depth), batch_size=cfg.batch_size)


def run_ours(cfg: Config, task: Task, pool: list[Any], run_cfg: RunConfig) -> dict[str, float]:
    """One ``train`` run in a fresh directory; returns the timed rate and the metrics.jsonl cross-check."""
    data = _TimedBatches(pool)
    with tempfile.TemporaryDirectory(prefix="loop_overhead_") as tmp:
        run_cfg = dataclasses.replace(run_cfg, out_dir=str(Path(tmp) / "run"))
        with contextlib.redirect_stdout(io.StringIO()):  # train's end-of-run summary (printed after the timed span)
            train(run_cfg, dataclasses.replace(task, data=data))
        records = [json.loads(line) for line in (Path(run_cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    lo, hi = cfg.warmup, cfg.warmup + cfg.steps
    windows = [r for r in records if r["split"] == "train" and lo < r["step"] <= hi]
    jsonl_rate = len(windows) * cfg.log_every / sum(cfg.log_every / r["steps_per_second"] for r in windows)
    return {"step_per_s": data.rate(cfg.warmup, cfg.steps), "jsonl_step_per_s": jsonl_rate}


def run_peer(cfg: Config, task: Task, pool: list[Any]) -> dict[str, float]:
    """The bare loop: same jitted step, shardings and donation; device_put batches; no fetches."""
    mesh = make_mesh(cfg.mesh)
    data = _TimedBatches(pool)
    with sharding_lib.activate(mesh):
        _, shardings = task.state_spec(mesh)
        state = task.init_state(mesh)
        first = pool[0]
        batch_shardings = batches_lib.batch_shardings(first, task.batch_axes(first, 1), mesh)
        step = jax.jit(
            task.step_fn,
            in_shardings=(shardings, batch_shardings),
            out_shardings=(shardings, sharding_lib.replicated(mesh)),
            donate_argnums=0,
        )
        for i in range(cfg.warmup + cfg.steps + 1):
            state, metrics = step(state, jax.device_put(next(data), batch_shardings))
            if (i + 1) % cfg.log_every == 0:
                jax.block_until_ready((state, metrics))
        jax.block_until_ready((state, metrics))
    return {"step_per_s": data.rate(cfg.warmup, cfg.steps)}


def machine() -> dict[str, Any]:
    return {
        "device_kind": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "processor": platform.machine(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def main(cfg: Config) -> dict[str, Any]:
    model_cfg = model_config(cfg, out_dir="unused")
    task = make_task(model_cfg)
    make_batch = make_batch_fn(model_cfg, cfg.batch_size)
    pool = [make_batch(i) for i in range(cfg.batch_pool)]

    repeats = []
    for r in range(cfg.repeats):
        order = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
        result: dict[str, Any] = {"order": list(order)}
        for which in order:
            result[which] = run_ours(cfg, task, pool, model_cfg.run) if which == "ours" else run_peer(cfg, task, pool)
        repeats.append(result)

    ours = statistics.median(r["ours"]["step_per_s"] for r in repeats)
    peer = statistics.median(r["peer"]["step_per_s"] for r in repeats)
    ours_jsonl = statistics.median(r["ours"]["jsonl_step_per_s"] for r in repeats)
    info = machine()
    summary = {
        "benchmark": "loop_overhead",
        "workload": (
            f"teacher-student MLP, student hidden {cfg.hidden} depth {cfg.depth}, batch {cfg.batch_size}, "
            f"{cfg.steps} timed steps after {cfg.warmup} warm-up steps, log every {cfg.log_every}"
        ),
        "ours_step_per_s": ours,
        "peer_step_per_s": peer,
        "ratio": ours / peer,
        "ratio_text": f"{ours / peer:.1f}x",
        "ours_jsonl_step_per_s": ours_jsonl,
        "repeats": repeats,
        "config": dataclasses.asdict(cfg),
        "machine": info,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": datetime.date.today().isoformat(),
        "argv": sys.argv,
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"loop_overhead: ours {ours:.1f} step/s | peer {peer:.1f} step/s | ours/peer {ours / peer:.1f}x "
        f"(ratio {ours / peer:.3f}; median of {cfg.repeats}) | {info['device_kind']} x{info['device_count']} "
        f"devices, {info['cpu_count']} CPU cores | {out}",
        flush=True,
    )
    return summary


if __name__ == "__main__":
    main(tyro.cli(Config))
