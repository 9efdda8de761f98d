"""Plan a run on TPUs or GPUs without them: compile a launcher's real step for a target and project its cost.

    python -m experiments.plan --launcher bfpo_train --preset mistral-7b --target tpu-v5p-8 \\
        [--mesh.data 1 --mesh.fsdp 4 --mesh.tensor 1] [--json plan.json] [--hlo-out step.hlo] \\
        [-- <the launcher's own flags, e.g. --max-length 4096 --buckets 4096>]

The launcher builds the step it runs (``experiments.run.jit_train_step`` with the preset's shapes, dtypes, remat
policy, shardings and donation) on abstract parameters (``jax.eval_shape``: no weights are read) and abstract
batches; it is compiled by the target's own compiler (libtpu for TPUs, the CUDA plugin for H100/H200) on its
compile-only devices (``runtime.accelerators``). Reported, per device:

* memory: argument / output / alias / temp bytes from the compiled program, their total (argument + output -
  alias + temp) against the chip's HBM, and when it does not fit the largest arguments and values, then the
  memory of each alternative the launcher offers (more fsdp, remat, micro-batches, query chunks), compiled too;
* FLOPs per step counted on the step's jaxpr with every loop iteration counted (``runtime.flops``; XLA's own
  cost analysis counts a loop body once, and the GPU compiler gives none), and the model FLOPs of the same step
  without rematerialisation (what MFU is quoted in);
* HBM bytes and collective bytes per step from the compiled HLO, loops counted (``runtime.hlo_stats``);
* a roofline step time, max(FLOPs / peak, HBM bytes / bandwidth, collective wire bytes / link bandwidth), and
  the tokens (or examples) per second and MFU it implies.

Every time, throughput and MFU figure is a projection from the compiler's program and the chip's published
figures, not a measurement; ``experiments/bench/device_check.sh`` measures them on a GPU.
"""

from __future__ import annotations

import os

# The planner computes nothing on a device: keep JAX on the CPU even where accelerator plugins are installed.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402

from experiments.planning import LAUNCHERS, NOT_PLANNED, LauncherPlan, PlanError, Program  # noqa: E402
from experiments.planning import launcher_plan  # noqa: E402
from runtime import sharding as sharding_lib  # noqa: E402
from runtime.accelerators import GiB, TARGETS, Target, compile_only_devices, get_target  # noqa: E402
from runtime.errors import RuntimeConfigError  # noqa: E402
from runtime.flops import count_flops  # noqa: E402
from runtime.hlo_stats import hlo_stats  # noqa: E402
from runtime.mesh import MESH_AXES, MeshConfig, make_mesh, resolve_axis_sizes  # noqa: E402

def target_mesh(target: Target, mesh_cfg: MeshConfig) -> jax.sharding.Mesh:
    devices = compile_only_devices(target.name)
    resolve_axis_sizes(mesh_cfg.as_dict(), len(devices))  # a one-line MeshError when it does not match
    return make_mesh(mesh_cfg, devices, whole_topology=True)


def _shard_bytes(x: jax.ShapeDtypeStruct) -> int:
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    return math.prod(shape) * x.dtype.itemsize


def _largest_arguments(program: Program, top: int) -> list[dict[str, Any]]:
    rows = []
    for name, arg in zip(program.arg_names, program.args):
        for path, leaf in jax.tree_util.tree_flatten_with_path(arg)[0]:
            rows.append({"bytes": _shard_bytes(leaf), "shape": f"{leaf.dtype}{list(leaf.shape)}",
                         "name": name + jax.tree_util.keystr(path, simple=True, separator="/")})
    rows.sort(key=lambda r: -r["bytes"])
    return rows[:top]


def argument_bytes(program: Program) -> int:
    """Per-device bytes of the program's arguments, from their shardings (independent of the compiler)."""
    return sum(_shard_bytes(leaf) for leaf in jax.tree.leaves(program.args))


# Compiling for a GPU that is not attached cannot autotune, and XLA's Triton GEMM emitter then fails to tile some
# small products ("Couldn't find output tile sizes"); those programs are compiled with cuBLAS GEMMs instead.
GPU_FALLBACK_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def compile_program(program: Program, mesh) -> tuple[Any, float, float, dict]:
    """(compiled, lowering seconds, compile seconds, compiler options that were needed)."""
    t0 = time.perf_counter()
    with sharding_lib.activate(mesh):
        lowered = program.fn.lower(*program.args)
    t1 = time.perf_counter()
    options: dict = {}
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "tile sizes" not in str(e):
            raise
        options = dict(GPU_FALLBACK_OPTIONS)
        compiled = lowered.compile(compiler_options=options)
    return compiled, t1 - t0, time.perf_counter() - t1, options


