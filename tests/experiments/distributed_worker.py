"""One process of a 2-process CPU run of the shared loop (launched by test_distributed.py, not collected by pytest).

    python tests/experiments/distributed_worker.py --port P --process-id I --num-processes 2 --out-dir D --result R

Each process has 4 simulated CPU devices (8 global). Every process trains the smoke MLP regression for 2 steps on a
data=2 x fsdp=4 mesh through ``experiments.run.train``; afterwards the final checkpoint is restored onto the same
(cross-process) shardings, gathered to every host, and process 0 writes the parameters to ``R`` as an ``.npz``
whose keys are the leaves' key paths.
"""

import os
import sys

if __name__ == "__main__":
    # Before JAX is imported anywhere: 4 CPU devices in this process, no accelerator. (Imported as a module, by the
    # test for ``make_config``, the file leaves the importing process's environment alone.)
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root

import argparse  # noqa: E402
import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import experiments.tasks.mlp_regression  # noqa: E402
import experiments.run  # noqa: E402
from experiments.configs.mlp_regression import MLPRegressionConfig  # noqa: E402
from runtime import sharding as sharding_lib  # noqa: E402
from runtime.checkpoint import Checkpointer  # noqa: E402
from runtime.mesh import DistributedConfig, MeshConfig, initialize_distributed, make_mesh  # noqa: E402

STEPS = 2


def make_config(out_dir: str, distributed: DistributedConfig) -> MLPRegressionConfig:
    """The config test_distributed.py also uses for its single-process reference (with the default DistributedConfig)."""
    cfg = MLPRegressionConfig.smoke(out_dir)
    run = dataclasses.replace(
        cfg.run,
        steps=STEPS,
        log_every=STEPS,
        mesh=MeshConfig(data=2, fsdp=-1),
        distributed=distributed,
        progress=False,
        tensorboard=False,
        plot=False,
    )
    return dataclasses.replace(cfg, run=run)


def restore_final_state(cfg: MLPRegressionConfig, task, mesh: jax.sharding.Mesh):
    """The train state of the run's final checkpoint, restored onto ``task``'s shardings on ``mesh``.

    ``experiments.run.train`` does not hand back its state, so its checkpoint is the way to the final parameters.
    """
    with sharding_lib.activate(mesh):
        abstract, shardings = task.state_spec(mesh)
    with Checkpointer(str(Path(cfg.run.out_dir).absolute() / "checkpoints")) as checkpointer:
        assert checkpointer.all_steps() == [cfg.run.steps], checkpointer.all_steps()
        state, _ = checkpointer.restore(abstract, shardings)
    return state


def flatten(params) -> dict[str, np.ndarray]:
    """Host parameters as {key path string: array}, e.g. ``"['layers'][0]['kernel'].value"``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()

    distributed = DistributedConfig(
        coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes, process_id=args.process_id
    )
    cfg = make_config(args.out_dir, distributed)
    # make_task builds the teacher and the eval batch eagerly (JAX computations), and jax.distributed must start
    # before the first one: start it here; train() calls initialize_distributed again, which is then a no-op.
    initialize_distributed(cfg.run.distributed)
    assert jax.process_count() == args.num_processes, jax.process_count()
    assert jax.local_device_count() == 4 and jax.device_count() == 4 * args.num_processes, jax.devices()

    task = experiments.tasks.mlp_regression.make_task(cfg)
    summary = experiments.run.train(cfg.run, task)
    assert summary.steps_done == STEPS, summary

    state = restore_final_state(cfg, task, make_mesh(cfg.run.mesh))
    kernel = jax.tree.leaves(state.params)[0]
    assert not kernel.is_fully_addressable, "the parameters should span both processes"
    # tiled=True: a global (non-fully-addressable) array comes back whole, in its global shape.
    params, step = multihost_utils.process_allgather((state.params, state.step), tiled=True)

    if jax.process_index() == 0:
        arrays = flatten(params)
        arrays["__step__"] = np.asarray(int(step))
        tmp = args.result + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, args.result)  # the test never sees a half-written file
    # Nobody leaves (and tears the coordinator down) while the other process is still gathering.
    multihost_utils.sync_global_devices("distributed_worker_done")
    print(f"process {jax.process_index()}: done", flush=True)


if __name__ == "__main__":
    main()
