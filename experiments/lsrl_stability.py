"""Numerical stability of compiled LSRL programs on every target: gated against lambda-based conditionals.

The paper (Petrov et al., 2024, Sec. 1 and 6) claims that architectures with multiplicative gating implement
conditional assignment more stably than the large-constant ReLU construction. This sweep measures it. The paper's
two programs (vec2vec, Listing 1; tok2tok, Listing 2) are built in each conditional mode
(``recurrent.programs.conditionals``):
    lambda-based  IF c THEN t = ReLU(t - lambda (1 - c)) - ReLU(-t - lambda (1 - c))  (modes direct, optimized,
                  step_optimized; exact while |t| < lambda, but lambda times the step slope lands in one weight)
    gated         IF c THEN t = c * t                                 (multiplicative*, exact for c in {0, 1})
and compiled to every registered target (``recurrent.targets.registry.TARGETS``). For a prompt x with answer positions P (the last token for
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

import csv
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from experiments.configs.lsrl_stability import LSRLStabilityConfig
from experiments.run import cli
from recurrent.stability import Prompts, answer_errors, make_prompts, own_large_constant, program_for
from recurrent.stability import error_stats, sizes_of, x64
from recurrent import CompileError
from recurrent.lsrl.interpreter import run as interpret
from recurrent.targets.registry import GATED_MODES, TARGETS, Target, get_target, perturb

COLUMNS = (
    "study", "program", "target", "mode", "gated", "large_constant", "dtype", "tokens", "noise", "sigma", "seed",
    "queries", "error_median", "error_max", "wrong_fraction",
)


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
    return [get_target(n) for n in cfg.targets or tuple(TARGETS)]


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
    cli(config_type(), main, expected_errors=(CompileError,))
