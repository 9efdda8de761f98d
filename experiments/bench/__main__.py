"""``make bench``: every benchmark module in ``experiments/bench`` with its default settings, one after another.

A benchmark module defines ``Config`` (a frozen dataclass whose defaults are the recorded setting) and
``main(cfg) -> dict``, which prints a one-line result and writes its JSON under ``runs/bench/``. The figures in
BENCHMARKS.md come from these runs.

Run: ``python -m experiments.bench``.
"""

from __future__ import annotations

import importlib
import pkgutil
import time

import experiments.bench as bench_package


def benchmark_modules() -> list[str]:
    """Names of the benchmark modules (every module of the package not starting with an underscore)."""
    return sorted(
        f"{bench_package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(bench_package.__path__)
        if not info.name.startswith("_") and not info.ispkg
    )


def main() -> dict[str, dict]:
    results = {}
    for name in benchmark_modules():
        module = importlib.import_module(name)
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        results[name] = module.main(module.Config())
        print(f"   ({time.perf_counter() - t0:.0f}s)", flush=True)
    return results


if __name__ == "__main__":
    main()
