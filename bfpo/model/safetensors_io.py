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


def _check_layout(path: Path, header: dict, data_bytes: int) -> None:
    """Every entry's dtype, shape and byte range: inside the data, of the shape's size, none overlapping."""
    spans = []
    for name, entry in header.items():
        what = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise ModelError(f"{what}: expected an object with dtype, shape and data_offsets, got {entry!r:.80}")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(code, str) or code not in DTYPES:
            raise ModelError(f"{what} has dtype {code!r}, expected one of {sorted(DTYPES)}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ModelError(f"{what}: shape {shape!r:.80} is not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise ModelError(f"{what}: data_offsets {offsets!r:.80} are not [begin, end] within the file's "
                             f"{data_bytes} data bytes")
        need = int(np.prod(shape, dtype=np.int64)) * DTYPES[code].itemsize
        if offsets[1] - offsets[0] != need:
            raise ModelError(f"{what}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, but shape "
                             f"{shape} of {code} needs {need}")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise ModelError(f"{path}: tensors {first!r} and {second!r} overlap in the data (bytes {begin}..{end})")


class SafetensorsFile:
    """Tensors of one file as read-only NumPy views onto a memory map (nothing is read until sliced)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > size - 8:
                    raise ModelError(f"{self.path}: header length {length} exceeds the file's {size} bytes "
                                     "(truncated or not a safetensors file)")
                header = json.loads(f.read(length))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{self.path}: not a readable safetensors file ({e})") from e
        if not isinstance(header, dict):
            raise ModelError(f"{self.path}: the header is a JSON {type(header).__name__}, expected an object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise ModelError(f"{self.path}: __metadata__ is a {type(metadata).__name__}, expected an object")
        self.metadata: dict[str, str] = metadata
        self.header: dict[str, dict] = header
        self._data_start = 8 + length
        _check_layout(self.path, header, size - self._data_start)
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
