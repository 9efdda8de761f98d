"""Config of the teacher-student regression run (the foundation's smoke workload)."""

from __future__ import annotations

import dataclasses

from experiments.run import RunConfig, RunError


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPConfig:
    in_dim: int = 16
    hidden: int = 64
    depth: int = 2
    out_dim: int = 8

    def __post_init__(self):
        for name in ("in_dim", "hidden", "depth", "out_dim"):
            if getattr(self, name) < 1:
                raise RunError(f"MLPConfig.{name}={getattr(self, name)}: must be at least 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPRegressionConfig:
    """A student MLP learns a fixed random teacher MLP from Gaussian inputs (exact targets, known optimum 0)."""

    run: RunConfig = RunConfig(out_dir="runs/mlp_regression", steps=300, log_every=10, eval_every=100,
                               checkpoint_every=100)
    student: MLPConfig = MLPConfig()
    teacher: MLPConfig = MLPConfig(hidden=32, depth=1)
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    trainable: str | None = None
    """Regex over parameter paths selecting what trains (default: everything)."""
    eval_examples: int = 512
    data_seed: int = 1234

    def __post_init__(self):
        if self.batch_size < 1:
            raise RunError(f"MLPRegressionConfig.batch_size={self.batch_size}: must be at least 1")
        if self.batch_size % self.run.grad_accum:
            raise RunError(
                f"MLPRegressionConfig.batch_size={self.batch_size} is not divisible by run.grad_accum={self.run.grad_accum}"
            )
        if (self.student.in_dim, self.student.out_dim) != (self.teacher.in_dim, self.teacher.out_dim):
            raise RunError("student and teacher must share in_dim and out_dim")

    @classmethod
    def smoke(cls, out_dir: str, **run_overrides) -> "MLPRegressionConfig":
        """A few-second configuration for tests and benchmarks."""
        run = RunConfig(**{"out_dir": out_dir, "steps": 20, "log_every": 5, "progress": False, **run_overrides})
        return cls(run=run, batch_size=32)
