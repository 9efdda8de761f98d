"""Teacher-student regression with a small sharded MLP: the smallest real workload of the shared loop.

The teacher is a fixed random MLP; inputs are standard normal; the student minimises the mean squared error
    L(theta) = 1 / (B * D_out) * sum_{b, d} (f_theta(x_b)_d - t(x_b)_d)^2,
whose minimum is 0 when the student is at least as wide as the teacher. Batch ``i`` is a pure function of
(data_seed, i), so any run resumes onto exactly the same data.

Run: ``python -m experiments.mlp_regression --help``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import tyro

from experiments.configs.mlp_regression import MLPRegressionConfig
from experiments.planning import LauncherPlan, Program, train_step_program
from experiments.run import cli, train
from experiments.tasks.mlp_regression import make_task


def main(cfg: MLPRegressionConfig):
    return train(cfg.run, make_task(cfg))


def plan_program(cfg: MLPRegressionConfig, mesh) -> Program:
    """The loop's step on the abstract state and a batch of ``batch_size`` examples (experiments.plan)."""
    task = make_task(cfg)
    batch = {"x": jax.ShapeDtypeStruct((cfg.batch_size, cfg.student.in_dim), jnp.float32),
             "y": jax.ShapeDtypeStruct((cfg.batch_size, cfg.student.out_dim), jnp.float32)}
    return train_step_program(task.name, task.state_spec, task.step_fn, batch, cfg.run.grad_accum, mesh,
                              work={"examples": cfg.batch_size}, batch_axes=task.batch_axes)


PLAN = LauncherPlan(parse=lambda preset, args: tyro.cli(MLPRegressionConfig, args=list(args),
                                                        prog="experiments.mlp_regression"),
                    program=plan_program, presets=("default",))


if __name__ == "__main__":
    cli(MLPRegressionConfig, main)
