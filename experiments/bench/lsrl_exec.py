"""Execution speed and model size of compiled LSRL programs against the published implementation.

What is compared
----------------
The paper's two programs, built by ``recurrent.programs`` (vec2vec: d = o = 2, N = 8, T = 65; tok2tok: key
length 3, 20 random pairs over a 10-token vocabulary, T = 123), in each requested conditional mode, on the same
prompts.

*ours*: ``recurrent.compile.compile_program`` and the jitted chain (``recurrent.scan.run_chain``, ``lax.scan``
per state layer) on a batch of prompts, float32 and float64, best of ``repeats`` timed calls after a warm-up
call; tokens/s = batch * T / seconds. Also one sequence at a time (batch 1).

*published*: the public LSRL implementation (a local checkout of AleksandarPetrov/LSRL, given by path; its
code is not part of this repository), run in a separate Python that has its pinned dependencies (numpy 1.26,
scipy 1.13, sympy 1.12, networkx 3.3; ``parameterized`` to import its test module). The very same
program-building code runs there: a small driver maps
``recurrent.lsrl`` onto the published ``lsrl`` package (its primitives take ``Matrix`` weights, so NumPy
weights are wrapped) and imports ``recurrent/programs`` from this checkout, in its NUMERIC matrix mode (scipy
sparse, float64; its default mode is the far slower SYMBOLIC one). Its ``ForEach`` interpreter runs
the prompts one token at a time (tokens/s over ``published_prompts`` prompts); with ``compile_published`` the
published compiler (``ForEach.simplify``) then runs and its compiled model is timed the same way, and its
state dimensions (total and rows of A that are not zero) are read from the compiled graph. For tok2tok the
published test suite's own construction of the program (same mode, same prompts) is compiled and run as well.

Reported: tokens/s of both, their ratio (ours batched f32 / published uncompiled ForEach), compile times,
state dims of both compiled models, and the largest difference between the two implementations' outputs
(they must agree: same program, same prompts).

Run: ``python -m experiments.bench.lsrl_exec --published /path/to/LSRL --published-python /path/to/python``.
Without ``--published`` only our side runs.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import recurrent.programs as programs_pkg
from recurrent.compile import compile_program
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_answers, tok2tok_program, tok2tok_prompts
from recurrent.programs.vec2vec import Vec2VecSpec, random_target, vec2vec_ideal, vec2vec_program, vec2vec_prompts
from recurrent.programs.vec2vec import vec2vec_queries
from recurrent.scan import chain_kinds, chain_params, run_chain


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    published: str = ""
    """Path of a checkout of the public LSRL repository (empty: our side only)."""
    published_python: str = "python3"
    """A Python with the published implementation's dependencies (numpy 1.26, scipy, sympy 1.12, networkx)."""
    modes: tuple[str, ...] = ("multiplicative", "direct")
    vec2vec_n: int = 8
    tok2tok_pairs: int = 20
    batch: int = 64
    """Prompts per batched call of our model."""
    published_prompts: int = 1
    """Prompts run through the published token-by-token interpreter per program and mode."""
    compile_published: bool = True
    repeats: int = 5
    seed: int = 0
    out: str = "runs/bench/lsrl_exec.json"


