"""Preference fine-tuning of a causal LM with BFPO (or another registered objective) through the shared loop.

Streams of preference pairs (a safety stream, optionally the paper's helpfulness buffer) are tokenized into
bucket-padded batches; reference log-probs are precomputed once and cached on disk (or taken from a frozen copy,
or from the LoRA base weights); ``bfpo.train_step`` runs one forward per stream and AdamW on the trainable subset
(``down_proj`` by default). Held-out preference metrics (loss, safety accuracy) are reported every
``--run.eval-every`` steps; checkpoints and ``--run.resume`` come from ``experiments.run`` (the data position is
in the checkpoint). At the end the trained model (LoRA merged) is written as a Hugging Face safetensors directory
``<out_dir>/hf`` with the tokenizer files.

Run: ``python -m experiments.bfpo_train tiny --help`` (presets: tiny, smollm2, zephyr-7b, mistral-7b).
"""

from __future__ import annotations

import dataclasses

import tyro

from bfpo.data.tokenized import batch_spec
from bfpo.errors import BFPOError
from bfpo.objectives import get_objective
from experiments.configs.bfpo_train import BFPOTrainConfig, TrainConfigError, upgraded_args
from experiments.planning import LauncherPlan, Program, parse_preset, train_step_program
from experiments.run import cli
from experiments.tasks.bfpo import model_config, run, step_parts
from runtime.mesh import MeshConfig

PRESETS = {"tiny": BFPOTrainConfig.tiny, "smollm2": BFPOTrainConfig.smollm2, "zephyr-7b": BFPOTrainConfig.zephyr_7b,
           "mistral-7b": BFPOTrainConfig.mistral_7b}


def main(cfg: BFPOTrainConfig):
    return run(cfg)


def config_type():
    """One tyro subcommand per preset; every field can be overridden after it."""
    return tyro.extras.subcommand_type_from_defaults({name: make() for name, make in PRESETS.items()})


# --- planning (experiments.plan) ---------------------------------------------------------------------------------


def plan_program(cfg: BFPOTrainConfig, mesh) -> Program:
    """The step ``train`` runs, on the abstract train state and a batch of every stream at the longest bucket."""
    model_cfg = model_config(cfg)
    parts = step_parts(cfg, model_cfg)
    length = max(cfg.buckets)
    mismatched = get_objective(cfg.objective).needs_mismatched
    batch = {s.name: batch_spec(s.batch_size, length, mismatched=mismatched, reference=cfg.layout.reference == "batch")
             for s in cfg.streams}
    pairs = sum(s.batch_size for s in cfg.streams)
    rows_per_pair = 3 if mismatched else 2
    return train_step_program(f"bfpo_train[{cfg.objective}]", parts.state_spec, parts.step_fn, batch,
                              cfg.run.grad_accum, mesh,
                              work={"pairs": pairs, "tokens": pairs * rows_per_pair * length})


def with_execution(cfg: BFPOTrainConfig, **changes) -> BFPOTrainConfig:
    model = dataclasses.replace(cfg.model, execution=dataclasses.replace(cfg.model.execution, **changes))
    return dataclasses.replace(cfg, model=model)


def plan_alternatives(cfg: BFPOTrainConfig, sizes) -> list[tuple[str, BFPOTrainConfig]]:
    """Memory-saving variants: all devices on fsdp, full remat, twice the micro-batches, attention query chunks."""
    out = []
    n = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
    if sizes["fsdp"] != n:
        out.append((f"--run.mesh.data 1 --run.mesh.fsdp {n} --run.mesh.tensor 1",
                    dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, mesh=MeshConfig(data=1, fsdp=n)))))
    if cfg.model.execution.remat != "full":
        out.append(("--model.remat full", with_execution(cfg, remat="full")))
    accum = cfg.run.grad_accum * 2
    if all(s.batch_size % accum == 0 and (s.batch_size // accum) % (sizes["data"] * sizes["fsdp"]) == 0
           for s in cfg.streams):
        out.append((f"--run.grad-accum {accum}",
                    dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, grad_accum=accum))))
    chunk = cfg.model.execution.attention_query_chunk
    for q in (512, 256):
        if (chunk is None or chunk > q) and max(cfg.buckets) > q:
            out.append((f"--model.attention-query-chunk {q}", with_execution(cfg, attention_query_chunk=q)))
            break
    return out


PLAN = LauncherPlan(
    parse=lambda preset, args: parse_preset(config_type(), preset, upgraded_args(args), "experiments.bfpo_train"),
    program=plan_program,
    presets=tuple(PRESETS),
    without_remat=lambda cfg: with_execution(cfg, remat="none"),
    alternatives=plan_alternatives,
)


if __name__ == "__main__":
    cli(config_type(), main, expected_errors=(BFPOError, TrainConfigError), upgrade=upgraded_args)
