"""BENCHMARKS.md's table "Planned on accelerators": every row planned by ``experiments.plan`` in its own process.

Each row is a planner command (launcher, preset, target, launcher flags); the report of each is written to
``runs/bench/planned/<row>.json`` and the table is printed as Markdown. These are projections from the compilers
(memory from the compiled program, FLOPs counted on the step's jaxpr, a roofline step time from the chips'
published figures), not measurements.

Run: ``python -m experiments.bench.planned [--only m7_1024_v5p ...]`` (about half an hour on 2 cores).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

GiB = 1 << 30
L4096 = ("--max-length", "4096", "--max-prompt-length", "2048", "--buckets", "4096")
DPO = ("--objective", "dpo", "--trainable=", "--model.param-dtype", "float32")
BP = ("--executor", "bp", "--partition.num-modules", "1", "--local.reconcile.weight", "0")
NO_SGR = ("--local.reconcile.weight", "0")
GEN = ("--batch", "64", "--prompt-length", "1024", "--max-new-tokens", "512")
TP = ("--run.mesh.fsdp", "1", "--run.mesh.tensor", "-1")

# name -> (what, launcher, preset, target, launcher flags)
ROWS: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {
    "m7_1024_v5p": ("BFPO Mistral-7B, down_proj (float32 masters), bf16, remat, T 1024", "bfpo_train", "mistral-7b",
                     "tpu-v5p-8", ()),
    "m7_1024_h100": ("BFPO Mistral-7B, down_proj (float32 masters), bf16, remat, T 1024", "bfpo_train", "mistral-7b",
                     "h100x8", ()),
    "m7_4096_v5p": ("BFPO Mistral-7B, down_proj (float32 masters), bf16, remat, T 4096", "bfpo_train", "mistral-7b",
                     "tpu-v5p-8", L4096),
    "m7_4096_h100": ("BFPO Mistral-7B, down_proj (float32 masters), bf16, remat, T 4096", "bfpo_train", "mistral-7b",
                     "h100x8", L4096),
    "l1b_v5p": ("DPO full fine-tune, Llama-3.2-1B shape, f32 master / bf16 compute, T 1024", "bfpo_train",
                "mistral-7b", "tpu-v5p-8", DPO + ("--model.architecture", "llama3_2_1b")),
    "l1b_h100": ("DPO full fine-tune, Llama-3.2-1B shape, f32 master / bf16 compute, T 1024", "bfpo_train",
                 "mistral-7b", "h100x8", DPO + ("--model.architecture", "llama3_2_1b")),
    "l8b_v5p": ("DPO full fine-tune, Llama-3-8B shape, f32 master / bf16 compute, T 1024", "bfpo_train",
                "mistral-7b", "tpu-v5p-8", DPO + ("--model.architecture", "llama3_8b")),
    "l8b_h100": ("DPO full fine-tune, Llama-3-8B shape, f32 master / bf16 compute, T 1024", "bfpo_train",
                 "mistral-7b", "h100x8", DPO + ("--model.architecture", "llama3_8b")),
    "hft_l2_7b_sft_h100": ("Harmful fine-tuning, Llama-2-7B, LoRA r8, alignment step, SFT, T 512", "hft",
                           "llama2_7b", "h100x8", ("--methods", "sft")),
    "hft_l2_7b_booster_h100": ("Harmful fine-tuning, Llama-2-7B, LoRA r8, alignment step, Booster, T 512", "hft",
                               "llama2_7b", "h100x8", ("--methods", "booster")),
    "gen_m7_h100_fsdp": ("Generation, Mistral-7B bf16, 64 x (1024 prompt + 512 new tokens), greedy, fsdp",
                         "lm_generate", "mistral_7b", "h100x8", GEN),
    "gen_m7_h100_tp": ("Generation, Mistral-7B bf16, 64 x (1024 prompt + 512 new tokens), greedy, tensor parallel",
                       "lm_generate", "mistral_7b", "h100x8", GEN + TP),
    "gen_m7_v5p_tp": ("Generation, Mistral-7B bf16, 64 x (1024 prompt + 512 new tokens), greedy, tensor parallel",
                      "lm_generate", "mistral_7b", "tpu-v5p-8", GEN + TP),
    "lsrl_4096": ("LSRL vec2vec (multiplicative, N 64), forward, batch 4096", "lsrl_approx", "default", "tpu-v5e-4",
                  ("--queries", "4096")),
    "resnet32_bp": ("CIFAR ResNet-32, batch 1024, global BP", "local_learning_train", "cifar10_resnet32_k4",
                    "tpu-v5e-4", BP),
    "resnet32_k4": ("CIFAR ResNet-32, batch 1024, K = 4", "local_learning_train", "cifar10_resnet32_k4", "tpu-v5e-4",
                    NO_SGR),
    "resnet32_k4_sgr": ("CIFAR ResNet-32, batch 1024, K = 4 + SGR", "local_learning_train", "cifar10_resnet32_k4",
                        "tpu-v5e-4", ()),
    "deit_s_bp": ("DeiT-S 224px, batch 1024, global BP", "local_learning_train", "deit_s_k4", "tpu-v5e-4", BP),
    "deit_s_k4": ("DeiT-S 224px, batch 1024, K = 4", "local_learning_train", "deit_s_k4", "tpu-v5e-4", NO_SGR),
    "deit_s_k4_sgr": ("DeiT-S 224px, batch 1024, K = 4 + SGR", "local_learning_train", "deit_s_k4", "tpu-v5e-4", ()),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    only: tuple[str, ...] = ()
    """Plan only these rows (default: all)."""
    out_dir: str = "runs/bench/planned"
    timeout_s: int = 1200


def command(name: str) -> list[str]:
    _, launcher, preset, target, flags = ROWS[name]
    cmd = ["python", "-m", "experiments.plan", "--launcher", launcher, "--preset", preset, "--target", target,
           "--no-advice"]
    return cmd + (["--", *flags] if flags else [])


def row(name: str, report: dict) -> str:
    what, *_ = ROWS[name]
    cmd = " ".join(a if a and " " not in a else repr(a) for a in command(name))
    t = report["target"]["name"]
    m = report["memory"]
    if m.get("compiler_refused"):
        return f"| {what} | {t} | does not fit (compiler) | no | {report['flops']['per_device']:.3g} | - | - | - | `{cmd}` |"
    p = report["projected"]
    rate = ", ".join(f"{v:,.0f} {k.removesuffix('_per_s')}/s" for k, v in p.items()
                     if k.endswith("_per_s") and k.removesuffix("_per_s") in ("tokens", "images", "prompts"))
    size = f"{m['total'] / GiB:.2f}" if m["total"] >= GiB / 100 else f"{m['total'] / (1 << 20):.2f} MiB"
    return (f"| {what} | {t} | {size} | {'yes' if m['fits'] else 'no'} | "
            f"{report['flops']['per_device']:.3g} | {p['step_s'] * 1e3:,.4g} ({report['roofline']['bound']}) | "
            f"{rate} | {p['mfu'] * 100:.0f}% | `{cmd}` |")


HEADER = ("| workload | target | GiB per device | fits | FLOPs per device per step | projected step ms (bound) | "
          "projected throughput | projected MFU | command |\n|---|---|---|---|---|---|---|---|---|")


def main(cfg: Config) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = cfg.only or tuple(ROWS)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    reports = {}
    for name in names:
        path = out / f"{name}.json"
        cmd = [sys.executable, *command(name)[1:]]
        cmd.insert(cmd.index("--no-advice") + 1, "--json")
        cmd.insert(cmd.index("--json") + 1, str(path))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=cfg.timeout_s)
        if done.returncode:
            print(f"{name}: failed\n{done.stderr[-2000:]}", flush=True)
            continue
        reports[name] = json.loads(path.read_text())
        print(done.stdout.strip(), flush=True)
    print("\n" + HEADER)
    for name, report in reports.items():
        print(row(name, report))
    return reports


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Config))