_DRIVER = textwrap.dedent(
    r'''
    """Runs recurrent/programs on the published lsrl package: recurrent.lsrl is mapped onto it."""
    import json, sys, time, types
    import numpy as np

    published, programs_dir, job_path, out_path = sys.argv[1:5]
    sys.path.insert(0, published)
    import lsrl
    from lsrl.matrix_tools import Matrix, MatrixMode

    lsrl.set_global_matrix_mode(MatrixMode.NUMERIC)  # its default is SYMBOLIC (sympy), far slower

    def as_matrix(a):
        a = np.asarray(a, dtype=np.float64)
        return Matrix(a if a.ndim == 2 else a.reshape(-1, 1))

    class Linear(lsrl.Linear):
        def __init__(self, input, A, b=None, name="Linear"):
            A = as_matrix(A)
            super().__init__(input, A, as_matrix(np.zeros(A.rows) if b is None else b), name=name)

    class LinState(lsrl.LinState):
        def __init__(self, input, A, B, init_state, name="LinState", bias=None):
            super().__init__(input, as_matrix(A), as_matrix(B), as_matrix(init_state), name=name,
                             bias=None if bias is None else as_matrix(bias))

    lang = types.ModuleType("recurrent.lsrl")
    lang.__dict__.update({k: getattr(lsrl, k) for k in dir(lsrl) if not k.startswith("__")})
    lang.Linear, lang.LinState = Linear, LinState
    root = types.ModuleType("recurrent"); root.__path__ = []
    errors = types.ModuleType("recurrent.errors"); errors.CompileError = ValueError
    progs = types.ModuleType("recurrent.programs"); progs.__path__ = [programs_dir]
    sys.modules.update({"recurrent": root, "recurrent.lsrl": lang, "recurrent.errors": errors,
                        "recurrent.programs": progs})
    import importlib

    def run(prog, tokens):
        outs, t0 = [], time.perf_counter()
        for seq in tokens:
            outs.append(np.asarray(prog(seq.T).numpy(), dtype=np.float64).T)
        return np.stack(outs), time.perf_counter() - t0

    def published_tok2tok(mode):
        """The published test suite's own construction of the dictionary-lookup program (key length 3)."""
        from lsrl.matrix_tools import MatrixMode
        from tests import test_ua_tok2tok

        case = test_ua_tok2tok.TestUATok2TokBuldingSteps()
        case.mode, case.conditional_mode = MatrixMode.NUMERIC, mode
        case.setUp()  # enters the NUMERIC matrix mode; left in it until the job is done
        return lsrl.ForEach(case.output), case

    results = []
    for job in json.loads(open(job_path).read()):
        case = None
        if job.get("published_construction"):
            prog, case = published_tok2tok(job["spec"]["mode"])
        else:
            mod = importlib.import_module("recurrent.programs." + job["program"])
            spec_cls = getattr(mod, job["spec_class"])
            prog = getattr(mod, job["program"] + "_program")(spec_cls(**job["spec"]))
        prog.verbose = False
        tokens = np.load(job["tokens"])
        y, secs = run(prog, tokens)
        res = {"name": job["name"], "nodes": len(prog.topological_sort()), "interp_seconds": secs,
               "interp_tokens": int(tokens.shape[0] * tokens.shape[1]), "outputs": y.tolist()}
        if job["compile"]:
            t0 = time.perf_counter()
            prog.simplify()
            res["compile_seconds"] = time.perf_counter() - t0
            states = [n for n in prog.topological_sort() if isinstance(n, lsrl.LinState)]
            res["state_dims"] = [int(n.dim) for n in states]
            # the matrices are scipy sparse (NUMERIC mode): never densify them (the largest is 1e5 x 1e5)
            res["recurrent_rows"] = 0
            for n in states:
                A = n.A.matrix.tocsr()
                A.eliminate_zeros()
                res["recurrent_rows"] += int((np.diff(A.indptr) > 0).sum())
            yc, secs = run(prog, tokens)
            res["compiled_seconds"] = secs
            res["compiled_outputs"] = yc.tolist()
        if case is not None:
            case.tearDown()
        results.append(res)
        print(job["name"], "done", flush=True)
    open(out_path, "w").write(json.dumps(results))
    '''
)


def _timed(fn, x, repeats: int) -> float:
    jax.block_until_ready(fn(x))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        best = min(best, time.perf_counter() - t0)
    return best


