"""Two small programs: more ones than zeros so far, and t mod d."""

from __future__ import annotations

import numpy as np

from recurrent.lsrl import ForEach, Input, LinState, f_larger, f_modulo_counter


def ones_vs_zeros_program(scale: float = 1000) -> ForEach:
    """For a 0/1 stream x: 1 iff #ones(x_1..x_t) > #zeros(x_1..x_t). Two counters and one comparison."""
    x = Input(1)
    ones = LinState(x, A=np.eye(1), B=np.eye(1), init_state=[0.0], name="Ones")
    zeros = LinState(1 - x, A=np.eye(1), B=np.eye(1), init_state=[0.0], name="Zeros")
    return ForEach(f_larger(ones, zeros + 0.5, scale=scale))


def ones_vs_zeros_answers(bits_BxT: np.ndarray) -> np.ndarray:
    ones = np.cumsum(bits_BxT, axis=-1)
    zeros = np.arange(1, bits_BxT.shape[-1] + 1) - ones
    return (ones > zeros).astype(np.float64)


def modulo_counter_program(divisor: int) -> ForEach:
    """t mod d at token t = 0, 1, ... (the 1-dim input is ignored)."""
    return ForEach(f_modulo_counter(Input(1), divisor))
