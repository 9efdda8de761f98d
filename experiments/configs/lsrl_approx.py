"""Config of the LSRL in-context approximation sweep (experiments/lsrl_approx.py)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import tyro

from recurrent.errors import ConfigError
from recurrent.programs import MODES
from runtime.mesh import MeshConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class LSRLApproxConfig:
    """Compile the vec2vec program once per conditional mode; prompt it with random targets at grid sizes N."""

    out_dir: Annotated[str, tyro.conf.arg(name="run.out-dir")] = "runs/lsrl_approx"
    """``--run.out-dir``, as every launcher takes it."""
    mesh: Annotated[MeshConfig, tyro.conf.arg(name="run.mesh")] = MeshConfig()
    """``--run.mesh.*``: the prompts are split over its data x fsdp devices (the compiled weights are replicated)."""
    in_dim: int = 1
    out_dim: int = 1
    modes: tuple[str, ...] = MODES
    grid_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    """N: the prompt holds N^in_dim cells (1 + N^in_dim tokens)."""
    targets: int = 8
    """Random smooth target functions f: [0, 1]^in_dim -> [-1, 1]^out_dim."""
    queries: int = 64
    """Queries per target and grid size (one prompt each, batched and sharded over the mesh's data axes)."""
    dtype: str = "float32"
    """float32, float64 or bfloat16: the compiled model's execution dtype."""
    associative: bool = False
    """Run the state layers with lax.associative_scan instead of lax.scan."""
    scale: float = 1024.0
    """Step slope of the comparisons (cells must be wider than about 4/scale; a power of two folds exactly)."""
    large_constant: float = 100.0
    """lambda of the non-gated modes; must exceed every |f| and |x| (the published default is 1e10)."""
    seed: int = 0

    def __post_init__(self):
        for name in ("in_dim", "out_dim", "targets", "queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LSRLApproxConfig.{name}={getattr(self, name)}: must be at least 1")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ConfigError(f"LSRLApproxConfig.modes={self.modes}: each must be one of {MODES}")
        if not self.grid_sizes or min(self.grid_sizes) < 1:
            raise ConfigError(f"LSRLApproxConfig.grid_sizes={self.grid_sizes}: positive ints expected")
        if max(self.grid_sizes) * 4.0 / self.scale >= 1.0:
            raise ConfigError(
                f"LSRLApproxConfig.grid_sizes: N = {max(self.grid_sizes)} cells are too narrow for step ramps of "
                f"width 1/scale = {1 / self.scale:g}; lower N or raise scale"
            )
        if self.dtype not in ("float32", "float64", "bfloat16"):
            raise ConfigError(f"LSRLApproxConfig.dtype={self.dtype!r}: float32, float64 or bfloat16")
        if not self.large_constant > 0 or not self.scale > 0:
            raise ConfigError("LSRLApproxConfig.scale and .large_constant must be positive")

    @classmethod
    def demo(cls, out_dir: str = "runs/demo/lsrl_approx") -> "LSRLApproxConfig":
        """A seconds-long sweep: two modes (gated and lambda-based), N up to 32, two targets."""
        return cls(
            out_dir=out_dir,
            modes=("multiplicative_optimized", "direct"),
            grid_sizes=(2, 4, 8, 16, 32),
            targets=2,
            queries=16,
        )
