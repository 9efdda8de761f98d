"""Forward throughput of one compiled LSRL program on every target, beside the linear-RNN chain.

What is compared
----------------
One of the paper's programs (default: vec2vec, Listing 1, d = o = 2, N = 16, so T = 257 tokens per prompt) in each
requested conditional mode, compiled to every registered target of ``recurrent.targets.registry.TARGETS``: the
linear-RNN chain run with ``lax.scan`` (``linear_rnn``, the reference) and with ``lax.associative_scan``
(``linear_rnn_assoc``), and the Elman, LSTM, GRU, Mamba and Hawk (``griffin``) stacks (and any target registered later). Each model runs
jitted on a batch of prompts (default 64 x 257); the time is the best of ``repeats`` calls after a warm-up call
that compiles; tokens/s = batch * T / seconds. Gated modes are skipped on targets without a product (Elman).

Reported per target, mode and dtype: tokens/s, the ratio to ``linear_rnn`` in the same mode and dtype, the
program-to-model compile time, the parameter count, and the largest answer error against the float64
interpreter (a check that the timed model computes the program).

Run: ``python -m experiments.bench.lsrl_targets`` (well under a minute on a 2-core CPU).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from experiments.configs.lsrl_stability import DTYPES, PROGRAMS, LSRLStabilityConfig
from recurrent.stability import answer_errors, make_prompts, program_for, x64
from recurrent.lsrl.interpreter import run as interpret
from recurrent.errors import ConfigError
from recurrent.programs import MODES
from recurrent.targets.registry import GATED_MODES, TARGETS

REFERENCE = "linear_rnn"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    program: str = "vec2vec"
    size: int = 16
    """vec2vec: grid size N (T = 1 + N^2); tok2tok: dictionary pairs P (T = 3 + 6 P)."""
    batch: int = 64
    modes: tuple[str, ...] = ("direct", "multiplicative")
    dtypes: tuple[str, ...] = ("float32", "float64")
    targets: tuple[str, ...] = ()
    """Registered targets (empty: all)."""
    repeats: int = 5
    seed: int = 0
    out: str = "runs/bench/lsrl_targets.json"

    def __post_init__(self):
        if self.program not in PROGRAMS:
            raise ConfigError(f"Config.program={self.program!r}: one of {PROGRAMS}")
        if self.size < 1 or self.batch < 1 or self.repeats < 1:
            raise ConfigError("Config.size, .batch and .repeats must be at least 1")
        for field, values, allowed in (("modes", self.modes, MODES), ("dtypes", self.dtypes, DTYPES),
                                       ("targets", self.targets, tuple(TARGETS))):
            if any(v not in allowed for v in values):
                raise ConfigError(f"Config.{field}={values}: each must be one of {allowed}")


def _best_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def main(cfg: Config) -> dict[str, Any]:
    sweep_cfg = LSRLStabilityConfig(
        programs=(cfg.program,), vec2vec_grid_sizes=(cfg.size,), tok2tok_pairs=(cfg.size,), queries=cfg.batch,
        noise_length_index=0, seed=cfg.seed,
    )
    prompts = make_prompts(cfg.program, sweep_cfg)
    batch, steps = prompts.tokens_BxTxD.shape[:2]
    rows = []
    for mode in cfg.modes:
        prog = program_for(cfg.program, sweep_cfg, mode, None)
        ref = interpret(prog, prompts.tokens_BxTxD)
        for name in cfg.targets or tuple(TARGETS):
            target = TARGETS[name]
            if mode in GATED_MODES and not target.hosts_products:
                continue
            t0 = time.perf_counter()
            model = target.build(prog, mode in GATED_MODES, steps)
            compile_s = time.perf_counter() - t0
            run = jax.jit(target.runner(model))
            for dtype in cfg.dtypes:
                with x64(dtype):
                    params = target.params(model, dtype)
                    x = jnp.asarray(prompts.tokens_BxTxD, dtype)
                    secs = _best_seconds(run, params, x, repeats=cfg.repeats)
                    y = np.asarray(run(params, x))
                rows.append({
                    "target": name, "mode": mode, "dtype": dtype, "tokens_per_s": batch * steps / secs,
                    "seconds": secs, "compile_seconds": compile_s,
                    "parameters": int(sum(np.size(a) for a in jax.tree.leaves(params))),
                    "max_error_vs_interpreter": float(answer_errors(y, ref, prompts.lengths_B, prompts.read_last).max()),
                })
    for r in rows:
        base = [b for b in rows if b["target"] == REFERENCE and b["mode"] == r["mode"] and b["dtype"] == r["dtype"]]
        r["ratio_vs_linear_rnn"] = r["tokens_per_s"] / base[0]["tokens_per_s"] if base else None
    print(f"{cfg.program}, batch {batch} x T {steps}, best of {cfg.repeats} ({jax.devices()[0].platform})")
    print(f"{'target':18s} {'mode':26s} {'dtype':8s} {'tokens/s':>10s} {'vs scan':>8s} {'params':>8s} "
          f"{'compile s':>9s} {'max error':>9s}")
    for r in rows:
        ratio = "–" if r["ratio_vs_linear_rnn"] is None else f"{r['ratio_vs_linear_rnn']:.2f}x"
        print(f"{r['target']:18s} {r['mode']:26s} {r['dtype']:8s} {r['tokens_per_s']:10.3g} {ratio:>8s} "
              f"{r['parameters']:8d} {r['compile_seconds']:9.3f} {r['max_error_vs_interpreter']:9.1e}", flush=True)
    result = {"config": dataclasses.asdict(cfg), "device": str(jax.devices()[0]), "batch": batch, "tokens": steps,
              "rows": rows}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(tyro.cli(Config))
