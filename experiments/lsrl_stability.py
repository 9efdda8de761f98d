"""Numerical stability of compiled LSRL programs on every target: gated against lambda-based conditionals.

The paper (Petrov et al., 2024, Sec. 1 and 6) claims that architectures with multiplicative gating implement
conditional assignment more stably than the large-constant ReLU construction. This sweep measures it. The paper's
two programs (vec2vec, Listing 1; tok2tok, Listing 2) are built in each conditional mode
(``recurrent.programs.conditionals``):
    lambda-based  IF c THEN t = ReLU(t - lambda (1 - c)) - ReLU(-t - lambda (1 - c))  (modes direct, optimized,
                  step_optimized; exact while |t| < lambda, but lambda times the step slope lands in one weight)
    gated         IF c THEN t = c * t                                 (multiplicative*, exact for c in {0, 1})
and compiled to every registered target (``TARGETS``). For a prompt x with answer positions P (the last token for
vec2vec, the last L for tok2tok) the error of a query is
    e(x) = max_{t in P, o} |model(x)_{t,o} - interpreter(x)_{t,o}|,
the interpreter (``recurrent.lsrl.interpreter.run``) being the program's float64 reference semantics. Two studies:
  - length: e against prompt length T (vec2vec T = 1 + N^d, tok2tok T = L + 2 L P), float32 and float64;
  - noise (the paper's robustness experiment, Sec. 6): every non-zero compiled weight w is replaced by
        relative  w (1 + sigma xi)      or      absolute  w + sigma xi,        xi ~ N(0, 1) i.i.d.,
    initial states excluded, and the perturbed model runs end to end (errors compound over the prompt, unlike the
    published notebook, which fed the clean states back at each step). Relative noise is the comparable one across
    targets, whose hidden units carry values at scales from 2^-50 (LSTM, GRU) to 1; absolute noise is the
    paper's. Seeds draw xi; the same xi is scaled by every sigma.

Writes ``results.csv`` (columns ``COLUMNS``, one row per study / program / target / mode / lambda / dtype / length
/ noise / sigma / seed), ``summary.md`` (the worst error per setting and the noise level where each breaks),
``error_vs_length_<program>.png`` and ``error_vs_noise_<program>.png``.

Run: ``python -m experiments.lsrl_stability {full,small} --help``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from experiments.configs.lsrl_stability import LSRLStabilityConfig
from experiments.run import cli
from recurrent import CompileError
from recurrent.compile import compile_program
from recurrent.lsrl import ForEach
from recurrent.lsrl.interpreter import run as interpret
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_program, tok2tok_prompts
from recurrent.programs.vec2vec import Vec2VecSpec, random_target, vec2vec_program, vec2vec_prompts
from recurrent.programs.vec2vec import vec2vec_queries
from recurrent.scan import chain_kinds, chain_params, run_chain
from recurrent.targets.elman import compile_elman, elman_params, run_elman
from recurrent.targets.griffin import compile_griffin, griffin_params, run_griffin
from recurrent.targets.gru import compile_gru, gru_params, run_gru
from recurrent.targets.lstm import compile_lstm, lstm_params, run_lstm
from recurrent.targets.mamba import compile_mamba, mamba_params, run_mamba

GATED_MODES = ("multiplicative", "multiplicative_optimized")
COLUMNS = (
    "study", "program", "target", "mode", "gated", "large_constant", "dtype", "tokens", "noise", "sigma", "seed",
    "queries", "error_median", "error_max", "wrong_fraction",
)


# --- the targets --------------------------------------------------------------------------------------------------


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


def x64(dtype) -> contextlib.AbstractContextManager:
    return jax.enable_x64(True) if jnp.dtype(dtype) == jnp.float64 else contextlib.nullcontext()


def perturb(params: Any, rng: np.random.Generator, sigma: float, kind: str, frozen: frozenset[str]) -> Any:
    """Gaussian noise on every non-zero weight: relative w (1 + sigma xi) or absolute w + sigma xi.

    xi is drawn in float64 on the host (one standard normal per entry, leaves in flattening order, zeros and
    leaves under a key in ``frozen`` included in the draw so the same rng state gives the same xi for every
    sigma), then the result is cast to the leaf's dtype. Call under ``x64`` for float64 leaves.
    """
    if kind not in ("relative", "absolute"):
        raise ValueError(f"perturb: kind must be 'relative' or 'absolute', got {kind!r}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for path, leaf in flat:
        w = np.asarray(leaf, np.float64)
        xi = rng.standard_normal(w.shape)
        keys = {str(getattr(k, "key", getattr(k, "idx", k))) for k in path}
        if keys & frozen or sigma == 0:
            out.append(leaf)
            continue
        # Structural zeros stay zero: noise on them would couple lanes the construction keeps apart.
        delta = sigma * xi * (w if kind == "relative" else (w != 0))
        out.append(jnp.asarray(w + delta, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


# --- the programs and their prompts -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prompts:
    tokens_BxTxD: np.ndarray
    """Prompts, each zero-padded after its end to the longest (the models are causal: padding changes nothing)."""
    lengths_B: np.ndarray
    sizes_B: np.ndarray
    """The size parameter of each prompt: grid size N (vec2vec) or pair count P (tok2tok)."""
    read_last: int
    """The answer is at the last ``read_last`` tokens of each prompt."""

    def select(self, size: int) -> "Prompts":
        keep = self.sizes_B == size
        length = int(self.lengths_B[keep].max())
        return Prompts(self.tokens_BxTxD[keep, :length], self.lengths_B[keep], self.sizes_B[keep], self.read_last)


def program_for(name: str, cfg: LSRLStabilityConfig, mode: str, large_constant: float | None) -> ForEach:
    if name == "vec2vec":
        kw = {} if large_constant is None else {"large_constant": large_constant}
        return vec2vec_program(Vec2VecSpec(in_dim=cfg.vec2vec_in_dim, out_dim=cfg.vec2vec_out_dim, mode=mode, **kw))
    kw = {} if large_constant is None else {"large_constant": large_constant}
    return tok2tok_program(Tok2TokSpec(key_length=cfg.tok2tok_key_length, mode=mode, **kw))


def own_large_constant(name: str) -> float:
    """The program's own lambda: a bound on the values it gates."""
    return Vec2VecSpec().large_constant if name == "vec2vec" else Tok2TokSpec().large_constant


