"""Reading the local files that evaluation sets come in: JSONL, JSON, CSV/TSV and plain text, each record with
the line it starts on, so that every problem can be reported as ``file:line``.

Nothing is downloaded: these readers take a path to a copy the user already has.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bfpo.data.readers import DuplicateKeyError, duplicate_key_message, loads
from bfpo.errors import DataError

Record = tuple[int, dict[str, Any]]
"""(line number where the record starts, counting from 1; the record)."""


def where(path: str | os.PathLike, line: int) -> str:
    return f"{path}:{line}"


def read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (evaluation sets are read from local copies only)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e


def read_jsonl(path: str | os.PathLike) -> list[Record]:
    """One JSON object per non-blank line."""
    path = Path(path)
    out = []
    for line, text in enumerate(read_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{where(path, line)}: not valid JSON ({e.msg})") from e
        except DuplicateKeyError as e:
            raise DataError(f"{where(path, line)}: {duplicate_key_message(e)}") from e
        if not isinstance(record, dict):
            raise DataError(f"{where(path, line)}: expected a JSON object, got {type(record).__name__}")
        out.append((line, record))
    return out


def read_json(path: str | os.PathLike, key: str | None = None) -> list[Record]:
    """A JSON array of objects (or the array under ``key``, e.g. BIG-bench's ``examples``). JSON keeps no line
    numbers per element, so records are numbered by their index in the array, counting from 1."""
    path = Path(path)
    try:
        data = loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{where(path, e.lineno)}: not valid JSON ({e.msg})") from e
    except DuplicateKeyError as e:
        raise DataError(f"{path}: {duplicate_key_message(e)}") from e
    if key is not None:
        if not isinstance(data, Mapping) or key not in data:
            raise DataError(f"{path}: expected a JSON object with the field {key!r}")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records")
    for i, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: element {i} is {type(record).__name__}, expected an object")
    return list(enumerate(data, start=1))


def read_csv(path: str | os.PathLike, *, fieldnames: Iterable[str] | None = None) -> list[Record]:
    """Rows as dicts keyed by the header (or by ``fieldnames`` for a file without one); ``.tsv`` is tab-separated.
    Line numbers are physical lines, so a quoted field spanning lines still points at the row's first line."""
    path = Path(path)
    text = read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(keepends=True), fieldnames=list(fieldnames) if fieldnames else None,
                            delimiter=delimiter)
    out = []
    try:
        reader.fieldnames  # reads the header row (if the file has one), so that the first record's line is right
    except csv.Error as e:
        raise DataError(f"{where(path, 1)}: malformed CSV header ({e})") from e
    start = reader.line_num + 1
    try:
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DataError(f"{where(path, start)}: row has {len(row) - (None in row)} columns where the "
                                f"header has {len(reader.fieldnames or [])}")
            out.append((start, dict(row)))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{where(path, start)}: malformed CSV ({e})") from e
    return out


def read_parquet(path: str | os.PathLike) -> list[Record]:
    """Rows of a Parquet file (the Hugging Face hub's format), numbered from 1; needs ``pyarrow``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (evaluation sets are read from local copies only)")
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow; convert the file to JSONL or install it") from e
    return list(enumerate(pq.read_table(path).to_pylist(), start=1))


def read_records(path: str | os.PathLike, **csv_options) -> list[Record]:
    """Records of a ``.jsonl``, ``.json``, ``.csv``, ``.tsv`` or ``.parquet`` file, chosen by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return read_parquet(path)
    if suffix in (".jsonl", ".ndjson"):
        return read_jsonl(path)
    if suffix == ".json":
        return read_json(path)
    if suffix in (".csv", ".tsv"):
        return read_csv(path, **csv_options)
    raise DataError(f"{path}: unknown file type {suffix!r}; expected .jsonl, .json, .csv, .tsv or .parquet")


def field(path: str | os.PathLike, line: int, record: Mapping[str, Any], name: str, kind: type | tuple = str,
          *, optional: bool = False) -> Any:
    """``record[name]`` checked to be of ``kind``; a missing or mistyped field raises naming file, line and field."""
    if name not in record or record[name] is None:
        if optional:
            return None
        raise DataError(f"{where(path, line)}: missing field {name!r} (fields present: {sorted(record)})")
    value = record[name]
    # bool is an int subclass; a gold index of True is a schema error, not 1.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                                                  else (kind,))):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where(path, line)}: field {name!r} is {type(value).__name__} {value!r:.60}, "
                        f"expected {expected}")
    return value
