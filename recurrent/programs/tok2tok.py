"""Discrete token-to-token maps in context: a dictionary lookup (Petrov et al., 2024, Sec. 5, Listing 2).

Prompt (1-dim integer tokens): the query key (L tokens), then (key, value) pairs of L tokens each. At the last L
tokens the program outputs the value stored under the query key, one token per step.

Program, with g = 0, 1, 2, ... the position, m1 = g mod L, m2 = g mod 2L (rotation counters) and IF one of the
conditional modes:

    is_prompt = g > L - 1/2;  is_key = m2 > L - 1/2;  is_copy = is_prompt and not is_key
    at_i      = (m1 == i)                                    i < L, as i - 1/2 < m1 < i + 1/2
    q_i       = state accumulating IF (not is_prompt and at_i) THEN tok          (the query)
    cur       = sum_i IF at_i THEN q_i                        (the query token aligned with this key slot)
    match     = (|tok - cur| < 1/2) and is_key
    buf       = shift register of the last L + 1 match bits   (s_t[0] = match_t, s_t[k] = s_{t-1}[k-1])
    found     = sum_{k=1..L} buf[k] > L - 1/2 at the first value token (g mod 2L = 0): the whole key matched
    start     = state accumulating IF (found and first value token) THEN g
    on        = g < start + L - 1/2                           (inside the matching value)
    r_i       = state accumulating IF (is_copy and on and at_i) THEN tok
    out       = sum_i IF at_i THEN r_i

The buffer has L + 1 slots because a state read in a step already holds that step's (non-key) bit. Keys must be
distinct. The gated value with the largest magnitude is the position g, so lambda (non-gated modes) must exceed
the prompt length; the default 1e6 allows prompts up to a million tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recurrent.errors import CompileError
from recurrent.lsrl import ForEach, Input, LinState, Linear, Variable, f_and, f_constant, f_larger, f_modulo_counter
from recurrent.lsrl import f_not, f_smaller
from recurrent.programs.conditionals import MODES, conditional


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tok2TokSpec:
    key_length: int = 3
    mode: str = "multiplicative_optimized"
    scale: float = 1024.0
    """Step slope; a power of two makes folding a step into a scaled reader exact (see passes.lower)."""
    large_constant: float = 1e6

    def __post_init__(self):
        if self.key_length < 1:
            raise CompileError(f"Tok2TokSpec.key_length={self.key_length}: must be at least 1")
        if self.mode not in MODES:
            raise CompileError(f"Tok2TokSpec.mode={self.mode!r}: must be one of {MODES}")
        if not self.scale > 0 or not self.large_constant > 0:
            raise CompileError("Tok2TokSpec.scale and .large_constant must be positive")


def _sum(parts: list[Variable]) -> Variable:
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def tok2tok_program(spec: Tok2TokSpec) -> ForEach:
    return ForEach(tok2tok_nodes(spec)["out"])


def tok2tok_nodes(spec: Tok2TokSpec) -> dict[str, Variable]:
    """The program's named intermediate values (counters, switches, registers, buffer, output), for probing."""
    L, s = spec.key_length, spec.scale

    def cond(c: Variable, v: Variable) -> Variable:
        return conditional(spec.mode, c, v, large_constant=spec.large_constant, scale=s)

    def accumulate(v: Variable, name: str) -> Variable:
        return LinState(v, np.eye(1), np.eye(1), [0.0], name=name)

    tok = Input(1)
    g = LinState(f_constant(tok, 1.0), np.eye(1), np.eye(1), [-1.0], name="Position")
    m1 = f_modulo_counter(tok, L)
    m2 = f_modulo_counter(tok, 2 * L)
    is_prompt = f_larger(g, L - 0.5, scale=s)
    is_key = f_larger(m2, L - 0.5, scale=s)
    is_copy = f_and(is_prompt, f_not(is_key), scale=s)
    first_copy = f_and(is_copy, f_smaller(m1, 0.5, scale=s), scale=s)
    at = [f_and(f_larger(m1, i - 0.5, scale=s), f_smaller(m1, i + 0.5, scale=s), scale=s) for i in range(L)]
    query = [accumulate(cond(f_and(f_not(is_prompt), at[i], scale=s), tok), f"Query{i}") for i in range(L)]
    cur = _sum([cond(at[i], query[i]) for i in range(L)])
    close = f_and(f_larger(tok, cur - 0.5, scale=s), f_smaller(tok, cur + 0.5, scale=s), scale=s)
    match = f_and(close, is_key, scale=s)
    shift = np.eye(L + 1, k=-1)
    e0 = np.zeros((L + 1, 1))
    e0[0, 0] = 1.0
    buf = LinState(match, shift, e0, np.zeros(L + 1), name="MatchBuffer")
    found = f_larger(Linear(buf, np.r_[0.0, np.ones(L)][None, :], [0.0], name="MatchCount"), L - 0.5, scale=s)
    start = accumulate(cond(f_and(found, first_copy, scale=s), g), "ValueStart")
    on = f_smaller(g, start + (L - 0.5), scale=s)
    copy_on = f_and(is_copy, on, scale=s)
    regs = [accumulate(cond(f_and(copy_on, at[i], scale=s), tok), f"Value{i}") for i in range(L)]
    out = _sum([cond(at[i], regs[i]) for i in range(L)])
    named = dict(g=g, m1=m1, m2=m2, is_prompt=is_prompt, is_key=is_key, is_copy=is_copy, first_copy=first_copy,
                 cur=cur, match=match, buf=buf, found=found, start=start, on=on, out=out)
    named.update({f"at{i}": at[i] for i in range(L)})
    named.update({f"query{i}": query[i] for i in range(L)})
    named.update({f"value{i}": regs[i] for i in range(L)})
    return named


def tok2tok_prompts(queries: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Tokens (B, L + 2 L P, 1) for query keys (B, L) and one dictionary of P pairs (keys, values: (P, L))."""
    queries, keys, values = (np.asarray(a, dtype=np.float64) for a in (queries, keys, values))
    L = keys.shape[1]
    if queries.shape[1] != L or values.shape != keys.shape:
        raise CompileError(f"tok2tok_prompts: queries {queries.shape}, keys {keys.shape}, values {values.shape}")
    body = np.concatenate([keys, values], axis=1).reshape(-1)
    toks = np.concatenate([queries, np.broadcast_to(body, (len(queries), len(body)))], axis=1)
    return toks[..., None]


def tok2tok_answers(queries: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The value stored under each query key (B, L): what the last L outputs must be."""
    index = {tuple(k): v for k, v in zip(np.asarray(keys).tolist(), np.asarray(values, dtype=np.float64))}
    return np.stack([index[tuple(q)] for q in np.asarray(queries).tolist()])


def random_dictionary(
    rng: np.random.Generator, key_length: int, pairs: int, vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` distinct random keys and random values, tokens in 1..vocab: (keys, values), each (P, L)."""
    if vocab**key_length < pairs:
        raise CompileError(f"random_dictionary: {pairs} distinct keys do not exist over {vocab}^{key_length}")
    seen: set[tuple[int, ...]] = set()
    keys = []
    while len(keys) < pairs:
        k = tuple(int(v) for v in rng.integers(1, vocab + 1, size=key_length))
        if k not in seen:
            seen.add(k)
            keys.append(k)
    values = rng.integers(1, vocab + 1, size=(pairs, key_length))
    return np.array(keys, dtype=np.float64), values.astype(np.float64)
