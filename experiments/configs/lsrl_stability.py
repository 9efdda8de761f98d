"""Config of the LSRL numerical-stability sweep (experiments/lsrl_stability.py)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import tyro

from recurrent.errors import ConfigError
from recurrent.programs import MODES
from recurrent.targets.registry import TARGETS

PROGRAMS = ("vec2vec", "tok2tok")
DTYPES = ("float32", "float64")
NOISE_KINDS = ("relative", "absolute")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LSRLStabilityConfig:
    """Error of every compiled target against the float64 interpreter: vs prompt length, dtype, conditional mode
    (gated or lambda-based) and Gaussian noise on the compiled weights."""

    out_dir: Annotated[str, tyro.conf.arg(name="run.out-dir")] = "runs/lsrl_stability"
    """``--run.out-dir``, as every launcher takes it (the study runs each compiled model on one device, so it has
    no mesh to set)."""
    programs: tuple[str, ...] = PROGRAMS
    targets: tuple[str, ...] = ()
    """Registered targets to compile to (empty: every registered one, see ``experiments.lsrl_stability.TARGETS``)."""
    modes: tuple[str, ...] = MODES
    """Conditional modes; the gated ones (multiplicative*) are skipped on targets without a product (Elman)."""
    large_constant: float | None = 1e10
    """The lambda-based modes run once with the program's own lambda (a bound on the gated values: vec2vec 100,
    tok2tok 1e6) and once more with this one (the published default 1e10); None: the program's own only."""
    dtypes: tuple[str, ...] = DTYPES
    vec2vec_in_dim: int = 2
    vec2vec_out_dim: int = 2
    vec2vec_grid_sizes: tuple[int, ...] = (4, 8, 16, 32, 64)
    """N: prompts of 1 + N^in_dim tokens (17 ... 4097 for in_dim 2)."""
    tok2tok_key_length: int = 3
    tok2tok_pairs: tuple[int, ...] = (20, 100, 500, 900)
    """Dictionary sizes P: prompts of L + 2 L P tokens (123 ... 5403 for L = 3)."""
    tok2tok_vocab: int = 10
    queries: int = 16
    """Prompts per length (random queries into one random table)."""
    tolerance: float = 0.01
    """A query is wrong when one of its answer values is farther than this from the interpreter's."""
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    """relative: w <- w (1 + sigma xi); absolute: w <- w + sigma xi; xi ~ N(0, 1), non-zero weights only."""
    noise_sigmas: tuple[float, ...] = (0.0, 1e-13, 1e-11, 1e-9, 1e-7, 1e-5, 1e-3)
    noise_seeds: int = 5
    noise_dtype: str = "float64"
    """Noisy models run in float64, so the error is the noise's and not float32 rounding's."""
    noise_length_index: int = 1
    """The noise study uses the prompts of this entry of the grid sizes / pair counts."""
    seed: int = 0

    def __post_init__(self):
        _subset("programs", self.programs, PROGRAMS)
        _subset("modes", self.modes, MODES)
        _subset("dtypes", self.dtypes, DTYPES)
        _subset("noise_kinds", self.noise_kinds, NOISE_KINDS, allow_empty=True)
        _subset("targets", self.targets, tuple(TARGETS), allow_empty=True)
        for name in ("vec2vec_in_dim", "vec2vec_out_dim", "tok2tok_key_length", "queries", "noise_seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LSRLStabilityConfig.{name}={getattr(self, name)}: must be at least 1")
        if not self.vec2vec_grid_sizes or min(self.vec2vec_grid_sizes) < 1:
            raise ConfigError(f"LSRLStabilityConfig.vec2vec_grid_sizes={self.vec2vec_grid_sizes}: positive ints")
        if max(self.vec2vec_grid_sizes) * 4 >= 1024:
            raise ConfigError(
                f"LSRLStabilityConfig.vec2vec_grid_sizes: N = {max(self.vec2vec_grid_sizes)} cells are too narrow "
                "for the programs' step ramps of width 1/1024 (N < 256)"
            )
        if not self.tok2tok_pairs or min(self.tok2tok_pairs) < 1:
            raise ConfigError(f"LSRLStabilityConfig.tok2tok_pairs={self.tok2tok_pairs}: positive ints")
        if self.tok2tok_vocab**self.tok2tok_key_length < max(self.tok2tok_pairs):
            raise ConfigError(
                f"LSRLStabilityConfig.tok2tok_pairs: {max(self.tok2tok_pairs)} distinct keys do not exist over "
                f"tok2tok_vocab^tok2tok_key_length = {self.tok2tok_vocab}^{self.tok2tok_key_length}"
            )
        if self.large_constant is not None and not self.large_constant > 0:
            raise ConfigError(f"LSRLStabilityConfig.large_constant={self.large_constant}: must be positive or None")
        if not self.tolerance > 0:
            raise ConfigError(f"LSRLStabilityConfig.tolerance={self.tolerance}: must be positive")
        if any(s < 0 for s in self.noise_sigmas):
            raise ConfigError(f"LSRLStabilityConfig.noise_sigmas={self.noise_sigmas}: must be non-negative")
        if self.noise_dtype not in DTYPES:
            raise ConfigError(f"LSRLStabilityConfig.noise_dtype={self.noise_dtype!r}: one of {DTYPES}")
        shortest = min(len(self.vec2vec_grid_sizes), len(self.tok2tok_pairs))
        if not 0 <= self.noise_length_index < shortest:
            raise ConfigError(
                f"LSRLStabilityConfig.noise_length_index={self.noise_length_index}: must index both "
                f"vec2vec_grid_sizes and tok2tok_pairs (0 .. {shortest - 1})"
            )

    @property
    def noise_study(self) -> bool:
        return bool(self.noise_kinds) and bool(self.noise_sigmas)

    @classmethod
    def small(cls, out_dir: str = "runs/lsrl_stability_small") -> "LSRLStabilityConfig":
        """A couple of minutes on a 2-core CPU: one gated and one lambda-based mode, shorter prompts, 3 seeds."""
        return cls(
            out_dir=out_dir,
            modes=("direct", "multiplicative"),
            vec2vec_grid_sizes=(4, 8, 16, 32),
            tok2tok_pairs=(20, 50),
            queries=8,
            noise_sigmas=(0.0, 1e-12, 1e-9, 1e-6, 1e-3),
            noise_seeds=3,
            noise_length_index=0,
        )


def _subset(field: str, values: tuple[str, ...], allowed: tuple[str, ...], allow_empty: bool = False) -> None:
    bad = [v for v in values if v not in allowed]
    if bad or (not values and not allow_empty):
        raise ConfigError(f"LSRLStabilityConfig.{field}={values}: each must be one of {allowed}")
