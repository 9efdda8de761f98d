"""``Matrix``: the published language's weight-matrix type, as a float64 NumPy array with its constructors.

Published programs build weights with ``Matrix.eye(n)``, ``Matrix.zeros(r, c)``, ``Matrix.hstack(...)`` and read
``m.rows``, ``m.cols`` and ``m.numpy()``; with this class they run unchanged. Vectors are (n, 1) columns as
there. Symbolic entries (sympy numbers, Fractions) are converted with ``float``; the interpreter's exact mode
reads them back as rationals (``recurrent.lsrl.exact``).
"""

from __future__ import annotations

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
        return arr.view(cls)

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    def numpy(self) -> np.ndarray:
        return np.asarray(self)

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