def sizes_of(name: str, cfg: LSRLStabilityConfig) -> tuple[int, ...]:
    return cfg.vec2vec_grid_sizes if name == "vec2vec" else cfg.tok2tok_pairs


def make_prompts(name: str, cfg: LSRLStabilityConfig) -> Prompts:
    """``cfg.queries`` random prompts per size; one random target (vec2vec) or table (tok2tok) per size."""
    parts, sizes = [], []
    for size in sizes_of(name, cfg):
        rng = np.random.default_rng([cfg.seed, size])
        if name == "vec2vec":
            spec = Vec2VecSpec(in_dim=cfg.vec2vec_in_dim, out_dim=cfg.vec2vec_out_dim)
            f = random_target(cfg.seed, spec.in_dim, spec.out_dim)
            q = vec2vec_queries(rng, cfg.queries, spec.in_dim, size, spec.scale)
            parts.append(vec2vec_prompts(f, spec, size, q))
        else:
            keys, values = random_dictionary(rng, cfg.tok2tok_key_length, size, cfg.tok2tok_vocab)
            pick = rng.choice(size, cfg.queries, replace=cfg.queries > size)
            parts.append(tok2tok_prompts(keys[pick], keys, values))
        sizes += [size] * cfg.queries
    longest = max(p.shape[1] for p in parts)
    tokens = np.concatenate([np.pad(p, ((0, 0), (0, longest - p.shape[1]), (0, 0))) for p in parts])
    lengths = np.concatenate([np.full(len(p), p.shape[1]) for p in parts])
    read_last = 1 if name == "vec2vec" else cfg.tok2tok_key_length
    return Prompts(tokens, lengths, np.array(sizes), read_last)


def answer_errors(y_BxTxO: np.ndarray, ref_BxTxO: np.ndarray, lengths_B: np.ndarray, read_last: int) -> np.ndarray:
    """Per prompt, max |y - ref| over its last ``read_last`` tokens and every output; NaN counts as infinite."""
    pos_BxK = lengths_B[:, None] - read_last + np.arange(read_last)[None, :]
    y = np.take_along_axis(np.asarray(y_BxTxO, np.float64), pos_BxK[..., None], axis=1)
    ref = np.take_along_axis(np.asarray(ref_BxTxO, np.float64), pos_BxK[..., None], axis=1)
    err = np.abs(y - ref).reshape(len(y), -1).max(axis=1)
    return np.where(np.isnan(err), np.inf, err)


