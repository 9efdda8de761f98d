"""Memory and time of whole training steps, per executor, measured on the compiled programs.

Single-program steps (global BP, checkpointed BP, local learning with ordered modules): the compiled step's
argument + output - alias + temp (memory.py), with the train state donated as in the training loop.

Host-loop local learning (one program per module, then an update program): the parameters, optimizer state
and batch stay resident, the modules' gradients accumulate until the update, and one module program runs at
a time, so its peak is bounded by

    resident + all gradients + max_k (temp_k + output_k).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax

from local_learning import network
from local_learning.memory import CompiledMemory, compiled_memory, tree_bytes
from local_learning.train_step import LocalConfig, make_host_loop_step


def step_memory(step_fn: Callable, state, batch, compiler_options: dict | None = None
                ) -> tuple[CompiledMemory | None, Any]:
    """(memory of the compiled step, the compiled program) with the state donated."""
    compiled = jax.jit(step_fn, donate_argnums=0).lower(state, batch).compile(compiler_options=compiler_options)
    return compiled_memory(compiled), compiled


def host_loop_memory(netdef: network.NetworkDef, cfg: LocalConfig, tx, state, batch,
                     compiler_options: dict | None = None) -> dict[str, Any]:
    """Per-module compiled memory of the host-loop executor and the bound on its peak (see module docstring)."""
    _, programs = make_host_loop_step(netdef, cfg, tx)
    module_programs = programs[:-1]
    h, target = batch["image"], None
    labels = batch["label"]
    rng = jax.random.PRNGKey(0)
    per_module = []
    for k, program in enumerate(module_programs):
        args = (state.params["params"][k], state.params["stats"][k], h, target, labels, rng)
        compiled = program.lower(*args).compile(compiler_options=compiler_options)
        per_module.append(compiled_memory(compiled))
        res, _ = jax.eval_shape(program, *args)
        h, target = res.aux.h_out, res.g_out
    resident = tree_bytes(state) + tree_bytes(batch)
    grads = tree_bytes(state.params["params"])
    worst = max(m.temp + m.output for m in per_module)
    return {"per_module": per_module, "resident": resident, "gradients": grads, "peak": resident + grads + worst}


def time_steps(step: Callable, state, batch, *, iters: int = 3, warmup: int = 1) -> tuple[float, Any]:
    """(median seconds per step, final state): ``step`` is called as ``state, metrics = step(state, batch)``."""
    for _ in range(warmup):
        state, m = step(state, batch)
    jax.block_until_ready((state, m))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], state
