"""Checkpoints restore onto other meshes, keep the last N, and a crash mid-save never yields a bad restore."""

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.mlp_regression import MLPConfig, MLPRegressionConfig
from experiments.tasks.mlp_regression import make_task
from runtime import CheckpointError, make_mesh
from runtime.checkpoint import Checkpointer
from runtime.train_state import TrainState

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def task():
    return make_task(MLPRegressionConfig.smoke("/tmp/unused"))


def perturbed(state: TrainState, step: int) -> TrainState:
    """A state whose every leaf differs from the initial one, so a wrong restore cannot pass."""
    return jax.jit(lambda s: s.replace(
        step=jnp.asarray(step, jnp.int32),
        params=jax.tree.map(lambda x: x + 0.5, s.params),
        opt_state=jax.tree.map(lambda x: x + 1, s.opt_state),
        rng=s.rng + 3,
    ), donate_argnums=0)(state)


@pytest.mark.parametrize("target_axes", [{"data": 2, "fsdp": 4}, {"fsdp": 2, "tensor": 4}])
def test_checkpoint_written_on_one_mesh_restores_on_another(task, tmp_path, target_axes):
    source_mesh = make_mesh({"fsdp": 8})
    state = perturbed(task.init_state(source_mesh), 7)
    expected = jax.device_get(state)
    with Checkpointer(str(tmp_path / "ckpt")) as ckpt:
        ckpt.save(state, {"data": {"index": 7}, "config": {"a": 1}})
    target_mesh = make_mesh(target_axes)
    abstract, shardings = task.state_spec(target_mesh)
    with Checkpointer(str(tmp_path / "ckpt")) as ckpt:
        restored, meta = ckpt.restore(abstract, shardings)
    assert meta == {"data": {"index": 7}, "config": {"a": 1}}
    chex.assert_trees_all_equal(jax.device_get(restored), expected)
    kernel = restored.params["layers"][0]["kernel"].get_value()
    assert kernel.sharding == shardings.params["layers"][0]["kernel"].get_value()
    assert kernel.sharding.mesh.shape == target_mesh.shape


def test_keeps_the_last_n(task, tmp_path):
    mesh = make_mesh({"data": 8})
    state = task.init_state(mesh)
    with Checkpointer(str(tmp_path), keep=2) as ckpt:
        for step in range(1, 6):
            ckpt.save(state, {"data": {}}, step=step)
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
        assert ckpt.latest_step() == 5


def test_restore_errors(task, tmp_path):
    mesh = make_mesh({"data": 8})
    abstract, shardings = task.state_spec(mesh)
    with Checkpointer(str(tmp_path)) as ckpt:
        with pytest.raises(CheckpointError, match="no complete checkpoint in"):
            ckpt.restore(abstract, shardings)
        ckpt.save(task.init_state(mesh), {"data": {}})
        ckpt.wait()
        with pytest.raises(CheckpointError, match="no checkpoint for step 3"):
            ckpt.restore(abstract, shardings, step=3)
    other = make_task(dataclasses.replace(MLPRegressionConfig.smoke("/tmp/unused"), student=MLPConfig(hidden=32)))
    wrong, wrong_shardings = other.state_spec(mesh)
    with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(
            CheckpointError, match=r"cannot be restored into the train state: ValueError: Requested shape"):
        ckpt.restore(wrong, wrong_shardings)
    with pytest.raises(CheckpointError, match="keep=0"):
        Checkpointer(str(tmp_path), keep=0)


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import jax, jax.numpy as jnp
    from runtime.checkpoint import Checkpointer
    from runtime.train_state import TrainState

    def state(step, value, n):
        return TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.full((n,), value, jnp.float32)},
                          opt_state={}, rng=jax.random.PRNGKey(0), trainable=(True,))

    n = int(sys.argv[2])
    ckpt = Checkpointer(sys.argv[1], async_save=True)
    ckpt.save(state(1, 1.0, n), {"data": {"index": 1}})
    ckpt.wait()
    ckpt.save(state(2, 2.0, n), {"data": {"index": 2}})  # returns while the write goes on in the background
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_crash_during_save_leaves_the_previous_checkpoint_restorable(tmp_path):
    n = 64 * 1024 * 1024  # 256 MB: the background write is still running when the process dies
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path), str(n)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == -9, proc.stderr[-3000:]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("1",)]
    assert leftovers, "the save of step 2 should have been interrupted, leaving a temporary directory"
    assert "2" not in [p.name for p in tmp_path.iterdir()]
    mesh = make_mesh({"data": 8})
    like = TrainState(step=jnp.zeros((), jnp.int32), params={"w": jax.ShapeDtypeStruct((n,), jnp.float32)},
                      opt_state={}, rng=jax.ShapeDtypeStruct((2,), jnp.uint32), trainable=(True,))
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = TrainState(step=repl, params={"w": repl}, opt_state={}, rng=repl, trainable=(True,))
    with Checkpointer(str(tmp_path)) as ckpt:
        assert ckpt.all_steps() == [1]
        restored, meta = ckpt.restore(like, shardings)
    assert int(restored.step) == 1 and meta["data"] == {"index": 1}
    np.testing.assert_array_equal(np.asarray(restored.params["w"][:1000]), np.ones(1000, np.float32))


