"""Local learning with successive gradient reconciliation: train a CNN or ViT as K gradient-isolated modules
(or with global BP / gradient-checkpointed BP as baselines) through the shared loop, evaluating every head.

Run: ``python -m experiments.local_learning_train {digits,cifar10_resnet32_k4,imagenet_resnet101_k2,deit_s_k4}
[--partition.num-modules 2] [--local.reconcile.weight 0.5] [--executor bp] ...``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import tyro

from experiments.configs.local_learning import PRESETS, LocalLearningConfig
from experiments.planning import LauncherPlan, Program, parse_preset, train_step_program
from experiments.run import cli
from experiments.tasks.local_learning import run, step_parts
from local_learning import ConfigError
from runtime.mesh import MeshConfig


def main(cfg: LocalLearningConfig):
    return run(cfg)


def config_type():
    """One tyro subcommand per preset; every field can be overridden after it."""
    return tyro.extras.subcommand_type_from_defaults({name: make() for name, make in PRESETS.items()})


# --- planning (experiments.plan) ---------------------------------------------------------------------------------


def batch_spec(cfg: LocalLearningConfig) -> dict:
    """Shapes and dtypes of a training batch (``data.ImageBatches``): normalised float32 NHWC images, int32 labels."""
    size = cfg.model.image_size
    return {"image": jax.ShapeDtypeStruct((cfg.batch_size, size, size, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((cfg.batch_size,), jnp.int32)}


def plan_program(cfg: LocalLearningConfig, mesh) -> Program:
    parts = step_parts(cfg)
    size = cfg.model.image_size
    return train_step_program(f"local_learning[{cfg.arch} K={parts.netdef.num_modules} {cfg.executor}"
                              f" sgr={cfg.local.reconcile.weight}]", parts.state_spec, parts.step_fn, batch_spec(cfg),
                              1, mesh, work={"images": cfg.batch_size, "pixels": cfg.batch_size * size * size})


def plan_alternatives(cfg: LocalLearningConfig, sizes) -> list[tuple[str, LocalLearningConfig]]:
    """Memory-saving variants: all devices on fsdp, the checkpointed SGR pass, half the batch."""
    out = []
    n = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
    if sizes["fsdp"] != n:
        out.append((f"--run.mesh.data 1 --run.mesh.fsdp {n} --run.mesh.tensor 1",
                    dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, mesh=MeshConfig(data=1, fsdp=n)))))
    rc = cfg.local.reconcile
    if rc.weight and not rc.remat:
        out.append(("--local.reconcile.remat", dataclasses.replace(
            cfg, local=dataclasses.replace(cfg.local, reconcile=dataclasses.replace(rc, remat=True)))))
    if cfg.executor == "bp":
        out.append(("--executor bp_checkpoint", dataclasses.replace(cfg, executor="bp_checkpoint")))
    half = cfg.batch_size // 2
    if half and half % (sizes["data"] * sizes["fsdp"]) == 0:
        out.append((f"--batch-size {half}", dataclasses.replace(cfg, batch_size=half)))
    return out


def _without_remat(cfg: LocalLearningConfig) -> LocalLearningConfig:
    rc = dataclasses.replace(cfg.local.reconcile, remat=False)
    executor = "bp" if cfg.executor == "bp_checkpoint" else cfg.executor
    return dataclasses.replace(cfg, executor=executor, local=dataclasses.replace(cfg.local, reconcile=rc))


PLAN = LauncherPlan(
    parse=lambda preset, args: parse_preset(config_type(), preset, args, "experiments.local_learning_train"),
    program=plan_program,
    presets=tuple(PRESETS),
    without_remat=_without_remat,
    alternatives=plan_alternatives,
)


if __name__ == "__main__":
    cli(config_type(), main, expected_errors=(ConfigError,))