def error_stats(errors: np.ndarray, tolerance: float) -> dict[str, float]:
    return {
        "queries": len(errors),
        "error_median": float(np.median(errors)),
        "error_max": float(np.max(errors)),
        "wrong_fraction": float(np.mean(~(errors <= tolerance))),
    }


def variants(name: str, cfg: LSRLStabilityConfig) -> list[tuple[str, float | None]]:
    """(mode, lambda) pairs: gated modes once (lambda None), lambda-based ones at the program's own lambda and
    at ``cfg.large_constant``."""
    out = []
    for mode in cfg.modes:
        if mode in GATED_MODES:
            out.append((mode, None))
            continue
        lams = [own_large_constant(name)]
        if cfg.large_constant is not None and cfg.large_constant != lams[0]:
            lams.append(cfg.large_constant)
        out += [(mode, lam) for lam in lams]
    return out


def variant_label(mode: str, lam: float | None) -> str:
    return mode if lam is None else f"{mode} λ={lam:.0e}".replace("e+0", "e").replace("e+", "e")


# --- the sweep ----------------------------------------------------------------------------------------------------


def select_targets(cfg: LSRLStabilityConfig) -> list[Target]:
    names = cfg.targets or tuple(TARGETS)
    bad = [n for n in names if n not in TARGETS]
    if bad:
        raise ValueError(f"LSRLStabilityConfig.targets={cfg.targets}: unknown {bad}; registered: {tuple(TARGETS)}")
    return [TARGETS[n] for n in names]


def sweep(cfg: LSRLStabilityConfig, verbose: bool = True) -> list[dict[str, Any]]:
    """Every row of results.csv (see the module docstring)."""
    targets = select_targets(cfg)
    rows: list[dict[str, Any]] = []
    for name in cfg.programs:
        prompts = make_prompts(name, cfg)
        noise_size = sizes_of(name, cfg)[cfg.noise_length_index]
        noisy = prompts.select(noise_size)
        for mode, lam in variants(name, cfg):
            gated = mode in GATED_MODES
            prog = program_for(name, cfg, mode, lam)
            ref = interpret(prog, prompts.tokens_BxTxD)
            ref_noisy = ref[prompts.sizes_B == noise_size, : noisy.tokens_BxTxD.shape[1]]
            base = dict(program=name, mode=mode, gated=int(gated), large_constant="" if lam is None else lam)
            for target in targets:
                if gated and not target.hosts_products:
                    continue
                try:
                    model = target.build(prog, gated, int(prompts.lengths_B.max()))
                except CompileError as e:
                    print(f"[{name}/{variant_label(mode, lam)}] {target.name}: not compiled ({e})", flush=True)
                    continue
                run = jax.jit(target.runner(model))
                here = dict(base, target=target.name)
                for dtype in cfg.dtypes:
                    with x64(dtype):
                        y = np.asarray(run(target.params(model, dtype), jnp.asarray(prompts.tokens_BxTxD, dtype)))
                    errs = answer_errors(y, ref, prompts.lengths_B, prompts.read_last)
                    for size in sizes_of(name, cfg):
                        keep = prompts.sizes_B == size
                        rows.append(dict(here, study="length", dtype=dtype, tokens=int(prompts.lengths_B[keep][0]),
                                         noise="none", sigma=0.0, seed=cfg.seed,
                                         **error_stats(errs[keep], cfg.tolerance)))
                    if verbose:
                        worst = ", ".join(f"{r['tokens']}: {r['error_max']:.1e}" for r in rows[-len(sizes_of(name, cfg)):])
                        print(f"[{name}/{variant_label(mode, lam)}] {target.name:16s} {dtype}  max error by T  {worst}",
                              flush=True)
                if cfg.noise_study:
                    rows += noise_rows(cfg, target, model, run, noisy, ref_noisy, here, verbose)
    return rows


