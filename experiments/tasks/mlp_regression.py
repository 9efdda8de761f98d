"""Teacher-student regression with a small sharded MLP: the smallest real workload of the shared loop.

The teacher is a fixed random MLP; inputs are standard normal; the student minimises the mean squared error
    L(theta) = 1 / (B * D_out) * sum_{b, d} (f_theta(x_b)_d - t(x_b)_d)^2,
whose minimum is 0 when the student is at least as wide as the teacher. Batch ``i`` is a pure function of
(data_seed, i), so any run resumes onto exactly the same data.

The task of ``experiments.mlp_regression``, also the workload the loop's own tests and benchmarks run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.configs.mlp_regression import MLPConfig, MLPRegressionConfig
from experiments.run import Task
from runtime import sharding as sharding_lib
from runtime.batches import IndexedBatches
from runtime.metrics import Metric, to_host
from runtime.step import make_train_step
from runtime.train_state import init_train_state, train_state_spec

EVAL_OFFSET = 1 << 30  # eval batches come from indices no training run reaches


class MLP(nnx.Module):
    """GELU MLP whose weights carry logical axes (``embed`` in/out, ``mlp`` hidden)."""

    def __init__(self, cfg: MLPConfig, *, rngs: nnx.Rngs):
        dims = [cfg.in_dim] + [cfg.hidden] * cfg.depth + [cfg.out_dim]
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            # Hidden-to-hidden kernels shard their input dimension over fsdp and their output over tensor,
            # like the first layer; the last layer is the transpose.
            last = i == len(dims) - 2
            k_axes = ("mlp", "embed") if last and i > 0 else ("embed", "mlp")
            layers.append(
                nnx.Linear(
                    a,
                    b,
                    kernel_init=sharding_lib.logical(nnx.initializers.lecun_normal(), *k_axes),
                    bias_init=sharding_lib.logical(nnx.initializers.zeros_init(), k_axes[1]),
                    rngs=rngs,
                )
            )
        self.layers = nnx.List(layers)

    def __call__(self, x_BxI: jax.Array) -> jax.Array:
        h = x_BxI
        for layer in self.layers[:-1]:
            h = jax.nn.gelu(layer(h))
            h = sharding_lib.constrain(h, ("batch", "act_mlp"))
        return self.layers[-1](h)


def teacher_fn(cfg: MLPRegressionConfig):
    """The fixed teacher as a NumPy-in, NumPy-out function (float64 targets cast to float32)."""
    teacher = MLP(cfg.teacher, rngs=nnx.Rngs(cfg.data_seed))
    weights = [(np.asarray(l.kernel[...], np.float64), np.asarray(l.bias[...], np.float64)) for l in teacher.layers]

    def gelu(x):
        return np.asarray(jax.nn.gelu(jnp.asarray(x, jnp.float32)), np.float64)

    def apply(x):
        h = x
        for i, (w, b) in enumerate(weights):
            h = h @ w + b
            if i < len(weights) - 1:
                h = gelu(h)
        # A scale of 3 keeps the targets well above float32 noise so the loss curve is informative.
        return (3.0 * h).astype(np.float32)

    return apply


def make_batch_fn(cfg: MLPRegressionConfig, batch_size: int):
    teacher = teacher_fn(cfg)

    def make_batch(index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((cfg.data_seed, index))
        x = rng.standard_normal((batch_size, cfg.student.in_dim)).astype(np.float32)
        return {"x": x, "y": teacher(x)}

    return make_batch


def loss_fn(graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    """Mean squared error; ``metrics["loss"]`` counts every output entry."""
    del rng
    model = nnx.merge(graphdef, params)
    pred = model(batch["x"])
    err = jnp.square(pred - batch["y"])
    metrics = {"loss": Metric.from_values(err), "abs_error": Metric.from_values(jnp.abs(pred - batch["y"]))}
    return jnp.mean(err), metrics


def make_task(cfg: MLPRegressionConfig) -> Task:
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: MLP(cfg.student, rngs=nnx.Rngs(0))))
    tx = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)
    seed = cfg.run.seed

    def init_params():
        return nnx.state(MLP(cfg.student, rngs=nnx.Rngs(seed)), nnx.Param)

    def state_spec(mesh):
        return train_state_spec(init_params, tx, mesh, seed=seed, trainable=cfg.trainable,
                                precision=cfg.run.precision)

    def init_state(mesh):
        return init_train_state(init_params, tx, mesh, seed=seed, trainable=cfg.trainable,
                                precision=cfg.run.precision)[0]

    loss = lambda params, batch, rng: loss_fn(graphdef, params, batch, rng)  # noqa: E731
    eval_batch = make_batch_fn(cfg, cfg.eval_examples)(EVAL_OFFSET)
    eval_jit = jax.jit(lambda params, batch: loss(params, batch, None)[1])

    def evaluate(state) -> dict[str, float]:
        return to_host(eval_jit(state.params, eval_batch))

    return Task(
        name="mlp_regression",
        state_spec=state_spec,
        init_state=init_state,
        step_fn=make_train_step(loss, tx, grad_accum=cfg.run.grad_accum),
        data=IndexedBatches(make_batch_fn(cfg, cfg.batch_size)),
        evals=(evaluate,),
        config=dataclasses.asdict(cfg),
        peak_update=cfg.learning_rate,
    )
