"""Local learning with successive gradient reconciliation: train a CNN or ViT as K gradient-isolated modules
(or with global BP / gradient-checkpointed BP as baselines) through the shared loop, evaluating every head.

Run: ``python -m experiments.local_learning_train {digits,cifar10_resnet32_k4,imagenet_resnet101_k2,deit_s_k4}
[--partition.num-modules 2] [--local.reconcile.weight 0.5] [--executor bp] ...``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

from experiments.configs.local_learning import PRESETS, DataConfig, LocalLearningConfig
from experiments.planning import LauncherPlan, Program, parse_preset, train_step_program
from experiments.run import Task, cli, train
from local_learning import ConfigError, data as data_lib, network
from local_learning import train_step as ts
from runtime.mesh import MeshConfig, initialize_distributed, resolve_axis_sizes
from runtime.train_state import init_train_state, train_state_spec


def load_data(cfg: DataConfig, image_size: int):
    """(train source, test source, per-channel (mean, std))."""
    if cfg.source == "digits":
        train_src, test_src = data_lib.load_digits(image_size, seed=cfg.seed)
    elif cfg.source in ("cifar10", "cifar100"):
        if image_size != 32:
            raise ConfigError(f"DataConfig.image_size={image_size}: CIFAR images are 32x32")
        train_src, test_src = data_lib.load_cifar(cfg.directory, 10 if cfg.source == "cifar10" else 100)
    else:
        kw = dict(data_dir=cfg.directory or None, image_size=image_size, num_classes=cfg.tfds_num_classes,
                  resize=int(round(image_size / 0.875)))
        train_src = data_lib.TfdsSource(cfg.tfds_name, cfg.train_split, **kw)
        test_src = data_lib.TfdsSource(cfg.tfds_name, cfg.test_split, **kw)
        return train_src, test_src, data_lib.IMAGENET_MEAN_STD
    pixels = train_src.images.reshape(-1, train_src.images.shape[-1]).astype(np.float64) / 255.0
    mean_std = (tuple(pixels.mean(0)), tuple(np.maximum(pixels.std(0), 1e-3)))
    return train_src, test_src, mean_std


def make_optimizer(cfg: LocalLearningConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.run.steps, cfg.warmup_steps + 1))
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    if cfg.optimizer == "sgd":
        parts += [optax.add_decayed_weights(cfg.weight_decay),
                  optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov)]
    else:
        parts += [optax.adamw(schedule, weight_decay=cfg.weight_decay)]
    return optax.chain(*parts)


def step_function(cfg: LocalLearningConfig, netdef: network.NetworkDef, tx):
    if cfg.executor == "local":
        return ts.make_local_step(netdef, cfg.local, tx)
    if cfg.executor == "local_scan":
        return ts.make_scan_local_step(netdef, cfg.local, tx)
    return ts.make_bp_step(netdef, tx, remat=cfg.executor == "bp_checkpoint")


def make_evaluation(netdef: network.NetworkDef, test_src, cfg: LocalLearningConfig, mean_std):
    predict = ts.make_predict(netdef)
    n = len(test_src) if not cfg.data.eval_examples else min(cfg.data.eval_examples, len(test_src))
    source = test_src if n == len(test_src) else _Prefix(test_src, n)

    def evaluate(state) -> dict[str, float]:
        correct = np.zeros(netdef.num_modules)
        loss, count = 0.0, 0.0
        for batch in data_lib.eval_batches(source, cfg.eval_batch_size, mean_std):
            logits = jax.device_get(predict(state.params, jnp.asarray(batch["image"])))
            mask = batch["mask"]
            for k, lk in enumerate(logits):
                correct[k] += float(np.sum((np.argmax(lk, -1) == batch["label"]) * mask))
            ce = np.asarray(network.cross_entropy(jnp.asarray(logits[-1]), jnp.asarray(batch["label"])))
            loss += float(np.sum(ce * mask))
            count += float(mask.sum())
        out = {f"test_accuracy_{k + 1}": c / count for k, c in enumerate(correct)}
        out["test_accuracy"] = correct[-1] / count
        out["test_loss"] = loss / count
        return out

    return evaluate


@dataclasses.dataclass(frozen=True)
class _Prefix:
    source: Any
    n: int

    @property
    def name(self):
        return self.source.name

    def __len__(self):
        return self.n

    def get(self, indices):
        return self.source.get(indices)


def check_batch_divides_mesh(cfg: LocalLearningConfig) -> None:
    sizes = resolve_axis_sizes(cfg.run.mesh.as_dict(), jax.device_count())
    parts = sizes["data"] * sizes["fsdp"]
    for name in ("batch_size", "eval_batch_size"):
        if getattr(cfg, name) % parts:
            raise ConfigError(
                f"LocalLearningConfig.{name}={getattr(cfg, name)} is not divisible by the {parts} data-parallel "
                f"devices of the mesh {sizes}"
            )


@dataclasses.dataclass(frozen=True)
class StepParts:
    """The network split into modules, its initialiser and the step: everything but the data."""

    plan: Any
    netdef: network.NetworkDef
    init_params: Any
    state_spec: Any
    step_fn: Any


def step_parts(cfg: LocalLearningConfig) -> StepParts:
    model = cfg.model
    plan = network.plan_partition(model, cfg.partition, cfg.head)
    netdef, _ = network.abstract_network(model, plan, cfg.head, feedback=cfg.local.feedback,
                                         label_projection=cfg.local.label_projection)
    tx = make_optimizer(cfg)
    seed = cfg.run.seed

    def init_params():
        return network.build(model, plan, cfg.head, seed=seed, feedback=cfg.local.feedback,
                             label_projection=cfg.local.label_projection)[1]

    def state_spec(mesh):
        return train_state_spec(init_params, tx, mesh, seed=seed, trainable=ts.trainable,
                                precision=cfg.run.precision)

    return StepParts(plan=plan, netdef=netdef, init_params=init_params, state_spec=state_spec,
                     step_fn=step_function(cfg, netdef, tx))


def make_task(cfg: LocalLearningConfig) -> Task:
    model = cfg.model
    parts = step_parts(cfg)
    plan, netdef, tx, seed = parts.plan, parts.netdef, make_optimizer(cfg), cfg.run.seed

    def init_state(mesh):
        return init_train_state(parts.init_params, tx, mesh, seed=seed, trainable=ts.trainable,
                                precision=cfg.run.precision)[0]

    train_src, test_src, mean_std = load_data(cfg.data, model.image_size)
    if train_src.num_classes != model.num_classes:
        raise ConfigError(f"data has {train_src.num_classes} classes but the model {model.num_classes}")
    batches = data_lib.ImageBatches(train_src, cfg.batch_size, seed=cfg.data.seed, augment=cfg.data.augment,
                                    mean_std=mean_std, erasing=cfg.data.random_erasing)
    main = ["loss", "accuracy"] + [f"cos_{k}" for k in range(2, netdef.num_modules + 1)][:1]
    return Task(
        name=f"local_learning[{cfg.arch} K={netdef.num_modules} {cfg.executor} sgr={cfg.local.reconcile.weight}]",
        state_spec=parts.state_spec,
        init_state=init_state,
        step_fn=parts.step_fn,
        data=batches.iterator(),
        evals=(make_evaluation(netdef, test_src, cfg, mean_std),),
        config=dataclasses.asdict(cfg) | {"split_points": list(plan.split_points)},
        main_metrics=tuple(main),
        # Adam's normalised update is of order 1, so its step is the learning rate; SGD's depends on the gradients.
        peak_update=cfg.learning_rate if cfg.optimizer != "sgd" else None,
    )


def main(cfg: LocalLearningConfig):
    initialize_distributed(cfg.run.distributed)
    check_batch_divides_mesh(cfg)
    return train(cfg.run, make_task(cfg))


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