def noise_rows(cfg, target: Target, model, run, prompts: Prompts, ref, here: dict, verbose: bool) -> list[dict]:
    rows = []
    tokens = int(prompts.lengths_B[0])
    with x64(cfg.noise_dtype):
        clean = target.params(model, cfg.noise_dtype)
        x = jnp.asarray(prompts.tokens_BxTxD, cfg.noise_dtype)
        for kind in cfg.noise_kinds:
            for sigma in cfg.noise_sigmas:
                for seed in range(cfg.noise_seeds if sigma > 0 else 1):
                    rng = np.random.default_rng([cfg.seed, seed])
                    params = perturb(clean, rng, sigma, kind, target.initial_state_keys)
                    errs = answer_errors(np.asarray(run(params, x)), ref, prompts.lengths_B, prompts.read_last)
                    rows.append(dict(here, study="noise", dtype=cfg.noise_dtype, tokens=tokens, noise=kind,
                                     sigma=sigma, seed=seed, **error_stats(errs, cfg.tolerance)))
            if verbose:
                med = [
                    f"{s:.0e}: {np.median([r['error_median'] for r in rows if r['sigma'] == s and r['noise'] == kind]):.1e}"
                    for s in cfg.noise_sigmas
                ]
                print(f"    {kind} noise, median error by sigma  {', '.join(med)}", flush=True)
    return rows


