"""The stability study's programs, prompts and answer errors: the paper's two approximation programs in a
conditional mode, random prompts of several sizes, and the error of a model against the interpreter. Used by the
study (``experiments.lsrl_stability``) and the target throughput benchmark (``experiments.bench.lsrl_targets``),
each passing its own config (anything with the fields of ``StudyShape``).

For a prompt x with answer positions P (the last token for vec2vec, the last L for tok2tok) the error is
    e(x) = max_{t in P, o} |model(x)_{t,o} - interpreter(x)_{t,o}|   (NaN counts as infinite).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from recurrent.lsrl import ForEach
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_program, tok2tok_prompts
from recurrent.programs.vec2vec import Vec2VecSpec, random_target, vec2vec_program, vec2vec_prompts
from recurrent.programs.vec2vec import vec2vec_queries


class StudyShape(Protocol):
    """The sizes the study's programs and prompts are built from."""

    vec2vec_in_dim: int
    vec2vec_out_dim: int
    vec2vec_grid_sizes: tuple[int, ...]
    tok2tok_key_length: int
    tok2tok_pairs: tuple[int, ...]
    tok2tok_vocab: int
    queries: int
    seed: int


def x64(dtype) -> contextlib.AbstractContextManager:
    return jax.enable_x64(True) if jnp.dtype(dtype) == jnp.float64 else contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class Prompts:
    tokens_BxTxD: np.ndarray
    """Prompts, each zero-padded after its end to the longest (the models are causal: padding changes nothing)."""
    lengths_B: np.ndarray
    sizes_B: np.ndarray
    """The size parameter of each prompt: grid size N (vec2vec) or pair count P (tok2tok)."""
    read_last: int
    """The answer is at the last ``read_last`` tokens of each prompt."""

    def select(self, size: int) -> "Prompts":
        keep = self.sizes_B == size
        length = int(self.lengths_B[keep].max())
        return Prompts(self.tokens_BxTxD[keep, :length], self.lengths_B[keep], self.sizes_B[keep], self.read_last)


def program_for(name: str, cfg: StudyShape, mode: str, large_constant: float | None) -> ForEach:
    if name == "vec2vec":
        kw = {} if large_constant is None else {"large_constant": large_constant}
        return vec2vec_program(Vec2VecSpec(in_dim=cfg.vec2vec_in_dim, out_dim=cfg.vec2vec_out_dim, mode=mode, **kw))
    kw = {} if large_constant is None else {"large_constant": large_constant}
    return tok2tok_program(Tok2TokSpec(key_length=cfg.tok2tok_key_length, mode=mode, **kw))


def own_large_constant(name: str) -> float:
    """The program's own lambda: a bound on the values it gates."""
    return Vec2VecSpec().large_constant if name == "vec2vec" else Tok2TokSpec().large_constant


def sizes_of(name: str, cfg: StudyShape) -> tuple[int, ...]:
    return cfg.vec2vec_grid_sizes if name == "vec2vec" else cfg.tok2tok_pairs


def make_prompts(name: str, cfg: StudyShape) -> Prompts:
    """``cfg.queries`` random prompts per size; one random target (vec2vec) or table (tok2tok) per size."""
    parts, sizes = [], []
    for size in sizes_of(name, cfg):
        rng = np.random.default_rng([cfg.seed, size])
        if name == "vec2vec":
            spec = Vec2VecSpec(in_dim=cfg.vec2vec_in_dim, out_dim=cfg.vec2vec_out_dim)
            f = random_target(cfg.seed, spec.in_dim, spec.out_dim)
            q = vec2vec_queries(rng, cfg.queries, spec.in_dim, size, spec.scale)
            parts.append(vec2vec_prompts(f, spec, size, q))
        else:
            keys, values = random_dictionary(rng, cfg.tok2tok_key_length, size, cfg.tok2tok_vocab)
            pick = rng.choice(size, cfg.queries, replace=cfg.queries > size)
            parts.append(tok2tok_prompts(keys[pick], keys, values))
        sizes += [size] * cfg.queries
    longest = max(p.shape[1] for p in parts)
    tokens = np.concatenate([np.pad(p, ((0, 0), (0, longest - p.shape[1]), (0, 0))) for p in parts])
    lengths = np.concatenate([np.full(len(p), p.shape[1]) for p in parts])
    read_last = 1 if name == "vec2vec" else cfg.tok2tok_key_length
    return Prompts(tokens, lengths, np.array(sizes), read_last)


def answer_errors(y_BxTxO: np.ndarray, ref_BxTxO: np.ndarray, lengths_B: np.ndarray, read_last: int) -> np.ndarray:
    """Per prompt, max |y - ref| over its last ``read_last`` tokens and every output; NaN counts as infinite."""
    pos_BxK = lengths_B[:, None] - read_last + np.arange(read_last)[None, :]
    y = np.take_along_axis(np.asarray(y_BxTxO, np.float64), pos_BxK[..., None], axis=1)
    ref = np.take_along_axis(np.asarray(ref_BxTxO, np.float64), pos_BxK[..., None], axis=1)
    err = np.abs(y - ref).reshape(len(y), -1).max(axis=1)
    return np.where(np.isnan(err), np.inf, err)


def error_stats(errors: np.ndarray, tolerance: float) -> dict[str, float]:
    return {
        "queries": len(errors),
        "error_median": float(np.median(errors)),
        "error_max": float(np.max(errors)),
        "wrong_fraction": float(np.mean(~(errors <= tolerance))),
    }
