"""``Matrix``: the published language's weight-matrix type, as a float64 NumPy array with its constructors.

Published programs build weights with ``Matrix.eye(n)``, ``Matrix.zeros(r, c)``, ``Matrix.hstack(...)`` and read
``m.rows``, ``m.cols`` and ``m.numpy()``; with this class they run unchanged. Vectors are (n, 1) columns as
there. Symbolic entries (sympy numbers, Fractions) are converted with ``float``; the interpreter's exact mode
reads them back as rationals (``recurrent.lsrl.exact``).
"""

from __future__ import annotations

import contextlib
import enum
from typing import Any

import numpy as np


def _floats(value: Any) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        obj = np.asarray(value, dtype=object)
        return np.vectorize(float, otypes=[np.float64])(obj) if obj.size else np.zeros(obj.shape)


class Matrix(np.ndarray):
    def __new__(cls, value: Any, mode: Any = None, **_: Any) -> "Matrix":
        arr = _floats(value)
        if arr.ndim == 1:
            arr = arr[:, None]
        out = arr.view(cls)
        out._mode = mode if isinstance(mode, MatrixMode) else get_global_matrix_mode()
        return out

    def __array_finalize__(self, obj: Any) -> None:
        self._mode = getattr(obj, "_mode", None) or get_global_matrix_mode()

    @property
    def mode(self) -> "MatrixMode":
        """The arithmetic mode this matrix was made in (its entries are float64 in both; SYMBOLIC reads them as
        rationals)."""
        return self._mode

    @property
    def matrix(self):
        """The published representation: a SciPy CSR matrix in NUMERIC mode, a SymPy ``SparseMatrix`` of the
        exact rational readings of the entries (``recurrent.lsrl.exact``) in SYMBOLIC mode."""
        if self._mode is MatrixMode.SYMBOLIC:
            import sympy

            from recurrent.lsrl.exact import rational

            a = self.numpy()
            return sympy.SparseMatrix(a.shape[0], a.shape[1],
                                      {(i, j): sympy.Rational(rational(a[i, j]).numerator, rational(a[i, j]).denominator)
                                       for i, j in zip(*np.nonzero(a))})
        import scipy.sparse

        return scipy.sparse.csr_matrix(self.numpy())

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    def numpy(self) -> np.ndarray:
        """The values as a plain array; a vector (a node's b, bias or init_state) as the published (n, 1) column."""
        a = np.asarray(self)
        return a.reshape(-1, 1) if a.ndim == 1 else a

    def ReLU(self) -> "Matrix":
        return np.maximum(self, 0.0).view(Matrix)

    @classmethod
    def eye(cls, dim: int, mode: Any = None) -> "Matrix":
        return cls(np.eye(dim))

    @classmethod
    def zeros(cls, rows: int, cols: int, mode: Any = None) -> "Matrix":
        return cls(np.zeros((rows, cols)))

    @classmethod
    def ones(cls, rows: int, cols: int, mode: Any = None) -> "Matrix":
        return cls(np.ones((rows, cols)))

    @classmethod
    def diag(cls, *blocks: Any) -> "Matrix":
        """Block-diagonal matrix; an int n stands for the identity of size n."""
        mats = [np.eye(b) if isinstance(b, (int, np.integer)) else np.atleast_2d(_floats(b)) for b in blocks]
        out = np.zeros((sum(m.shape[0] for m in mats), sum(m.shape[1] for m in mats)))
        r = c = 0
        for m in mats:
            out[r : r + m.shape[0], c : c + m.shape[1]] = m
            r, c = r + m.shape[0], c + m.shape[1]
        return cls(out)

    @classmethod
    def vstack(cls, *args: Any) -> "Matrix":
        return cls(np.vstack([np.atleast_2d(_floats(a)) for a in args]))

    @classmethod
    def hstack(cls, *args: Any) -> "Matrix":
        return cls(np.hstack([_floats(a).reshape(len(_floats(a)), -1) for a in args]))

    @classmethod
    def elementwise_multiplication(cls, m1: Any, m2: Any) -> "Matrix":
        return cls(_floats(m1) * _floats(m2))

    @classmethod
    def SliceMatrix(cls, input_dim: int, start: int, end: int, mode: Any = None) -> "Matrix":
        out = np.zeros((end - start, input_dim))
        out[np.arange(end - start), start + np.arange(end - start)] = 1.0
        return cls(out)


class MatrixMode(enum.Enum):
    """The published arithmetic modes. NUMERIC: float64. SYMBOLIC: exact rational arithmetic; here the
    interpreter's exact mode (weights read as the rationals their floats are, ``recurrent.lsrl.exact``), whose
    results are rounded to float64 once, at the end."""

    NUMERIC = "numeric"
    SYMBOLIC = "symbolic"


_mode = [MatrixMode.NUMERIC]


def set_global_matrix_mode(mode: MatrixMode) -> None:
    if not isinstance(mode, MatrixMode):
        raise ValueError(f"set_global_matrix_mode: expected a MatrixMode, got {mode!r}")
    _mode[0] = mode


def get_global_matrix_mode() -> MatrixMode:
    return _mode[0]


@contextlib.contextmanager
def matrix_mode(mode: MatrixMode):
    """``with matrix_mode(MatrixMode.SYMBOLIC): ...`` runs programs in exact arithmetic inside the block."""
    before = get_global_matrix_mode()
    set_global_matrix_mode(mode)
    try:
        yield
    finally:
        set_global_matrix_mode(before)