def _ours(chain, prompts: np.ndarray, cfg: Config) -> dict[str, Any]:
    kinds = chain_kinds(chain)
    out: dict[str, Any] = {}
    batch = np.concatenate([prompts] * (-(-cfg.batch // len(prompts))))[: cfg.batch]
    for name, dtype in (("f32", jnp.float32), ("f64", jnp.float64)):
        with jax.enable_x64(dtype == jnp.float64):
            params = chain_params(chain, dtype)
            fn = jax.jit(lambda x, p=params: run_chain(p, kinds, x))
            xb = jnp.asarray(batch, dtype)
            secs = _timed(fn, xb, cfg.repeats)
            out[f"tokens_per_s_batched_{name}"] = batch.shape[0] * batch.shape[1] / secs
            x1 = jnp.asarray(batch[:1], dtype)
            out[f"tokens_per_s_single_{name}"] = batch.shape[1] / _timed(fn, x1, cfg.repeats)
            out[f"outputs_{name}"] = np.asarray(fn(jnp.asarray(prompts, dtype)), np.float64)
    return out


def _jobs(cfg: Config, tmp: Path) -> list[dict[str, Any]]:
    rng = np.random.default_rng(cfg.seed)
    jobs = []
    f = random_target(cfg.seed, 2, 2)
    for mode in cfg.modes:
        spec = Vec2VecSpec(in_dim=2, out_dim=2, mode=mode)
        q = vec2vec_queries(rng, max(cfg.published_prompts, 1), 2, cfg.vec2vec_n, spec.scale)
        toks = vec2vec_prompts(f, spec, cfg.vec2vec_n, q)
        jobs.append(dict(name=f"vec2vec/{mode}", program="vec2vec", spec_class="Vec2VecSpec",
                         spec=dataclasses.asdict(spec), tokens_array=toks, ideal=vec2vec_ideal(f, cfg.vec2vec_n, q),
                         read_last=1))
    keys, values = random_dictionary(rng, 3, cfg.tok2tok_pairs, 10)
    queries = keys[rng.choice(cfg.tok2tok_pairs, max(cfg.published_prompts, 1), replace=False)]
    for mode in cfg.modes:
        spec = Tok2TokSpec(key_length=3, mode=mode)
        jobs.append(dict(name=f"tok2tok/{mode}", program="tok2tok", spec_class="Tok2TokSpec",
                         spec=dataclasses.asdict(spec), tokens_array=tok2tok_prompts(queries, keys, values),
                         ideal=tok2tok_answers(queries, keys, values)[..., None], read_last=3))
    for i, job in enumerate(jobs):
        path = tmp / f"tokens_{i}.npy"
        np.save(path, job["tokens_array"][: cfg.published_prompts])
        job["tokens"] = str(path)
        job["compile"] = cfg.compile_published
    return jobs


def _published(cfg: Config, jobs: list[dict[str, Any]], tmp: Path) -> dict[str, dict[str, Any]]:
    driver = tmp / "driver.py"
    driver.write_text(_DRIVER)
    job_file = tmp / "jobs.json"
    keep = ("name", "program", "spec_class", "spec", "tokens", "compile")
    todo = [{k: j[k] for k in keep} for j in jobs]
    if cfg.compile_published:
        todo += [
            dict(j, name="published:" + j["name"], published_construction=True, compile=True)
            for j in todo
            if j["program"] == "tok2tok"
        ]
    job_file.write_text(json.dumps(todo))
    out_file = tmp / "published.json"
    programs_dir = str(Path(programs_pkg.__file__).parent)
    subprocess.run(
        [cfg.published_python, str(driver), cfg.published, programs_dir, str(job_file), str(out_file)], check=True
    )
    return {r["name"]: r for r in json.loads(out_file.read_text())}


def main(cfg: Config) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        jobs = _jobs(cfg, tmp)
        peer = _published(cfg, jobs, tmp) if cfg.published else {}
        for job in jobs:
            prog = {"vec2vec": vec2vec_program, "tok2tok": tok2tok_program}[job["program"]]
            spec = (Vec2VecSpec if job["program"] == "vec2vec" else Tok2TokSpec)(**job["spec"])
            t0 = time.perf_counter()
            chain = compile_program(prog(spec))
            compile_s = time.perf_counter() - t0
            ours = _ours(chain, job["tokens_array"], cfg)
            s = chain.summary()
            k = job["read_last"]
            row = {
                "name": job["name"],
                "tokens_per_prompt": int(job["tokens_array"].shape[1]),
                "compile_seconds": compile_s,
                "state_dims": s.state_dims,
                "recurrent_dims": s.recurrent_dims,
                "layers": len(chain.layers),
                "max_weight": s.max_weight,
                "parameters": s.parameters,
                **{key: v for key, v in ours.items() if not key.startswith("outputs")},
                "error_vs_ideal_f32": float(np.abs(ours["outputs_f32"][:, -k:] - job["ideal"]).max()),
                "error_vs_ideal_f64": float(np.abs(ours["outputs_f64"][:, -k:] - job["ideal"]).max()),
            }
            p = peer.get(job["name"])
            own = peer.get("published:" + job["name"])
            if own is not None:  # the published compiler on the published test suite's construction
                row["published_own_construction_state_dims"] = int(sum(own["state_dims"]))
                row["published_own_construction_compile_seconds"] = own["compile_seconds"]
                row["published_own_construction_tokens_per_s"] = own["interp_tokens"] / own["interp_seconds"]
                row["published_own_construction_compiled_error_vs_ideal"] = float(
                    np.abs(np.asarray(own["compiled_outputs"])[:, -k:] - job["ideal"][: len(own["outputs"])]).max()
                )
            if p is not None:
                ref = np.asarray(p["outputs"])
                n = len(ref)
                row["published_nodes"] = p["nodes"]
                row["published_tokens_per_s"] = p["interp_tokens"] / p["interp_seconds"]
                row["ratio_batched_f32_vs_published"] = row["tokens_per_s_batched_f32"] / row["published_tokens_per_s"]
                row["max_diff_vs_published_f64"] = float(np.abs(ours["outputs_f64"][:n] - ref).max())
                if "compile_seconds" in p:
                    row["published_compile_seconds"] = p["compile_seconds"]
                    row["published_state_dims"] = int(sum(p["state_dims"]))
                    row["published_recurrent_rows"] = p["recurrent_rows"]
                    row["published_compiled_tokens_per_s"] = p["interp_tokens"] / p["compiled_seconds"]
                    row["published_compiled_error_vs_ideal"] = float(
                        np.abs(np.asarray(p["compiled_outputs"])[:, -k:] - job["ideal"][:n]).max()
                    )
                    row["state_dims_ratio"] = row["published_state_dims"] / row["state_dims"]
            rows.append(row)
            line = (
                f"{row['name']:32s} ours: {row['tokens_per_s_batched_f32']:.3g} tok/s (batch {cfg.batch}, f32), "
                f"{row['tokens_per_s_single_f32']:.3g} (1 seq), state dims {row['state_dims']} "
                f"({row['recurrent_dims']} recurrent), compile {compile_s:.2f}s, "
                f"error f32 {row['error_vs_ideal_f32']:.1e}"
            )
            if p is not None:
                line += (
                    f" | published: {row['published_tokens_per_s']:.3g} tok/s, "
                    f"ratio {row['ratio_batched_f32_vs_published']:.0f}x"
                )
                if "published_state_dims" in row:
                    line += (
                        f", compiled state dims {row['published_state_dims']} ({row['state_dims_ratio']:.0f}x ours), "
                        f"compile {row['published_compile_seconds']:.1f}s"
                    )
                if "published_own_construction_state_dims" in row:
                    line += f", own construction {row['published_own_construction_state_dims']} state dims"
            print(line, flush=True)
    result = {"config": dataclasses.asdict(cfg), "device": str(jax.devices()[0]), "rows": rows}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(tyro.cli(Config))