def memory_of(compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    mem = {"argument": int(stats.argument_size_in_bytes), "output": int(stats.output_size_in_bytes),
           "alias": int(stats.alias_size_in_bytes), "temp": int(stats.temp_size_in_bytes)}
    mem["total"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
    return mem


def flops_of(program: Program, mesh) -> Any:
    with sharding_lib.activate(mesh):
        return count_flops(program.fn, *program.args, unknown_trips=program.unknown_trips)


def roofline(target: Target, flops: float, hbm_bytes: float, wire_by_group: dict[int, float]) -> dict[str, float]:
    """Projected seconds per step on one chip: each resource at its published peak, perfectly overlapped."""
    per_host = target.chips // target.hosts
    comm = 0.0
    for group, wire in wire_by_group.items():
        slow = target.cross_host_bandwidth and group > per_host
        comm += wire / (target.cross_host_bandwidth if slow else target.interconnect_bandwidth)
    terms = {"compute_s": flops / target.peak_bf16_flops, "memory_s": hbm_bytes / target.hbm_bandwidth,
             "collective_s": comm}
    terms["step_s"] = max(terms.values())
    terms["bound"] = max(("compute_s", "memory_s", "collective_s"), key=lambda k: terms[k]).removesuffix("_s")
    return terms


def plan(launcher: str, preset: str, target_name: str, launcher_args: list[str] | tuple[str, ...] = (), *,
         mesh: MeshConfig | None = None, advice: bool = True, hlo_out: str | None = None,
         model_flops: bool = True) -> dict[str, Any]:
    """The planner's report (a JSON-able dict) for one launcher preset on one target."""
    spec = launcher_plan(launcher)
    if preset not in spec.presets:
        raise PlanError(f"launcher {launcher} has no preset {preset!r}; its presets: {', '.join(spec.presets)}")
    target = get_target(target_name)
    cfg = spec.parse(preset, list(launcher_args))
    if mesh is not None and spec.with_mesh is not None:
        cfg = spec.with_mesh(cfg, mesh)
    mesh_cfg = mesh if mesh is not None and spec.with_mesh is None else spec.mesh_of(cfg)
    device_mesh = target_mesh(target, mesh_cfg)
    sizes = dict(device_mesh.shape)
    n = device_mesh.size
    program = spec.program(cfg, device_mesh)
    try:
        compiled, lower_s, compile_s, options = compile_program(program, device_mesh)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return refused_report(launcher, preset, launcher_args, program, target, sizes, str(e), spec, cfg, advice,
                              mesh_cfg, n)
    memory = memory_of(compiled)
    text = compiled.as_text()
    if hlo_out:
        Path(hlo_out).parent.mkdir(parents=True, exist_ok=True)
        Path(hlo_out).write_text(text)
    traffic = hlo_stats(text, n, unknown_trips=program.unknown_trips)
    counted = flops_of(program, device_mesh)
    if model_flops:
        model = flops_of(spec.program(spec.without_remat(cfg), device_mesh), device_mesh)
    else:
        model = counted
    flops_dev, model_dev = counted.total / n, model.total / n
    time_terms = roofline(target, flops_dev, traffic.bytes, traffic.wire_bytes_by_group)
    step_s = time_terms["step_s"]
    xla_cost = compiled.cost_analysis() or {}
    report: dict[str, Any] = {
        "kind": "projection",
        "launcher": launcher, "preset": preset, "launcher_args": list(launcher_args), "program": program.name,
        "target": dataclasses.asdict(target), "mesh": sizes,
        "memory": {**memory, "device_hbm": target.hbm_bytes, "fits": memory["total"] <= target.hbm_bytes,
                   "argument_bytes_from_shardings": argument_bytes(program)},
        "flops": {"per_device": flops_dev, "model_per_device": model_dev, "global": counted.total,
                  "model_global": model.total, "unknown_trip_loops": counted.unknown_trip_loops,
                  "unknown_trip_loops_counted": program.unknown_trips,
                  "method": "dot_general + conv FLOPs counted on the step's jaxpr, every scan iteration counted",
                  "xla_cost_analysis_flops": xla_cost.get("flops"),
                  "xla_note": "XLA counts each while-loop body once"},
        "traffic": {**traffic.as_dict(), "xla_cost_analysis_bytes": xla_cost.get("bytes accessed")},
        "roofline": time_terms,
        "work_per_step": dict(program.work),
        "projected": {"step_s": step_s,
                      **{f"{k}_per_s": v / step_s for k, v in program.work.items()},
                      "mfu": model_dev / (step_s * target.peak_bf16_flops) if step_s else 0.0},
        "compile": {"lower_s": lower_s, "compile_s": compile_s, "compiler_options": options},
    }
    if not report["memory"]["fits"]:
        report["largest_arguments"] = _largest_arguments(program, 6)
        if advice:
            report["alternatives"] = alternatives(spec, cfg, target, sizes, mesh_cfg)
    return report


def refused_report(launcher, preset, launcher_args, program: Program, target: Target, sizes, message: str, spec,
                   cfg, advice: bool, mesh_cfg: MeshConfig, n: int) -> dict[str, Any]:
    """The TPU compiler refuses a program that does not fit its HBM: report that, its message (which names the
    largest allocations) and the FLOPs, which need no compiled program."""
    counted = flops_of(program, target_mesh(target, mesh_cfg))
    lines = [line for line in message.splitlines() if line.strip()]
    report: dict[str, Any] = {
        "kind": "projection", "launcher": launcher, "preset": preset, "launcher_args": list(launcher_args),
        "program": program.name, "target": dataclasses.asdict(target), "mesh": sizes,
        "memory": {"fits": False, "compiler_refused": True, "compiler_message": "\n".join(lines[:40]),
                   "device_hbm": target.hbm_bytes, "argument_bytes_from_shardings": argument_bytes(program)},
        "flops": {"per_device": counted.total / n, "global": counted.total},
        "work_per_step": dict(program.work),
        "largest_arguments": _largest_arguments(program, 6),
    }
    if advice:
        report["alternatives"] = alternatives(spec, cfg, target, sizes, mesh_cfg)
    return report


def alternatives(spec: LauncherPlan, cfg: Any, target: Target, sizes: dict[str, int],
                 mesh_cfg: MeshConfig) -> list[dict[str, Any]]:
    """Compile each memory-saving variant the launcher offers; report its per-device total and whether it fits."""
    rows = []
    for label, variant in spec.alternatives(cfg, sizes):
        try:
            device_mesh = target_mesh(target, spec.mesh_of(variant) if spec.with_mesh else mesh_cfg)
            program = spec.program(variant, device_mesh)
            memory = memory_of(compile_program(program, device_mesh)[0])
            rows.append({"change": label, "total": memory["total"], "fits": memory["total"] <= target.hbm_bytes})
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            rows.append({"change": label, "fits": False, "compiler": _oom_line(str(e))})
        except (RuntimeConfigError, ValueError) as e:
            rows.append({"change": label, "error": str(e).splitlines()[0]})
    return rows


def _oom_line(message: str) -> str:
    """The compiler's one-line statement of how much it needed."""
    for line in message.splitlines():
        if "exceeds" in line or "Ran out of memory" in line or "Exceeded" in line:
            return line.strip().removeprefix("jax.errors.JaxRuntimeError: ")[:300]
    return message.splitlines()[0][:300]


def _gib(x: float) -> str:
    return f"{x / GiB:.2f} GiB" if abs(x) >= GiB / 10 else f"{x / (1 << 20):.2f} MiB"


def _format_alternatives(r: dict[str, Any], total: float | None) -> list[str]:
    lines = []
    for alt in r.get("alternatives", []):
        if "error" in alt:
            lines.append(f"  try {alt['change']}: cannot ({alt['error']})")
        elif "compiler" in alt:
            lines.append(f"  try {alt['change']}: still too big ({alt['compiler']})")
        else:
            delta = "" if total is None else f" ({(alt['total'] - total) / GiB:+.2f} GiB)"
            lines.append(f"  try {alt['change']}: {_gib(alt['total'])} per device{delta}, "
                         + ("fits" if alt["fits"] else "still too big"))
    return lines


def _loops_line(f: dict[str, Any]) -> str:
    if not f["unknown_trip_loops"]:
        return ""
    times = f["unknown_trip_loops_counted"]
    return (f"; {f['unknown_trip_loops']} loop(s) of data-dependent length counted "
            + ("once" if times == 1 else f"{times} times (the bound)"))


def format_report(r: dict[str, Any]) -> str:
    t, m, f = r["target"], r["memory"], r["flops"]
    mesh = " x ".join(f"{k}={v}" for k, v in r["mesh"].items())
    if m.get("compiler_refused"):
        lines = [f"{r['program']} ({r['launcher']} {r['preset']}) on {t['name']}: {t['chips']} x {t['chip']}, mesh {mesh}",
                 f"  memory per device: DOES NOT FIT: the compiler refused it ({_oom_line(m['compiler_message'])})",
                 f"  arguments per device (from their shardings): {_gib(m['argument_bytes_from_shardings'])}",
                 f"  FLOPs per device per step: {f['per_device']:.4g}",
                 "  largest arguments per device: " + "; ".join(
                     f"{a['name']} {a['shape']} {_gib(a['bytes'])}" for a in r["largest_arguments"][:4])]
        return "\n".join(lines + _format_alternatives(r, None))
    p, rl = r["projected"], r["roofline"]
    lines = [
        f"{r['program']} ({r['launcher']} {r['preset']}) on {t['name']}: {t['chips']} x {t['chip']}, mesh {mesh}",
        f"  memory per device: argument {_gib(m['argument'])}, output {_gib(m['output'])}, alias {_gib(m['alias'])}, "
        f"temp {_gib(m['temp'])}; total {_gib(m['total'])} of {_gib(m['device_hbm'])}: "
        + ("fits" if m["fits"] else "DOES NOT FIT"),
        f"  FLOPs per device per step: {f['per_device']:.4g} (model, without remat: {f['model_per_device']:.4g})"
        + _loops_line(f),
        f"  HBM bytes per device per step: {r['traffic']['bytes']:.4g}; collectives {r['traffic']['collective_bytes']:.4g}"
        f" bytes ({r['traffic']['wire_bytes']:.4g} on the wire)",
        f"  projected (roofline, not measured): step {rl['step_s'] * 1e3:.2f} ms ({rl['bound']}-bound: compute "
        f"{rl['compute_s'] * 1e3:.2f} ms, memory {rl['memory_s'] * 1e3:.2f} ms, collectives "
        f"{rl['collective_s'] * 1e3:.2f} ms), "
        + ", ".join(f"{v:,.0f} {k.removesuffix('_per_s')}/s" for k, v in p.items() if k.endswith("_per_s"))
        + f", MFU {p['mfu'] * 100:.1f}%",
        f"  compiled in {r['compile']['compile_s']:.1f} s (lowered in {r['compile']['lower_s']:.1f} s)",
    ]
    if not m["fits"]:
        lines.append("  largest arguments per device: " + "; ".join(
            f"{a['name']} {a['shape']} {_gib(a['bytes'])}" for a in r.get("largest_arguments", [])[:4]))
        lines.append("  largest values per device: " + "; ".join(
            f"{v['shape']} {_gib(v['bytes'])} ({v['op'][-60:]})" for v in r["traffic"]["largest"][:4]))
        lines += _format_alternatives(r, m["total"])
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m experiments.plan", description=__doc__.split("\n\n")[0],
                                     epilog="Flags after -- (or any flag the planner does not know) go to the "
                                            "launcher's own CLI. Targets: " + ", ".join(TARGETS))
    parser.add_argument("--launcher", required=True, choices=sorted({*LAUNCHERS, *NOT_PLANNED}))
    parser.add_argument("--preset", required=True)
    parser.add_argument("--target", required=True, help="one of: " + ", ".join(TARGETS))
    for axis in MESH_AXES:
        parser.add_argument(f"--mesh.{axis}", type=int, default=None, dest=f"mesh_{axis}",
                            help=f"mesh axis {axis} (default: the preset's; -1: the remaining devices)")
    parser.add_argument("--json", default="", help="write the report as JSON here")
    parser.add_argument("--hlo-out", default="", help="write the compiled program's HLO text here")
    parser.add_argument("--no-advice", action="store_true", help="do not compile alternatives when it does not fit")
    head, tail = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args, rest = parser.parse_known_args(head)
    return args, rest + tail


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    mesh = None
    given = {axis: getattr(args, f"mesh_{axis}") for axis in MESH_AXES}
    if any(v is not None for v in given.values()):
        mesh = MeshConfig(**{k: (1 if v is None else v) for k, v in given.items()})
    report = plan(args.launcher, args.preset, args.target, rest, mesh=mesh, advice=not args.no_advice,
                  hlo_out=args.hlo_out or None)
    print(format_report(report), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def expected_errors() -> tuple[type[BaseException], ...]:
    """Input errors of every planned package: a one-line message, not a traceback."""
    from bfpo.errors import BFPOError
    from local_learning import ConfigError
    from recurrent import CompileError

    return RuntimeConfigError, BFPOError, ConfigError, CompileError


if __name__ == "__main__":
    try:
        main()
    except expected_errors() as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