# --- outputs ------------------------------------------------------------------------------------------------------


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.csv with the numeric columns as numbers (large_constant None for the gated modes)."""
    out = []
    with Path(path).open() as fh:
        for r in csv.DictReader(fh):
            for k in ("gated", "tokens", "seed", "queries"):
                r[k] = int(r[k])
            for k in ("sigma", "error_median", "error_max", "wrong_fraction"):
                r[k] = float(r[k])
            r["large_constant"] = float(r["large_constant"]) if r["large_constant"] else None
            out.append(r)
    return out


def _key(r: dict) -> tuple:
    return r["program"], r["target"], r["mode"], r["large_constant"]


def breaking_sigma(rows: list[dict], tolerance: float) -> float:
    """Smallest sigma where the median over seeds of the median query error exceeds ``tolerance`` (inf: never)."""
    for sigma in sorted({r["sigma"] for r in rows}):
        if np.median([r["error_median"] for r in rows if r["sigma"] == sigma]) > tolerance:
            return sigma
    return math.inf


def summary_table(rows: list[dict], cfg: LSRLStabilityConfig) -> str:
    """Markdown: per program / target / variant, the worst error over lengths per dtype and the breaking sigma."""
    kinds = [k for k in cfg.noise_kinds if cfg.noise_study]
    head = ["program", "target", "conditional", *[f"max error {d}" for d in cfg.dtypes],
            *[f"breaks at {k} sigma" for k in kinds]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    seen = list(dict.fromkeys(_key(r) for r in rows))
    for key in seen:
        mine = [r for r in rows if _key(r) == key]
        cells = [key[0], key[1], variant_label(key[2], key[3])]
        for d in cfg.dtypes:
            errs = [r["error_max"] for r in mine if r["study"] == "length" and r["dtype"] == d]
            cells.append(f"{max(errs):.1e}" if errs else "–")
        for k in kinds:
            s = breaking_sigma([r for r in mine if r["study"] == "noise" and r["noise"] == k], cfg.tolerance)
            cells.append("never" if s == math.inf else f"{s:.0e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


FLOOR, CEIL = 1e-17, 1e20
"""Errors of 0 are drawn at FLOOR (exact), non-finite ones at CEIL."""


def _clip(v):
    return np.clip(np.nan_to_num(np.asarray(v, np.float64), nan=CEIL, posinf=CEIL), FLOOR, CEIL)


def plot(rows: list[dict], cfg: LSRLStabilityConfig, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name in cfg.programs:
        mine = [r for r in rows if r["program"] == name]
        targets = list(dict.fromkeys(r["target"] for r in mine))
        keys = list(dict.fromkeys(_key(r)[2:] for r in mine))
        styles = {k: dict(color=f"C{i}", ls="-" if k[1] is None else ("--" if i % 2 else ":")) for i, k in enumerate(keys)}
        studies = [("length", cfg.dtypes, "dtype")]
        if cfg.noise_study:
            studies.append(("noise", cfg.noise_kinds, "noise"))
        for study, panels, field in studies:
            fig, axes = plt.subplots(len(panels), len(targets), figsize=(3.3 * len(targets), 2.9 * len(panels)),
                                     squeeze=False, sharey=True)
            for row_ax, panel in zip(axes, panels):
                for ax, target in zip(row_ax, targets):
                    for k in keys:
                        sel = [r for r in mine if r["study"] == study and r[field] == panel and r["target"] == target
                               and _key(r)[2:] == k]
                        if sel:
                            _draw(ax, study, sel, cfg, variant_label(*k), styles[k])
                    ax.set_yscale("log")
                    ax.set_ylim(FLOOR / 3, CEIL * 3)
                    ax.axhline(cfg.tolerance, color="grey", lw=0.6, ls="-.")
                    ax.grid(alpha=0.3)
                    ax.set_title(f"{target}, {panel}", fontsize=9)
                    if study == "length":
                        ax.set_xlabel("prompt tokens T", fontsize=8)
                    else:
                        ax.set_xlabel(f"{panel} noise sigma", fontsize=8)
                row_ax[0].set_ylabel("max error vs interpreter" if study == "length" else "median error (seeds)",
                                     fontsize=8)
            handles, labels = axes[0, 0].get_legend_handles_labels()
            for a in axes.flat:
                for h, l in zip(*a.get_legend_handles_labels()):
                    if l not in labels:
                        handles.append(h)
                        labels.append(l)
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8)
            fig.suptitle(f"{name}: {'error vs prompt length' if study == 'length' else 'error vs weight noise'} "
                         f"(0 drawn at {FLOOR:g}, overflow at {CEIL:g}; grey: tolerance)", fontsize=10)
            fig.tight_layout(rect=(0, 0.04 + 0.03 * (len(labels) > 5), 1, 0.96))
            path = out / f"error_vs_{study}_{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(str(path))
    return paths


def _draw(ax, study: str, sel: list[dict], cfg: LSRLStabilityConfig, label: str, style: dict) -> None:
    if study == "length":
        sel = sorted(sel, key=lambda r: r["tokens"])
        ax.plot([r["tokens"] for r in sel], _clip([r["error_max"] for r in sel]), marker="o", ms=3, label=label,
                **style)
        ax.set_xscale("log")
        ax.set_xticks([r["tokens"] for r in sel], [str(r["tokens"]) for r in sel], fontsize=7)
        ax.minorticks_off()
        return
    sigmas = sorted({r["sigma"] for r in sel})
    positive = [s for s in sigmas if s > 0]
    zero_at = min(positive) / 10 if positive else 1.0
    xs = [s if s > 0 else zero_at for s in sigmas]
    per = [[r["error_median"] for r in sel if r["sigma"] == s] for s in sigmas]
    med = _clip([np.median(p) for p in per])
    ax.plot(xs, med, marker="o", ms=3, label=label, **style)
    ax.fill_between(xs, _clip([min(p) for p in per]), _clip([max(p) for p in per]), color=style["color"], alpha=0.15)
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{s:.0e}".replace("e-0", "e-") if s > 0 else "0" for s in sigmas], fontsize=7)
    ax.minorticks_off()


@dataclasses.dataclass(frozen=True)
class LSRLStabilitySummary:
    out_dir: str
    rows: int
    plots: tuple[str, ...]
    seconds: float


def main(cfg: LSRLStabilityConfig) -> LSRLStabilitySummary:
    t0 = time.perf_counter()
    select_targets(cfg)  # fail on an unknown target before anything is written
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = sweep(cfg)
    write_csv(rows, out / "results.csv")
    rows = read_csv(out / "results.csv")
    (out / "summary.md").write_text(summary_table(rows, cfg))
    plots = plot(rows, cfg, out)
    summary = LSRLStabilitySummary(str(out), len(rows), tuple(plots), time.perf_counter() - t0)
    print((out / "summary.md").read_text())
    print(f"results: {out / 'results.csv'} ({len(rows)} rows)\nplots:   {', '.join(plots)}\nin {summary.seconds:.0f}s")
    return summary


def config_type():
    """Two presets as tyro subcommands (``full``, ``small``); every field can be overridden after one."""
    return tyro.extras.subcommand_type_from_defaults(
        {"full": LSRLStabilityConfig(), "small": LSRLStabilityConfig.small()}
    )


if __name__ == "__main__":
    cli(config_type(), main, expected_errors=(CompileError, ValueError))
