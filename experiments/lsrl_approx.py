"""In-context function approximation with a compiled LSRL program: approximation error against the prompt size.

The vec2vec program (Petrov et al., 2024, Listing 1) is compiled once per conditional mode into a linear-RNN
chain and run (jitted, batched, the batch sharded over the mesh) on prompts that tabulate random smooth
targets f on an N^d grid. For each N it records
    construction error = max |model(x) - f(centre of x's cell)|   (0 up to rounding: what the program computes)
    approximation error = mean and max |model(x) - f(x)|          (O(1/N) for Lipschitz f)
and writes results.json, error_vs_n.png (errors against N, one line per mode) and outputs.png (the model's
outputs against the target, for 1-d inputs).

Run: ``python -m experiments.lsrl_approx --help``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from flax import nnx

from experiments.configs.lsrl_approx import LSRLApproxConfig
from experiments.planning import LauncherPlan, Program
from experiments.run import cli
from recurrent import CompileError
from recurrent.compile import compile_program
from recurrent.programs.vec2vec import (
    Vec2VecSpec,
    random_target,
    vec2vec_ideal,
    vec2vec_program,
    vec2vec_prompts,
    vec2vec_queries,
)
from recurrent.targets.linear_rnn import LinearRNN
from runtime import make_mesh
from runtime import sharding as sh


@dataclasses.dataclass(frozen=True)
class LSRLApproxSummary:
    out_dir: str
    results: dict
    plot: str | None
    seconds: float


def _pad_to(x: np.ndarray, multiple: int) -> np.ndarray:
    extra = (-len(x)) % multiple
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x


def main(cfg: LSRLApproxConfig) -> LSRLApproxSummary:
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = jnp.dtype(cfg.dtype)
    mesh = make_mesh(cfg.mesh)
    n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_sharding = sh.logical_to_sharding(("batch", "seq", None), mesh)
    x64 = jax.enable_x64(True) if dtype == jnp.float64 else contextlib.nullcontext()
    results: dict = {"config": dataclasses.asdict(cfg), "modes": {}}
    curves: dict[str, dict] = {}
    with x64:
        for mode in cfg.modes:
            spec = Vec2VecSpec(
                in_dim=cfg.in_dim, out_dim=cfg.out_dim, mode=mode, scale=cfg.scale, large_constant=cfg.large_constant
            )
            tc = time.perf_counter()
            chain = compile_program(vec2vec_program(spec))
            compile_s = time.perf_counter() - tc
            model = LinearRNN(chain, dtype=dtype, associative=cfg.associative)

            @nnx.jit
            def forward(m, x):
                with sh.activate(mesh):
                    return m(x)[:, -1]

            per_n = []
            for n in cfg.grid_sizes:
                construction, mean_err, max_err = [], [], []
                for k in range(cfg.targets):
                    f = random_target(cfg.seed * 1000 + k, cfg.in_dim, cfg.out_dim)
                    rng = np.random.default_rng([cfg.seed, n, k])
                    q = vec2vec_queries(rng, cfg.queries, cfg.in_dim, n, cfg.scale)
                    toks = _pad_to(vec2vec_prompts(f, spec, n, q), n_batch)
                    y = np.asarray(forward(model, jax.device_put(jnp.asarray(toks, dtype), batch_sharding)), np.float64)
                    y = y[: len(q)]
                    construction.append(float(np.abs(y - vec2vec_ideal(f, n, q)).max()))
                    err = np.abs(y - f(q))
                    mean_err.append(float(err.mean()))
                    max_err.append(float(err.max()))
                per_n.append(
                    {
                        "n": n,
                        "tokens": 1 + n**cfg.in_dim,
                        "construction_error": max(construction),
                        "approximation_error_mean": float(np.mean(mean_err)),
                        "approximation_error_max": max(max_err),
                    }
                )
                print(
                    f"[{mode}] N={n:4d}  construction {per_n[-1]['construction_error']:.2e}  "
                    f"approximation mean {per_n[-1]['approximation_error_mean']:.3e} "
                    f"max {per_n[-1]['approximation_error_max']:.3e}",
                    flush=True,
                )
            s = chain.summary()
            results["modes"][mode] = {
                "compile_seconds": compile_s,
                "layers": len(chain.layers),
                "state_dims": s.state_dims,
                "recurrent_dims": s.recurrent_dims,
                "max_width": s.max_width,
                "parameters": s.parameters,
                "max_weight": s.max_weight,
                "sweep": per_n,
            }
            curves[mode] = {"chain": chain, "model": model, "forward": forward, "spec": spec}
        (out / "results.json").write_text(json.dumps(results, indent=2))
        plot = _plot(cfg, results, curves, out, dtype, batch_sharding, n_batch)
    summary = LSRLApproxSummary(str(out), results, plot, time.perf_counter() - t0)
    print(f"results: {out / 'results.json'}\nplot:    {plot}\nin {summary.seconds:.1f}s")
    return summary


def _plot(cfg, results, curves, out: Path, dtype, batch_sharding, n_batch) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode, r in results["modes"].items():
        ns = [p["n"] for p in r["sweep"]]
        ax[0].loglog(ns, [p["approximation_error_mean"] for p in r["sweep"]], marker="o", label=mode)
        ax[1].semilogx(ns, [max(p["construction_error"], 1e-17) for p in r["sweep"]], marker="o", label=mode)
    ns = np.array(cfg.grid_sizes, dtype=float)
    ax[0].loglog(ns, 0.5 / ns, "k--", lw=0.8, label="1/(2N)")
    ax[0].set(xlabel="N (cells per input dim)", ylabel="mean |model(x) - f(x)|", title="approximation error")
    ax[1].set_yscale("log")
    ax[1].set(xlabel="N", ylabel="max |model - f(cell centre)|", title=f"construction error ({cfg.dtype})")
    for a in ax:
        a.set_xticks(ns, [str(int(n)) for n in ns])
        a.minorticks_off()
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    # Whole decades, so the log axis always shows labelled ticks even when every error sits in one decade.
    lo, hi = ax[1].get_ylim()
    ax[1].set_ylim(10.0 ** np.floor(np.log10(lo)), 10.0 ** np.ceil(np.log10(hi)))
    fig.tight_layout()
    path = out / "error_vs_n.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    if cfg.in_dim == 1:
        f = random_target(cfg.seed * 1000, 1, cfg.out_dim)
        fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.4), squeeze=False)
        xs = np.linspace(0, 1, 400)
        for a, (mode, c) in zip(axes[0], curves.items()):
            a.plot(xs, f(xs[:, None])[:, 0], "k", lw=1, label="f")
            for n in sorted({cfg.grid_sizes[0], cfg.grid_sizes[len(cfg.grid_sizes) // 2], cfg.grid_sizes[-1]}):
                q = vec2vec_queries(np.random.default_rng(n), 96, 1, n, cfg.scale)
                q = q[np.argsort(q[:, 0])]
                toks = _pad_to(vec2vec_prompts(f, c["spec"], n, q), n_batch)
                y = np.asarray(c["forward"](c["model"], jax.device_put(jnp.asarray(toks, dtype), batch_sharding)))
                a.plot(q[:, 0], y[: len(q), 0], ".", ms=3, label=f"model, N={n}")
            a.set(title=mode, xlabel="x")
            a.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "outputs.png", dpi=120)
        plt.close(fig)
    return str(path)


def plan_program(cfg: LSRLApproxConfig, mesh) -> Program:
    """The sweep's forward pass for its first mode at its largest N: ``queries`` prompts of 1 + N^d tokens each,
    sharded over the mesh's data axes (experiments.plan; ``--queries 4096`` plans a batch of 4096)."""
    mode, n = cfg.modes[0], max(cfg.grid_sizes)
    spec = Vec2VecSpec(in_dim=cfg.in_dim, out_dim=cfg.out_dim, mode=mode, scale=cfg.scale,
                       large_constant=cfg.large_constant)
    dtype = jnp.dtype(cfg.dtype)
    model = LinearRNN(compile_program(vec2vec_program(spec)), dtype=dtype, associative=cfg.associative)
    graphdef, state = nnx.split(model)
    batch_sharding = sh.logical_to_sharding(("batch", "seq", None), mesh)
    tokens = jax.ShapeDtypeStruct((cfg.queries, 1 + n ** cfg.in_dim, spec.token_dim), dtype, sharding=batch_sharding)
    state_shardings = jax.tree.map(lambda _: sh.replicated(mesh), state)
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                                  state_shardings)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)[:, -1]

    fn = jax.jit(forward, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=sh.logical_to_sharding(("batch", None), mesh))
    return Program(name=f"lsrl_approx[{mode} N={n}]", fn=fn, args=(abstract_state, tokens),
                   work={"prompts": cfg.queries, "tokens": cfg.queries * tokens.shape[1]}, arg_names=("weights", "tokens"))


PLAN = LauncherPlan(
    parse=lambda preset, args: tyro.cli(LSRLApproxConfig, args=list(args), prog="experiments.lsrl_approx",
                                        default=LSRLApproxConfig.demo() if preset == "demo" else LSRLApproxConfig()),
    program=plan_program,
    presets=("default", "demo"),
    mesh_of=lambda cfg: cfg.mesh,
    with_mesh=lambda cfg, mesh: dataclasses.replace(cfg, mesh=mesh),
)


if __name__ == "__main__":
    cli(LSRLApproxConfig, main, expected_errors=(CompileError,))
