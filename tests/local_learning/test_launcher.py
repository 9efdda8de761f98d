"""The launcher end to end on a CIFAR-format fixture (8 data-parallel devices), its presets and its errors."""

import json
import pickle

import numpy as np
import pytest
import tyro

from experiments import local_learning_train as launcher
from experiments.tasks import local_learning as local_task
from experiments.configs.local_learning import DataConfig, LocalLearningConfig
from experiments.run import RunConfig
from local_learning import ConfigError, DataError
from local_learning.reconcile import ReconcileConfig
from local_learning.partition import PartitionConfig
from local_learning.train_step import LocalConfig


def write_cifar10(folder, n=16):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": rng.integers(0, 10, n).tolist()}))


def config(tmp_path, **kw):
    base = dict(
        run=RunConfig(out_dir=str(tmp_path / "run"), steps=3, log_every=1, progress=False, tensorboard=False,
                      plot=False, async_checkpoint=False),
        arch="resnet8",
        partition=PartitionConfig(num_modules=2),
        local=LocalConfig(reconcile=ReconcileConfig(weight=0.0)),
        data=DataConfig(source="cifar10", directory=str(tmp_path / "cifar"), image_size=32, eval_examples=12),
        batch_size=8,
        eval_batch_size=8,
    )
    return LocalLearningConfig(**{**base, **kw})


def test_train_on_cifar_fixture_data_parallel(tmp_path):
    write_cifar10(tmp_path / "cifar")
    summary = launcher.main(config(tmp_path))
    assert summary.steps_done == 3
    assert set(summary.eval_metrics) >= {"test_accuracy", "test_accuracy_1", "test_accuracy_2", "test_loss"}
    # 12 examples evaluated (a full batch and a padded one): accuracies are multiples of 1/12.
    for key in ("test_accuracy_1", "test_accuracy_2"):
        assert abs(summary.eval_metrics[key] * 12 - round(summary.eval_metrics[key] * 12)) < 1e-9
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert {"loss_1", "loss_2", "cos_2", "accuracy"} <= set(train[-1])
    assert all(np.isfinite(r["loss"]) for r in train)


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="batch_size=12 is not divisible by the 8 data-parallel devices"):
        local_task.check_batch_divides_mesh(config(tmp_path, batch_size=12))
    with pytest.raises(ConfigError, match="DataConfig.directory"):
        DataConfig(source="cifar10")
    with pytest.raises(DataError, match="no CIFAR-10 data"):
        local_task.make_task(config(tmp_path))
    with pytest.raises(ConfigError, match="arch='resnet33'"):
        config(tmp_path, arch="resnet33")


def test_presets_parse_and_override():
    cfg = tyro.cli(launcher.config_type(), args=["digits", "--partition.num-modules", "2",
                                                 "--local.reconcile.weight", "0.25"])
    assert cfg.partition.num_modules == 2 and cfg.local.reconcile.weight == 0.25
    assert cfg.arch == "resnet20" and cfg.data.source == "digits"
    big = tyro.cli(launcher.config_type(), args=["imagenet_resnet101_k2"])
    assert big.arch == "resnet101" and big.partition.split == "balanced_memory" and big.data.image_size == 224
    k4 = LocalLearningConfig.digits().with_modules(1, 0.0, executor="bp")
    assert k4.partition.num_modules == 1 and k4.executor == "bp" and k4.local.reconcile.weight == 0.0
