"""The local-learning task: what ``experiments.local_learning_train`` runs and ``experiments.local_learning_compare``
runs once per variant. From a ``LocalLearningConfig`` it loads the images, builds the network, its partition into
K gradient-isolated modules and the step of the chosen executor (``local_learning.train_step``: global BP,
checkpointed BP, local BP with optional SGR, BP-free), the evaluation of every head, and gives
``experiments.run.train`` its ``Task``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.configs.local_learning import DataConfig, LocalLearningConfig
from experiments.run import Task, train
from local_learning import ConfigError, data as data_lib, network
from local_learning import train_step as ts
from local_learning.mnist1d_source import STANDARD_SEED, load_mnist1d
from local_learning.mnist5k import load_mnist5k
from local_learning.npz_source import load_npz
from runtime.mesh import initialize_distributed, resolve_axis_sizes
from runtime.train_state import init_train_state, train_state_spec


def load_data(cfg: DataConfig, image_size: int):
    """(train source, test source, per-channel (mean, std))."""
    if cfg.source == "digits":
        train_src, test_src = data_lib.load_digits(image_size, seed=cfg.seed)
    elif cfg.source == "mnist5k":
        train_src, test_src = load_mnist5k(image_size, seed=cfg.seed)
    elif cfg.source == "mnist1d":
        train_src, test_src = load_mnist1d(image_size, seed=STANDARD_SEED + cfg.seed)
    elif cfg.source == "npz":
        train_src, test_src = load_npz(cfg.directory, cfg.npz_num_classes, image_size=image_size)
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
    pixels = data_lib.unit_scale(train_src.images).reshape(-1, train_src.images.shape[-1]).astype(np.float64)
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
        launcher_config=cfg,
        main_metrics=tuple(main),
        # Adam's normalised update is of order 1, so its step is the learning rate; SGD's depends on the gradients.
        peak_update=cfg.learning_rate if cfg.optimizer != "sgd" else None,
    )


def run(cfg: LocalLearningConfig):
    """Trains (resuming where a checkpoint exists)."""
    initialize_distributed(cfg.run.distributed)
    check_batch_divides_mesh(cfg)
    return train(cfg.run, make_task(cfg))


