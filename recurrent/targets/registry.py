"""Every target a program compiles to, by name: how to compile, how to read its parameters in a dtype, how to
run it, and which of its parameter leaves are initial states rather than weights; plus weight noise, the
perturbation the stability study applies to any of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from recurrent.compile import compile_program
from recurrent.errors import CompileError
from recurrent.lsrl import ForEach
from recurrent.scan import chain_kinds, chain_params, run_chain
from recurrent.targets.elman import compile_elman, elman_params, run_elman
from recurrent.targets.griffin import compile_griffin, griffin_params, run_griffin
from recurrent.targets.gru import compile_gru, gru_params, run_gru
from recurrent.targets.lstm import compile_lstm, lstm_params, run_lstm
from recurrent.targets.mamba import compile_mamba, mamba_params, run_mamba
from runtime.tree_paths import path_keys

# Program modes whose every product is a 0/1-gated conditional (f_ifelse_mul): compiled to gated targets only.
GATED_MODES = ("multiplicative", "multiplicative_optimized")


@dataclasses.dataclass(frozen=True)
class Target:
    """How to compile a program to one architecture, run it in a dtype, and which parameters noise may touch."""

    name: str
    build: Callable[[ForEach, bool, int], Any]
    """(program, gated, max_tokens) -> compiled model; gated: every product is a 0/1-gated conditional
    (f_ifelse_mul); max_tokens: the longest prompt it must run (Mamba's counter-based rotations are exact up to
    a horizon)."""
    params: Callable[[Any, Any], Any]
    """(model, dtype) -> its parameter pytree in that dtype."""
    runner: Callable[[Any], Callable[[Any, jax.Array], jax.Array]]
    """model -> pure run(params, tokens_BxTxD) -> outputs_BxTxO (the model's static structure closed over)."""
    hosts_products: bool
    """False: the gated modes are not compiled for it (no product of two units, e.g. Elman)."""
    initial_state_keys: frozenset[str] = frozenset({"init", "carry"})
    """Pytree keys of initial states: values, not weights, so noise leaves them alone."""


def _chain_runner(associative: bool):
    def runner(chain):
        kinds = chain_kinds(chain)
        return lambda params, x: run_chain(params, kinds, x, associative=associative)

    return runner


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("linear_rnn", lambda p, g, t: compile_program(p), chain_params, _chain_runner(False), True),
        Target("linear_rnn_assoc", lambda p, g, t: compile_program(p), chain_params, _chain_runner(True), True),
        Target("elman", lambda p, g, t: compile_elman(p), elman_params, lambda net: run_elman, False),
        Target("lstm", lambda p, g, t: compile_lstm(p, gated_products=g), lstm_params, lambda net: run_lstm, True),
        Target("gru", lambda p, g, t: compile_gru(p, gated_products=g), gru_params, lambda net: run_gru, True),
        Target("mamba", lambda p, g, t: compile_mamba(p, gated_products=g, horizon=max(t, 1)), mamba_params,
               lambda net: run_mamba, True),
        Target("griffin", lambda p, g, t: compile_griffin(p, gated_products=g, horizon=max(t, 1)), griffin_params,
               lambda net: run_griffin, True),
    )
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise CompileError(f"target {name!r}: not registered; registered: {', '.join(TARGETS)}")
    return TARGETS[name]


def perturb(params: Any, rng: np.random.Generator, sigma: float, kind: str, frozen: frozenset[str]) -> Any:
    """Gaussian noise on every non-zero weight: relative w (1 + sigma xi) or absolute w + sigma xi.

    xi is drawn in float64 on the host (one standard normal per entry, leaves in flattening order, zeros and
    leaves under a key in ``frozen`` included in the draw so the same rng state gives the same xi for every
    sigma), then the result is cast to the leaf's dtype. Call under ``jax.enable_x64`` for float64 leaves.
    """
    if kind not in ("relative", "absolute"):
        raise CompileError(f"perturb: kind must be 'relative' or 'absolute', got {kind!r}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for path, leaf in flat:
        w = np.asarray(leaf, np.float64)
        xi = rng.standard_normal(w.shape)
        keys = set(path_keys(path))
        if keys & frozen or sigma == 0:
            out.append(leaf)
            continue
        # Structural zeros stay zero: noise on them would couple lanes the construction keeps apart.
        delta = sigma * xi * (w if kind == "relative" else (w != 0))
        out.append(jnp.asarray(w + delta, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)
