"""The one training loop every launcher uses.

``train(cfg, task)`` builds the mesh, initialises or restores the sharded train state, and runs the task's pure
step under ``jax.jit`` with explicit in/out shardings and a donated state. Around it: gradient-accumulation
batch layout, a progress bar (step/s and the main metrics), metrics as JSONL and TensorBoard events, periodic
evaluations, checkpoints every N steps and on SIGTERM/SIGINT, ``--resume``, a NaN/Inf guard, a final summary
and a plot of the logged metrics.

Metrics of step t are fetched after step t+1 has been dispatched, so the host never stalls the device
pipeline; they are always fetched (and checked) before a checkpoint is written, so a checkpoint never holds a
state reached through a non-finite loss.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import tyro
from tqdm.auto import tqdm

from experiments.config_file import (config_class, out_dir_of, read_config_file, split_config_flag,
                                     to_jsonable, write_config)
from experiments.run_dir import MetricsLog, RunDirectoryLock, standard_json
from runtime import batches as batches_lib
from runtime import metrics as metrics_lib
from runtime import sharding as sharding_lib
from runtime.checkpoint import Checkpointer
from runtime.errors import RuntimeConfigError, UnreadableCheckpointError
from runtime.finite import first_nonfinite
from runtime.mesh import DistributedConfig, MeshConfig, initialize_distributed, make_mesh
from runtime.precision import Precision, PrecisionWarning, unresolved_summary, update_resolution
from runtime.train_state import TrainState, leaf_paths


class RunError(RuntimeConfigError):
    """The run cannot start or continue as configured (e.g. an existing run directory without --resume)."""


class NonFiniteMetricError(FloatingPointError):
    """A logged metric became NaN or Inf; the message names the step and the metric."""


class NonFiniteStateError(NonFiniteMetricError):
    """The state about to be checkpointed holds NaN or Inf (an update that overflowed while the metrics, computed
    before it, were still finite); the message names the step and the first bad leaf."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Loop settings shared by every launcher."""

    out_dir: str = "runs/run"
    """Directory for checkpoints, metrics.jsonl, TensorBoard events, summary.json and plots."""
    steps: int = 100
    """Total optimizer steps (a resumed run continues up to this number)."""
    grad_accum: int = 1
    """Micro-batches per step; the global batch is split into this many and the gradients are summed."""
    log_every: int = 10
    eval_every: int = 0
    """Run the evaluations every N steps (0: only at the end)."""
    checkpoint_every: int = 0
    """Checkpoint every N steps (0: only at the end and on a signal)."""
    keep_checkpoints: int = 3
    resume: bool = False
    """Continue from the latest checkpoint in out_dir."""
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    distributed: DistributedConfig = DistributedConfig()
    precision: Precision = Precision()
    """Trained weights as float32 masters (a bfloat16 model gets a bfloat16 copy for each step's forward pass)."""
    nan_guard: bool = True
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True
    async_checkpoint: bool = True

    def __post_init__(self):
        for name in ("steps", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise RunError(f"RunConfig.{name}={getattr(self, name)}: must be at least 1")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise RunError(f"RunConfig.{name}={getattr(self, name)}: must be 0 (off) or positive")


Evaluation = Callable[[TrainState], Mapping[str, float]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    """What a launcher hands the loop. Everything but ``data`` is pure.

    ``state_spec(mesh)`` returns (abstract state, shardings) without allocating; ``init_state(mesh)`` returns
    the initialised state on those shardings; ``step_fn(state, batch) -> (state, metrics)`` is jitted by the
    loop; ``data`` yields global host batches and has a restorable position; ``batch_axes`` maps a batch (as
    split for accumulation) to the logical axes of its leaves. ``frozen_params(mesh)``, when given, rebuilds the
    parameters from their source (only its frozen leaves are used): checkpoints then hold the trainable
    parameters alone, and resuming takes the frozen ones from it (checked against checksums).
    """

    name: str
    state_spec: Callable[[jax.sharding.Mesh], tuple[TrainState, TrainState]]
    init_state: Callable[[jax.sharding.Mesh], TrainState]
    step_fn: Callable[[TrainState, Any], tuple[TrainState, Mapping[str, metrics_lib.Metric]]]
    data: batches_lib.BatchIterator
    evals: Sequence[Evaluation] = ()
    batch_axes: Callable[[Any, int], Any] = batches_lib.batch_axes
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    main_metrics: Sequence[str] = ("loss",)
    frozen_params: Callable[[jax.sharding.Mesh], Any] | None = None
    peak_update: float | None = None
    """The first steps' typical update of a trained weight (the peak learning rate, for Adam-type optimizers):
    the loop warns at start-up when the trained parameters' dtype cannot resolve it."""
    launcher_config: Any = None
    """The launcher's config as parsed, written to ``<out_dir>/config.json`` when the run starts (readable back
    with ``--config``); None: ``config``."""


def _warn_on_unresolved_updates(task: Task, state: TrainState, is_main: bool) -> None:
    report = update_resolution(state.params, state.trainable, task.peak_update, leaf_paths(state.params))
    text = unresolved_summary(report)
    if text is not None and is_main:
        warnings.warn(f"[{task.name}] {text}", PrecisionWarning, stacklevel=3)


def jit_train_step(step_fn: Callable, shardings: TrainState, batch_shardings: Any, mesh) -> Callable:
    """The jitted step the loop runs: explicit state and batch shardings, replicated metrics, the state donated.
    ``experiments.plan`` compiles this same function for accelerators."""
    return jax.jit(step_fn, in_shardings=(shardings, batch_shardings),
                   out_shardings=(shardings, sharding_lib.replicated(mesh)), donate_argnums=0)


def checkpointer_for(task: Task, directory: str, **kwargs) -> Checkpointer:
    """The run's checkpointer: without the frozen parameters when the task can rebuild them."""
    return Checkpointer(directory, frozen_params=task.frozen_params is None, **kwargs)


def restore_state(checkpointer: Checkpointer, task: Task, mesh, step: int | None = None, spec=None,
                  frozen: Callable[[], Any] | None = None):
    """(state, meta) of checkpoint ``step`` (default: the latest) on the task's shardings for ``mesh``; ``spec``
    is ``task.state_spec(mesh)`` when the caller already has it, ``frozen`` a memo of ``task.frozen_params(mesh)``."""
    abstract, shardings = task.state_spec(mesh) if spec is None else spec
    frozen_params = None
    if not checkpointer.holds_frozen_params(step):
        if task.frozen_params is None:
            raise RunError(f"{checkpointer.directory} holds only trainable parameters and task {task.name!r} "
                           "cannot rebuild the frozen ones (Task.frozen_params)")
        frozen_params = frozen() if frozen is not None else task.frozen_params(mesh)
    return checkpointer.restore(abstract, shardings, step=step, frozen=frozen_params)


def restore_latest_intact(checkpointer: Checkpointer, task: Task, mesh, spec=None,
                          report: Callable[[str], None] = print):
    """(state, meta) of the newest checkpoint that reads back as it was written. Newer ones that cannot be read
    (a truncated or altered file) are reported and moved aside (``Checkpointer.quarantine``); when none can be
    read, an ``UnreadableCheckpointError`` says why for each and nothing is moved."""
    frozen = functools.cache(lambda: task.frozen_params(mesh))
    failures: list[tuple[int, UnreadableCheckpointError]] = []
    for step in reversed(checkpointer.all_steps()):
        try:
            state, meta = restore_state(checkpointer, task, mesh, step=step, spec=spec, frozen=frozen)
        except UnreadableCheckpointError as e:
            failures.append((step, e))
            continue
        for bad, error in failures:
            aside = checkpointer.quarantine(bad)
            report(f"[{task.name}] {error}; moved it to {aside} and resumed from step {step}")
        return state, meta
    reasons = "; ".join(str(e) for _, e in failures)
    raise UnreadableCheckpointError(f"no checkpoint in {checkpointer.directory} can be restored ({reasons}); start "
                                    "afresh with another --run.out-dir, or move the checkpoints aside")


@dataclasses.dataclass(frozen=True)
class RunSummary:
    out_dir: str
    steps_done: int
    stopped: str  # "completed" | "signal"
    wall_seconds: float
    steps_per_second: float
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    checkpoint: str | None
    plot: str | None


class _StopFlag:
    """SIGTERM/SIGINT set a flag the loop checks between steps; a second SIGINT interrupts at once."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_finite(step: int, values: Mapping[str, metrics_lib.Metric], checkpointer: Checkpointer) -> None:
    # A metric with count 0 (e.g. a pair type absent from this batch) has no value rather than a bad one: only its
    # total is checked, and a non-finite total is caught whatever the count.
    for key, metric in values.items():
        value = float(metric.total) / float(metric.count) if float(metric.count) else float(metric.total)
        if not math.isfinite(value):
            raise NonFiniteMetricError(
                f"step {step}: metric {key!r} is {value}; training stopped before any checkpoint of this state "
                f"was written (latest checkpoint: step {checkpointer.latest_step()})"
            )


# Fields that say how this invocation starts, not what the run is: a resume always differs in them.
INVOCATION_FIELDS = ("resume",)


def _differences(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if key in INVOCATION_FIELDS:
                continue
            where = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{where} (new) = {new[key]!r}")
            elif key not in new:
                out.append(f"{where} (gone, was {old[key]!r})")
            else:
                out += _differences(old[key], new[key], where)
        return out
    return [] if old == new else [f"{path or 'config'} {old!r} -> {new!r}"]


def config_differences(old: Any, new: Any, most: int = 8) -> str:
    """The fields in which a checkpoint's stored config and this run's differ ("" if none), e.g.
    ``steps 100 -> 200, optimizer.learning_rate 0.001 -> 0.002``; ``run.resume`` and the like are not counted."""
    if old is None:
        return ""
    diffs = _differences(old, new, "")
    more = f", and {len(diffs) - most} more" if len(diffs) > most else ""
    return ", ".join(diffs[:most]) + more


def train(cfg: RunConfig, task: Task) -> RunSummary:
    """Runs ``task`` for ``cfg.steps`` steps (or resumes it) and returns the summary. The run directory is locked
    for the whole run (``RunDirectoryBusy`` when another run holds it)."""
    initialize_distributed(cfg.distributed)
    mesh = make_mesh(cfg.mesh)
    out_dir = Path(cfg.out_dir).absolute()
    is_main = jax.process_index() == 0
    with RunDirectoryLock(out_dir, enabled=is_main):
        return _train_locked(cfg, task, mesh, out_dir, is_main)


def _train_locked(cfg: RunConfig, task: Task, mesh, out_dir: Path, is_main: bool) -> RunSummary:
    checkpointer = checkpointer_for(task, str(out_dir / "checkpoints"), keep=cfg.keep_checkpoints,
                                    async_save=cfg.async_checkpoint)
    config_json = to_jsonable(task.config)

    latest = checkpointer.latest_step()
    if latest is not None and not cfg.resume:
        raise RunError(
            f"{checkpointer.directory} already holds a checkpoint (step {latest}); pass --run.resume to continue "
            "that run, or choose another --run.out-dir"
        )
    with sharding_lib.activate(mesh):
        if latest is not None:
            spec = task.state_spec(mesh)
            shardings = spec[1]
            state, meta = restore_latest_intact(checkpointer, task, mesh, spec=spec,
                                                report=tqdm.write if is_main else lambda _: None)
            task.data.set_state(meta["data"])
            changed = config_differences(meta.get("config"), config_json)
            if changed and is_main:
                tqdm.write(f"[{task.name}] resuming with a config that differs from the checkpoint's: {changed}")
        else:
            _, shardings = task.state_spec(mesh)
            state = task.init_state(mesh)
    if task.peak_update:
        _warn_on_unresolved_updates(task, state, is_main)

    start = int(jax.device_get(state.step))
    if is_main:
        write_config(task.config if task.launcher_config is None else task.launcher_config, out_dir)
    writers = MetricsLog(out_dir, is_main, cfg.tensorboard, resumed_from=None if latest is None else start)
    window = metrics_lib.HostAccumulator()
    last_train: dict[str, float] = {}
    eval_values: dict[str, float] = {}
    step_jit = None
    batch_shardings = None
    stopped = "completed"
    t_start = time.perf_counter()
    t_window, window_steps = t_start, 0

    def meta() -> dict[str, Any]:
        return {"data": task.data.get_state(), "config": config_json, "task": task.name}

    def save(step_number: int) -> None:
        # The metrics are computed before the update, so they cannot vouch for the state the update made.
        leaf = first_nonfinite(state) if cfg.nan_guard else None
        if leaf is not None:
            raise NonFiniteStateError(
                f"step {step_number}: the state to checkpoint holds a non-finite value (first in {leaf}); training "
                f"stopped before it was written (latest checkpoint: step {checkpointer.latest_step()})"
            )
        checkpointer.save(state, meta(), step=step_number)

    def flush(pending) -> None:
        nonlocal window_steps
        step_number, device_metrics = pending
        values = jax.device_get(device_metrics)
        window.add(values)
        window_steps += 1
        if cfg.nan_guard:
            _check_finite(step_number, values, checkpointer)

    def log(step_number: int) -> None:
        nonlocal t_window, window_steps, last_train
        if not window:
            return
        now = time.perf_counter()
        last_train = window.means()
        last_train["steps_per_second"] = window_steps / max(now - t_window, 1e-9)
        writers.write(step_number, "train", last_train)
        pbar.set_postfix({k: f"{last_train[k]:.4g}" for k in task.main_metrics if k in last_train})
        window.reset()
        t_window, window_steps = now, 0

    def evaluate(step_number: int) -> None:
        nonlocal eval_values
        values: dict[str, float] = {}
        with sharding_lib.activate(mesh):
            for evaluation in task.evals:
                values.update({k: float(v) for k, v in evaluation(state).items()})
        if values:
            eval_values = values
            writers.write(step_number, "eval", values)
            if is_main:
                tqdm.write(f"[{task.name}] step {step_number} eval " + " ".join(f"{k}={v:.4g}" for k, v in values.items()))

    pbar = tqdm(
        total=cfg.steps, initial=start, unit="step", desc=task.name, disable=not (cfg.progress and is_main),
        dynamic_ncols=True,
    )
    pending = None
    done = start
    try:
        with _StopFlag() as stop:
            for step_index in range(start, cfg.steps):
                host_batch = batches_lib.split_microbatches(next(task.data), cfg.grad_accum)
                if step_jit is None:
                    axes = task.batch_axes(host_batch, cfg.grad_accum)
                    batch_shardings = batches_lib.batch_shardings(host_batch, axes, mesh)
                    step_jit = jit_train_step(task.step_fn, shardings, batch_shardings, mesh)
                batch = batches_lib.put_batch(host_batch, batch_shardings)
                with sharding_lib.activate(mesh):
                    state, device_metrics = step_jit(state, batch)
                if pending is not None:
                    flush(pending)
                pending = (step_index + 1, device_metrics)
                done = step_index + 1
                pbar.update(1)
                save_now = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
                if save_now or done % cfg.log_every == 0 or stop.signal_name:
                    flush(pending)
                    pending = None
                if done % cfg.log_every == 0:
                    log(done)
                if save_now:
                    save(done)
                if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                    evaluate(done)
                if stop.signal_name:
                    stopped = "signal"
                    if is_main:
                        tqdm.write(f"[{task.name}] {stop.signal_name} at step {done}: checkpointing and stopping")
                    break
            if pending is not None:
                flush(pending)
                pending = None
            log(done)
            save(done)
            checkpointer.wait()
            if stopped == "completed":
                evaluate(done)
    finally:
        pbar.close()
        writers.close()
        checkpointer.close()

    wall = time.perf_counter() - t_start
    plot_path = None
    if is_main and cfg.plot:
        from experiments.plots import plot_metrics

        plot_path = plot_metrics(out_dir / "metrics.jsonl", out_dir / "metrics.png")
    summary = RunSummary(
        out_dir=str(out_dir),
        steps_done=done,
        stopped=stopped,
        wall_seconds=wall,
        steps_per_second=(done - start) / max(wall, 1e-9),
        train_metrics=last_train,
        eval_metrics=eval_values,
        checkpoint=f"{checkpointer.directory}/{done}",
        plot=None if plot_path is None else str(plot_path),
    )
    if is_main:
        (out_dir / "summary.json").write_text(standard_json(dataclasses.asdict(summary), indent=2) + "\n")
        print(format_summary(task.name, summary), flush=True)
    return summary


def format_summary(name: str, s: RunSummary) -> str:
    lines = [
        f"[{name}] {s.stopped} at step {s.steps_done} in {s.wall_seconds:.1f}s ({s.steps_per_second:.2f} step/s)",
        "  train: " + " ".join(f"{k}={v:.4g}" for k, v in s.train_metrics.items()),
    ]
    if s.eval_metrics:
        lines.append("  eval:  " + " ".join(f"{k}={v:.4g}" for k, v in s.eval_metrics.items()))
    lines.append(f"  run directory: {s.out_dir}")
    lines.append(f"  checkpoint:    {s.checkpoint}")
    if s.plot:
        lines.append(f"  plot:          {s.plot}")
    return "\n".join(lines)


# Exit statuses of a launcher (README, "Failure behaviour"). 75 is sysexits' EX_TEMPFAIL: try again later, which
# is what a scheduler should do with a run stopped by a signal after its checkpoint.
EXIT_COMPLETED = 0
EXIT_REFUSED = 2
EXIT_DIVERGED = 3
EXIT_STOPPED = 75


def _upgrade_out_dir(arg: str) -> str:
    """``--out-dir`` of earlier versions is every launcher's ``--run.out-dir`` now (with a deprecation line)."""
    flag, sep, value = arg.partition("=")
    if flag not in ("--out-dir", "--out_dir"):
        return arg
    print(f"warning: {flag} is deprecated: use --run.out-dir", file=sys.stderr, flush=True)
    return "--run.out-dir" + sep + value


def cli(config_type: type, main: Callable[[Any], Any], expected_errors: tuple[type[BaseException], ...] = (),
        args: Sequence[str] | None = None, upgrade: Callable[[list[str]], list[str]] | None = None,
        writes_config: bool = False) -> Any:
    """Parses ``config_type`` from the command line (tyro), or from ``--config FILE`` (JSON/YAML; later flags
    override it), and runs ``main``. A launcher that does not train writes its resolved config to
    ``<out_dir>/config.json`` here; ``train`` writes a training run's.

    A multi-host run (``cfg.run.distributed``) is started before ``main`` runs. Configuration and data errors
    (``RuntimeConfigError`` and the launcher's ``expected_errors``) end the process with a one-line message and exit
    status ``EXIT_REFUSED``, the NaN guard with ``EXIT_DIVERGED``, instead of a traceback; a run that ``main``
    reports as stopped by a signal (``stopped == "signal"``, after its checkpoint) exits with ``EXIT_STOPPED``.
    ``args``: the command line to parse (default: ``sys.argv[1:]``); ``upgrade`` rewrites (or refuses, with the
    launcher's error) flags of earlier versions before parsing; ``writes_config``: the launcher writes its
    config.json itself, once it knows the run directory is its to write (an evaluation refused there does not
    overwrite the record of the one it found).
    """
    description = sys.modules[main.__module__].__doc__
    try:
        argv = [_upgrade_out_dir(a) for a in (sys.argv[1:] if args is None else args)]
        config_path, rest = split_config_flag(upgrade(argv) if upgrade is not None else argv)
        if config_path is not None:
            cls = config_class(config_type)
            cfg = tyro.cli(cls, args=rest, default=read_config_file(config_path, cls), description=description)
        else:
            cfg = tyro.cli(config_type, args=rest, description=description)
    except (RuntimeConfigError, *expected_errors) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_REFUSED)
    run_cfg = getattr(cfg, "run", None)
    if isinstance(run_cfg, RunConfig):
        # Launchers may compute while building their Task (a teacher, an eval set); jax.distributed must
        # start before any of that touches a backend.
        initialize_distributed(run_cfg.distributed)
    elif out_dir_of(cfg) and not writes_config and jax.process_index() == 0:
        # A training run writes its config.json once it holds its directory (train); other launchers here.
        write_config(cfg, out_dir_of(cfg))
    try:
        result = main(cfg)
    except NonFiniteMetricError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_DIVERGED)
    except (RuntimeConfigError, *expected_errors) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_REFUSED)
    if getattr(result, "stopped", None) == "signal":
        sys.exit(EXIT_STOPPED)
    return result
