"""What the loop writes into a run directory besides checkpoints: the lock that keeps a second run out, and the
metrics logs (JSONL and TensorBoard), which always describe one run's steps once each; ``standard_json`` for every
JSON file written there, and ``LaunchConfig``, the run directory and mesh of a launcher that does not train.

The lock is an advisory ``flock`` on ``<out_dir>/run.lock``, held by process 0 for the whole run; the kernel drops
it when the process ends however it ends (kill -9 included), so a stale lock file never blocks a resume. Logs: a
fresh run starts them empty; a resumed run keeps the rows up to the step it restored and drops those of steps it
is about to run again (a run killed after step 130 whose latest checkpoint is step 100 logged 101-130 once
already), and TensorBoard is told to purge its events from that step on.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from runtime.errors import RuntimeConfigError
from runtime.mesh import MeshConfig

LOCK_NAME = "run.lock"
METRICS_NAME = "metrics.jsonl"


def standard_json(value, **kwargs) -> str:
    """``json.dumps`` that any JSON parser reads back: a NaN or infinite float (a metric of a diverged run written
    with the NaN guard off, a standard error of one item) becomes null rather than the non-standard ``NaN``."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, **kwargs)


class RunDirectoryBusy(RuntimeConfigError):
    """Another process holds the run directory's lock."""


class RunDirectoryLock:
    """Exclusive use of ``out_dir`` while the context is open (a no-op where ``enabled`` is False)."""

    def __init__(self, out_dir: Path, enabled: bool = True):
        self.path = Path(out_dir) / LOCK_NAME
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> "RunDirectoryLock":
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirectoryBusy(f"{self.path.parent} is in use by {holder}; wait for that run to end, or choose "
                                   "another --run.out-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def keep_rows_up_to(path: Path, step: int) -> int:
    """Rewrites the JSONL log at ``path`` (atomically) without its rows after ``step``; returns how many went.
    A line that is not a JSON object with a step (a write cut short by a kill) goes too."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and record["step"] <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    return dropped


class MetricsLog:
    """JSONL + TensorBoard on process 0 (nothing elsewhere). ``resumed_from``: the step a resumed run restored
    (rows up to it are kept, later ones dropped), or None for a fresh run (the log starts empty)."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, resumed_from: int | None = None):
        self.enabled = enabled
        self.jsonl = None
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resumed_from is None:
            (out_dir / METRICS_NAME).unlink(missing_ok=True)
        else:
            keep_rows_up_to(out_dir / METRICS_NAME, resumed_from)
        self.jsonl = open(out_dir / METRICS_NAME, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            # Readers drop every earlier event file's events from purge_step on (all of them for a fresh run).
            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resumed_from or 0)

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, "time": time.time(), **values}
        self.jsonl.write(standard_json(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{split}/{key}", value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaunchConfig:
    """Where a launcher that does not train writes and the mesh it runs on: the same ``--run.out-dir`` and
    ``--run.mesh.*`` flags as a training run's ``RunConfig``."""

    out_dir: str = "runs/run"
    mesh: MeshConfig = MeshConfig(data=1, fsdp=-1)
    """Model weights are split over fsdp (a 7B model does not fit one device); batches over data and fsdp."""
    resume: bool = False
    """Continue the run in ``out_dir`` (an evaluation skips the prompts it has finished)."""
