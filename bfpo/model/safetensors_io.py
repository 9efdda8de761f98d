"""The safetensors format read lazily (memory-mapped, any tensor slice without reading the rest) and written
tensor by tensor, with bfloat16 support through ``ml_dtypes``.

A file is: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the header, plus an
optional ``"__metadata__"`` dict of strings), then the raw little-endian data.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

from bfpo.errors import ModelError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
CODES = {dtype: code for code, dtype in DTYPES.items()}


class SafetensorsFile:
    """Tensors of one file as read-only NumPy views onto a memory map (nothing is read until sliced)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{self.path}: not a readable safetensors file ({e})") from e
        self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
        self.header: dict[str, dict] = header
        self._data_start = 8 + length
        self._map: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        code = self.header[name]["dtype"]
        if code not in DTYPES:
            raise ModelError(f"{self.path}: tensor {name!r} has dtype {code}, expected one of {sorted(DTYPES)}")
        return DTYPES[code]

    def get(self, name: str) -> np.ndarray:
        """A zero-copy view of the tensor."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = self.header[name]["data_offsets"]
        raw = self._map[self._data_start + begin: self._data_start + end]
        return raw.view(self.dtype(name)).reshape(self.shape(name))


def write(path: str | Path, entries: Iterable[tuple[str, tuple[int, ...], np.dtype]],
          produce: Callable[[str], np.ndarray], metadata: dict[str, str] | None = None) -> int:
    """Writes the tensors listed in ``entries`` (name, shape, dtype), asking ``produce(name)`` for each one's
    data only when it is written, so at most one tensor is in memory. Returns the number of data bytes."""
    entries = list(entries)
    header: dict[str, dict] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in entries:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": CODES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in entries:
            array = np.ascontiguousarray(produce(name), dtype=dtype)
            if array.shape != tuple(shape):
                raise ModelError(f"{path}: tensor {name!r} has shape {array.shape}, announced {tuple(shape)}")
            f.write(array.tobytes())
    return offset
