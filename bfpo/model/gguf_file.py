"""One GGUF file (llama.cpp's container) read strictly: metadata values by the type the file declares, the tensor
table, and raw tensor data, every malformation a ``ModelError`` naming the file and the key or tensor.

A value is returned only when its declared type is the one asked for: an integer key written as a string
(``"2"``), a float (``2.0``) or a bool is refused, never converted, so a header cannot silently change the model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from bfpo.errors import ModelError
from bfpo.model import gguf_quants

_INTEGER_TYPES = ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64")
_FLOAT_TYPES = ("FLOAT32", "FLOAT64")


class GGUFFile:
    """Metadata and tensors of one GGUF file (memory-mapped by the ``gguf`` package's reader)."""

    def __init__(self, path: str | os.PathLike):
        try:
            import gguf
        except ImportError as e:
            raise ModelError("reading GGUF needs the gguf package (`pip install gguf`)") from e
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such GGUF file (models are loaded from local files only)")
        try:
            self.reader = gguf.GGUFReader(str(self.path))
            tensors = list(self.reader.tensors)
        except Exception as e:  # noqa: BLE001 - the reader raises assorted errors on a corrupt file
            raise ModelError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
        self.tensors = {t.name: t for t in tensors}
        if len(self.tensors) != len(tensors):
            raise ModelError(f"{self.path}: the tensor table names a tensor twice")
        self._values: dict[str, tuple[tuple[str, ...], Any]] = {}
        for key, field in self.reader.fields.items():
            try:
                types = tuple(t.name for t in field.types)
                self._values[key] = (types, field.contents())
            except Exception as e:  # noqa: BLE001 - contents() decodes bytes the reader did not check
                raise ModelError(f"{self.path}: metadata key {key!r} cannot be decoded ({type(e).__name__}: {e})")

    def _typed(self, key: str, kinds: tuple[str, ...], what: str, element: tuple[str, ...] | None = None):
        types, value = self._values[key]
        if element is None:
            ok = len(types) == 1 and types[0] in kinds
        else:
            ok = len(types) == 2 and types[0] == "ARRAY" and types[1] in element
        if not ok:
            raise ModelError(f"{self.path}: metadata key {key!r} = {_short(value)} (type {'/'.join(types)}) must be "
                             f"{what}")
        return value

    def get_int(self, key: str, default: int | None = None, *, minimum: int = 0) -> int | None:
        if key not in self._values:
            return default
        value = self._typed(key, _INTEGER_TYPES, f"an integer >= {minimum}" if minimum else
                            "a non-negative integer")
        if value < minimum:
            raise ModelError(f"{self.path}: metadata key {key!r} = {value} must be "
                             f"{f'an integer >= {minimum}' if minimum else 'a non-negative integer'}")
        return int(value)

    def get_float(self, key: str, default: float | None = None) -> float | None:
        if key not in self._values:
            return default
        value = float(self._typed(key, _FLOAT_TYPES + _INTEGER_TYPES, "a number"))
        if not math.isfinite(value):
            raise ModelError(f"{self.path}: metadata key {key!r} = {value} must be a finite number")
        return value

    def get_str(self, key: str, default: str | None = None) -> str | None:
        return self._typed(key, ("STRING",), "a string") if key in self._values else default

    def get_strings(self, key: str) -> list[str] | None:
        return list(self._typed(key, (), "an array of strings", ("STRING",))) if key in self._values else None

    def get_ints(self, key: str) -> list[int] | None:
        if key not in self._values:
            return None
        return [int(v) for v in self._typed(key, (), "an array of integers", _INTEGER_TYPES)]

    def require(self, key: str, getter) -> Any:
        """``getter(key)`` (one of the ``get_*`` methods), refusing an absent key."""
        value = getter(key)
        if value is None:
            raise ModelError(f"{self.path}: metadata key {key!r} is missing")
        return value

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        """The NumPy shape (GGML stores dimension 0 innermost, so it is the reverse of the file's)."""
        return tuple(int(s) for s in reversed(self.tensors[name].shape.tolist()))

    def dequantized(self, name: str) -> np.ndarray:
        """float32 array of the tensor's shape."""
        t = self.tensors[name]
        return gguf_quants.dequantize(t.data, t.tensor_type.name, self.tensor_shape(name),
                                      what=f"{self.path}: tensor {name!r}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
