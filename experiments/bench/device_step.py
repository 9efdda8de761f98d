"""Measured step time, throughput, MFU and peak memory of a launcher's real step on the attached accelerator.

The same ``Program`` the planner compiles (``experiments.planning``), run for real: every argument is filled
with zeros (boolean masks with True, so every token counts) on its sharding over the local devices, the step is
compiled, run ``warmup`` times, then timed over ``steps`` calls with the train state fed back (it is donated).
MFU is the step's model FLOPs (``runtime.flops``, without remat) over the measured time and the chip's peak
(``--target``'s table entry). Prints one JSON line; ``experiments/bench/device_check.sh`` puts it next to the
planner's projection for the same configuration. On a machine without an accelerator it says so and stops.

Run: ``python -m experiments.bench.device_step --launcher bfpo_train --preset mistral-7b --target h200x1 -- ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from runtime import sharding as sharding_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    launcher: str = "bfpo_train"
    preset: str = "tiny"
    target: str = "h200x1"
    steps: int = 5
    warmup: int = 2
    launcher_args: tuple[str, ...] = ()


def _filled(x: jax.ShapeDtypeStruct) -> jax.Array:
    value = True if x.dtype == np.bool_ else 0
    return jax.jit(lambda: jnp.full(x.shape, value, x.dtype), out_shardings=x.sharding)()


def main(cfg: Config) -> dict:
    if jax.default_backend() == "cpu":
        print("device_step: no accelerator attached; nothing measured", flush=True)
        return {}
    from experiments.planning import launcher_plan
    from runtime.accelerators import get_target
    from runtime.flops import count_flops
    from runtime.mesh import make_mesh

    spec = launcher_plan(cfg.launcher)
    launcher_cfg = spec.parse(cfg.preset, list(cfg.launcher_args))
    mesh = make_mesh(spec.mesh_of(launcher_cfg))
    program = spec.program(launcher_cfg, mesh)
    plain = spec.program(spec.without_remat(launcher_cfg), mesh)
    with sharding_lib.activate(mesh):
        model_flops = count_flops(plain.fn, *plain.args).total
        args = jax.tree.map(_filled, program.args)
        t0 = time.perf_counter()
        compiled = program.fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        state, rest = args[0], args[1:]
        donates = program.arg_names[0] == "state"
        for _ in range(cfg.warmup):
            out = compiled(state, *rest)
            state = out[0] if donates else state
        jax.block_until_ready(out)
        times = []
        for _ in range(cfg.steps):
            t0 = time.perf_counter()
            out = compiled(state, *rest)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t0)
            state = out[0] if donates else state
    step_s = float(np.median(times))
    stats = jax.local_devices()[0].memory_stats() or {}
    target = get_target(cfg.target)
    n = mesh.size
    result = {"kind": "measurement", "launcher": cfg.launcher, "preset": cfg.preset, "args": list(cfg.launcher_args),
              "device": jax.local_devices()[0].device_kind, "devices": n, "step_s": step_s, "compile_s": compile_s,
              **{f"{k}_per_s": v / step_s for k, v in program.work.items()},
              "mfu": model_flops / n / (step_s * target.peak_bf16_flops),
              "peak_bytes_in_use": stats.get("peak_bytes_in_use")}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launcher", default=Config.launcher)
    parser.add_argument("--preset", default=Config.preset)
    parser.add_argument("--target", default=Config.target)
    parser.add_argument("--steps", type=int, default=Config.steps)
    argv = sys.argv[1:]
    head, tail = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    a = parser.parse_args(head)
    main(Config(launcher=a.launcher, preset=a.preset, target=a.target, steps=a.steps, launcher_args=tuple(tail)))
