"""Two JAX processes (4 CPU devices each) training through the shared loop equal one process with 8 devices.

The workers (``distributed_worker.py``) run ``experiments.run.train`` with ``jax.distributed`` over a local
coordinator, gloo collectives, a data=2 x fsdp=4 mesh spanning both processes, and an orbax checkpoint written by
both; meanwhile this process runs the same 2 steps on its own 2 x 4 mesh of 8 simulated devices. Final parameters,
step and logged metrics must agree, and the 2-process checkpoint must restore in one process onto another mesh.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

import experiments.tasks.mlp_regression
import experiments.run
from runtime.mesh import DistributedConfig, make_mesh

REPO = Path(__file__).resolve().parents[2]
WORKER_PATH = Path(__file__).with_name("distributed_worker.py")
NUM_PROCESSES = 2
TIMEOUT_S = 120.0
PORT_ATTEMPTS = 3

_spec = importlib.util.spec_from_file_location("distributed_worker", WORKER_PATH)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)  # as a module it only defines things (it sets XLA_FLAGS only when run as a script)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the worker sets its own device count
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Workers:
    """The worker processes of one attempt; their output goes to files (a full pipe would block a worker)."""

    def __init__(self, port: int, out_dir: Path, result: Path, log_dir: Path):
        self.port = port
        self.logs = []
        self.procs = []
        for i in range(NUM_PROCESSES):
            out, err = log_dir / f"worker{i}.out", log_dir / f"worker{i}.err"
            self.logs.append((out, err))
            with open(out, "wb") as fo, open(err, "wb") as fe:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER_PATH), "--port", str(port), "--process-id", str(i),
                         "--num-processes", str(NUM_PROCESSES), "--out-dir", str(out_dir), "--result", str(result)],
                        cwd=REPO, env=worker_env(), stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                    )
                )

    def wait(self, deadline: float) -> str | None:
        """None when every worker exited 0; otherwise why not. A failing worker ends the wait at once (its peer
        would otherwise block in a collective until the coordinator's own, much longer, timeout)."""
        while True:
            codes = [p.poll() for p in self.procs]
            if all(c == 0 for c in codes):
                return None
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                return f"worker(s) {failed} exited with {[codes[i] for i in failed]}"
            if time.monotonic() > deadline:
                return f"timed out after {TIMEOUT_S:.0f}s (exit codes {codes})"
            time.sleep(0.1)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait(timeout=30)

    def report(self) -> str:
        parts = [f"coordinator 127.0.0.1:{self.port}"]
        for i, (out, err) in enumerate(self.logs):
            for name, path in (("stdout", out), ("stderr", err)):
                text = path.read_text(errors="replace") if path.exists() else ""
                parts.append(f"--- worker {i} {name} (last 6000 chars) ---\n{text[-6000:]}")
        return "\n".join(parts)

    def port_in_use(self) -> bool:
        """Whether the coordinator (process 0) could not listen on the port: gRPC logs "Failed to add port to
        server" (the process then dies, with SIGSEGV on jax 0.10)."""
        text = " ".join(err.read_text(errors="replace") for _, err in self.logs if err.exists()).lower()
        return "failed to add port" in text or "address already in use" in text


def single_process_run(out_dir: Path):
    """The same 2 steps in this process (8 devices, mesh 2 x 4): (summary, {path: params}, step)."""
    cfg = worker.make_config(str(out_dir), DistributedConfig())
    task = experiments.tasks.mlp_regression.make_task(cfg)
    summary = experiments.run.train(cfg.run, task)
    state = worker.restore_final_state(cfg, task, make_mesh(cfg.run.mesh))
    return summary, worker.flatten(jax.device_get(state.params)), int(state.step)


def test_two_processes_match_one_process(tmp_path):
    single_dir = tmp_path / "single"
    deadline = time.monotonic() + TIMEOUT_S
    workers, failure, single = None, None, None
    try:
        for attempt in range(PORT_ATTEMPTS):
            # free_port() releases the port before the coordinator binds it, so another program may take it in
            # between: then start again on a fresh port, in a fresh directory.
            attempt_dir = tmp_path / f"distributed_{attempt}"
            attempt_dir.mkdir()
            dist_dir, result = attempt_dir / "run", attempt_dir / "params.npz"
            workers = Workers(free_port(), dist_dir, result, attempt_dir)
            if single is None:
                single = single_process_run(single_dir)  # overlaps with the workers
            failure = workers.wait(deadline)
            if failure is None or not workers.port_in_use():
                break
            workers.kill()
        assert failure is None, f"distributed run failed: {failure}\n{workers.report()}"
    finally:
        if workers is not None:
            workers.kill()

    single_summary, single_params, single_step = single
    with np.load(result) as npz:
        dist_params = {k: npz[k] for k in npz.files if k != "__step__"}
        dist_step = int(npz["__step__"])

    # Same parameters, leaf by leaf.
    assert sorted(dist_params) == sorted(single_params)
    assert len(dist_params) == 6  # 3 Linear layers x (kernel, bias)
    for key, expected in single_params.items():
        np.testing.assert_allclose(dist_params[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
    assert dist_step == single_step == worker.STEPS

    # Same step count and logged metrics (process 0 writes the summary).
    dist_summary = json.loads((dist_dir / "summary.json").read_text())
    assert dist_summary["steps_done"] == single_summary.steps_done == worker.STEPS
    assert dist_summary["stopped"] == single_summary.stopped == "completed"
    for split in ("train_metrics", "eval_metrics"):
        single_metrics = getattr(single_summary, split)
        assert "loss" in single_metrics, single_metrics
        for key, value in single_metrics.items():
            if key != "steps_per_second":
                np.testing.assert_allclose(dist_summary[split][key], value, rtol=1e-5, err_msg=f"{split}/{key}")

    # The checkpoint both processes wrote together restores here, in one process, onto another mesh (fsdp=8).
    cfg = worker.make_config(str(dist_dir), DistributedConfig())
    task = experiments.tasks.mlp_regression.make_task(cfg)
    restored = worker.restore_final_state(cfg, task, make_mesh({"fsdp": 8}))
    assert int(restored.step) == worker.STEPS
    restored_params = worker.flatten(jax.device_get(restored.params))
    for key, value in dist_params.items():
        np.testing.assert_array_equal(restored_params[key], value, err_msg=key)