def test_trainable_only_checkpoints_restore_with_checked_frozen_params(tmp_path):
    mesh = make_mesh({"data": 8})
    params = {"frozen": jnp.arange(8.0), "train": jnp.ones(3)}
    state = TrainState(step=jnp.asarray(4, jnp.int32), params=params, opt_state={"m": jnp.full(3, 2.0)},
                       rng=jax.random.PRNGKey(1), trainable=(False, True))
    state = state.replace(params={"frozen": params["frozen"], "train": params["train"] * 5})
    shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), state)
    with Checkpointer(str(tmp_path), frozen_params=False) as ckpt:
        ckpt.save(state, {"data": {}})
        ckpt.wait()
        assert not ckpt.holds_frozen_params()
        with pytest.raises(CheckpointError, match="holds only the trainable parameters"):
            ckpt.restore(state, shardings)
        restored, _ = ckpt.restore(state, shardings, frozen=params)
        chex.assert_trees_all_equal(jax.device_get(restored.params), jax.device_get(state.params))
        chex.assert_trees_all_equal(jax.device_get(restored.opt_state), jax.device_get(state.opt_state))
        changed = {"frozen": params["frozen"] + 1, "train": params["train"]}
        with pytest.raises(CheckpointError, match="frozen parameter 'frozen' differs"):
            ckpt.restore(state, shardings, frozen=changed)
    # On disk: the trainable leaf (index 1 of the two) and nothing of the frozen one.
    import orbax.checkpoint as ocp

    assert list(ocp.StandardCheckpointer().metadata(tmp_path / "4" / "state").item_metadata.tree["params"]) == ["00001"]


def test_a_frozen_base_changed_in_ways_that_keep_each_sum_abs_is_refused(tmp_path):
    mesh = make_mesh({"data": 2, "fsdp": 4})
    layers = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8))  # a scanned stack of 4 layers
    params = {"layers": layers, "head": jnp.arange(-4.0, 4.0), "train": jnp.ones(3)}
    state = TrainState(step=jnp.asarray(2, jnp.int32), params=params, opt_state={}, rng=jax.random.PRNGKey(1),
                       trainable=(False, False, True))
    shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), state)
    sharded = {"layers": jax.device_put(layers, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, "data", "fsdp"))), "head": params["head"], "train": params["train"]}
    changes = {
        "a matrix's sign flipped": {**params, "layers": layers.at[1].multiply(-1)},
        "two layers swapped": {**params, "layers": layers.at[0].set(layers[3]).at[3].set(layers[0])},
        "entries permuted": {**params, "head": params["head"][::-1]},
    }
    with Checkpointer(str(tmp_path), frozen_params=False) as ckpt:
        ckpt.save(state, {"data": {}})
        ckpt.wait()
        # The same base, laid out over the mesh differently, hashes the same.
        restored, _ = ckpt.restore(state, shardings, frozen=sharded)
        chex.assert_trees_all_equal(jax.device_get(restored.params), jax.device_get(params))
        for what, changed in changes.items():
            with pytest.raises(CheckpointError, match="frozen parameter '(layers|head)' differs"):
                ckpt.restore(state, shardings, frozen=changed)


def test_checkpoints_recorded_with_sum_abs_checksums_still_resume(tmp_path):
    params = {"frozen": jnp.arange(8.0), "train": jnp.ones(3)}
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state={}, rng=jax.random.PRNGKey(1),
                       trainable=(False, True))
    legacy = {"leaves": [0], "checksums": [28.0]}
    with Checkpointer(str(tmp_path), frozen_params=False) as ckpt:
        ckpt._check_frozen(1, state, params, legacy)
        with pytest.raises(CheckpointError, match=r"'frozen' differs .*its sum \|x\| changed"):
            ckpt._check_frozen(1, state, {**params, "frozen": params["frozen"] + 1}, legacy)


def test_the_frozen_base_is_hashed_once_per_run_not_per_save(tmp_path, monkeypatch):
    import runtime.checkpoint as checkpoint_lib

    calls = []
    real = checkpoint_lib.frozen_hashes
    monkeypatch.setattr(checkpoint_lib, "frozen_hashes", lambda *a: calls.append(1) or real(*a))
    params = {"frozen": jnp.arange(8.0), "train": jnp.ones(3)}
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state={}, rng=jax.random.PRNGKey(1),
                       trainable=(False, True))
    with Checkpointer(str(tmp_path), frozen_params=False, async_save=False) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(state, {"data": {}}, step=step)
        recorded = [ckpt.read_meta(step)["frozen_params"]["hashes"] for step in (1, 2, 3)]
    assert len(calls) == 1 and recorded[0] == recorded[1] == recorded[2] == real(params, (False, True))
