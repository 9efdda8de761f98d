"""``make demo``: each system's small preset on bundled data, on the CPU, then where the reports and plots are.

Run: ``python -m experiments.demo [--out-root runs/demo]``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import tyro

from experiments import bfpo_compare, bfpo_eval, lm_generate, local_learning_compare, lsrl_approx, mlp_regression
from experiments.configs.bfpo_eval import BFPOEvalConfig, EvalModel
from experiments.configs.lm_generate import LMGenerateConfig
from experiments.run_dir import LaunchConfig
from experiments.configs.lsrl_approx import LSRLApproxConfig
from experiments.configs.mlp_regression import MLPRegressionConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    out_root: str = "runs/demo"
    """Every demo writes under this directory (replaced on each run)."""


def main(cfg: DemoConfig) -> dict[str, str]:
    root = Path(cfg.out_root)
    if root.exists():
        shutil.rmtree(root)
    reports: dict[str, str] = {}
    t0 = time.perf_counter()

    base = MLPRegressionConfig()
    shared_loop = dataclasses.replace(
        base, run=dataclasses.replace(base.run, out_dir=str(root / "shared_loop_mlp"))
    )
    summary = mlp_regression.main(shared_loop)
    reports["shared loop (teacher-student MLP): loss curves"] = summary.plot or summary.out_dir

    lsrl = lsrl_approx.main(LSRLApproxConfig.demo(out_dir=str(root / "lsrl_approx")))
    reports["LSRL vec2vec approximation: error vs N"] = lsrl.plot or lsrl.out_dir

    chat = lm_generate.main(LMGenerateConfig(run=LaunchConfig(out_dir=str(root / "lm_generate"))))
    reports["SmolLM2-135M (GGUF) chat replies"] = chat.report

    bfpo_dir = root / "bfpo_compare"
    bfpo_compare.demo(out_dir=str(bfpo_dir))
    reports["BFPO vs DPO on the synthetic safety task: table"] = str(bfpo_dir / "results.md")
    reports["BFPO vs DPO: helpfulness-harmlessness plot"] = str(bfpo_dir / "tradeoff.png")
    eval_dir = root / "bfpo_eval"
    bfpo_eval.main(BFPOEvalConfig(
        model=EvalModel(kind="run", path=str(bfpo_dir / "runs" / "bfpo")), limit=32, max_new_tokens=24,
        tasks=("synthetic_harmful", "synthetic_benign", "synthetic_benign_refusal", "synthetic_safe_preference"),
        judges=("ground-truth",), batch_size=32, run=LaunchConfig(out_dir=str(eval_dir))))
    reports["the demo's BFPO run evaluated from its run directory (bfpo_eval)"] = str(eval_dir / "results.md")
    local_dir = root / "local_learning"
    local_learning_compare.demo(out_dir=str(local_dir))
    reports["local learning on digits (BP vs K=4, K=4 + SGR): table"] = str(local_dir / "results.md")
    reports["local learning: accuracy and memory vs K"] = str(local_dir / "accuracy_vs_k.png")

    print(f"\nDemo finished in {time.perf_counter() - t0:.0f}s. Reports and plots:")
    for name, path in reports.items():
        print(f"  {name}: {Path(path).absolute()}")
    return reports


if __name__ == "__main__":
    main(tyro.cli(DemoConfig))
