"""Raw records from local files: JSONL, JSON (a list of records), Parquet, a Hugging Face ``save_to_disk``
directory, or (only with ``datasets`` installed and a network) a hub dataset id.

Each record comes with its location: ``"path:N"`` for JSONL (N the 1-based line) and ``"path:record N"``
for the record-indexed formats (N the 0-based row, as ``datasets`` numbers them). A JSONL line that is not
valid JSON, or holds an object with a key twice, is yielded as an ``Unreadable`` record so the loader can report
or skip it like any bad record; a byte that is not UTF-8 is an error naming its line.
Saved dataset directories are read with pyarrow directly (their data files are Arrow IPC streams), so
``datasets`` is not needed for them.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bfpo.errors import DataError

# "owner/name" or a bare canonical name, and nothing on disk: what a hub id looks like.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
FORMATS = ("jsonl", "json", "parquet", "hf_dir")
SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".arrow")


@dataclass(frozen=True)
class Unreadable:
    """A record that could not be decoded at all."""

    reason: str
    message: str


def record_format(path: str | Path) -> str:
    """Which of ``FORMATS`` a local path holds, from its suffix or directory layout."""
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return "hf_dir"
        raise DataError(f"{p}: a directory, but not one written by datasets' save_to_disk (no state.json or "
                        "dataset_dict.json)")
    name = p.name.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise DataError(f"{p}: unknown file type; expected .jsonl, .json, .parquet or a save_to_disk directory")


def read_records(path: str | Path, *, split: str | None = None) -> Iterator[tuple[str, object]]:
    """(location, record) for every record of the file, directory or hub dataset at ``path``."""
    p = Path(path)
    if not p.exists():
        yield from read_hub(str(path), split)
        return
    fmt = record_format(p)
    if split is not None and fmt != "hf_dir":
        raise DataError(f"{p}: split={split!r} applies only to saved dataset directories and hub ids")
    if fmt == "hf_dir":
        yield from read_saved_dataset(p, split)
    else:
        yield from {"jsonl": read_jsonl, "json": read_json, "parquet": read_parquet}[fmt](p)


class DuplicateKeyError(ValueError):
    """An object with the same key twice: ``json`` would keep the last value silently (a safety label could flip)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def loads(text: str | bytes) -> object:
    """``json.loads`` that refuses an object holding one key twice (``DuplicateKeyError``)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def duplicate_key_message(e: DuplicateKeyError) -> str:
    return f"the key {e.args[0]!r} appears twice in one object (JSON would keep the last value silently)"


def read_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    # Read as bytes and decode line by line, so a bad byte is reported at its line of the file.
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problem = f"not UTF-8 text ({e.reason} at byte {e.start} of the line)"
                yield f"{path}:{number}", Unreadable("not_utf8", problem)
                continue
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", loads(line)
            except json.JSONDecodeError as e:
                problem = f"not valid JSON: {e.msg} (column {e.colno})"
                yield f"{path}:{number}", Unreadable("invalid_json", problem)
            except DuplicateKeyError as e:
                yield f"{path}:{number}", Unreadable("duplicate_key", duplicate_key_message(e))


def read_json(path: Path) -> Iterator[tuple[str, object]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = loads(f.read())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from e
    except DuplicateKeyError as e:
        raise DataError(f"{path}: {duplicate_key_message(e)}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records at the top level, got {type(data).__name__} "
                        "(for one record per line use .jsonl)")
    for i, record in enumerate(data):
        yield f"{path}:record {i}", record


def require_pyarrow(path: Path, what: str):
    if importlib.util.find_spec("pyarrow") is None:
        raise DataError(f"{path}: reading {what} needs the pyarrow package, which is not installed "
                        "(pip install pyarrow), or convert the data to JSONL")
    import pyarrow

    return pyarrow


def read_parquet(path: Path) -> Iterator[tuple[str, object]]:
    require_pyarrow(path, "Parquet")
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError family
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e
    index = 0
    for batch in table.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield f"{path}:record {index}", record
            index += 1


def read_saved_dataset(path: Path, split: str | None) -> Iterator[tuple[str, object]]:
    """A ``Dataset.save_to_disk`` directory (state.json + Arrow files) or a ``DatasetDict`` one (dataset_dict.json
    naming a subdirectory per split; ``split`` picks one, default ``train``)."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        chosen = "train" if split is None else split
        if chosen not in splits:
            raise DataError(f"{path}: split={chosen!r} is not among the saved splits {splits}")
        path = path / chosen
    elif split is not None:
        raise DataError(f"{path}: a single saved dataset has no splits; drop split={split!r}")
    pa = require_pyarrow(path, "a saved Hugging Face dataset")
    state_file = path / "state.json"
    try:
        files = [entry["filename"] for entry in json.loads(state_file.read_text())["_data_files"]]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise DataError(f"{state_file}: expected datasets' state.json with a '_data_files' list ({e})") from e
    index = 0
    for name in files:
        for batch in read_arrow_batches(pa, path / name):
            for record in batch.to_pylist():
                yield f"{path}:record {index}", record
                index += 1


def read_arrow_batches(pa, path: Path):
    """Record batches of an Arrow IPC file in either framing (datasets writes the streaming one)."""
    try:
        with pa.memory_map(str(path)) as source:
            yield from pa.ipc.open_stream(source)
        return
    except pa.ArrowInvalid:
        pass
    except FileNotFoundError as e:
        raise DataError(f"{path}: listed in state.json but missing") from e
    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: not an Arrow IPC file ({e})") from e


def read_hub(name: str, split: str | None) -> Iterator[tuple[str, object]]:
    hint = ("pass a local path instead: a .jsonl, .json or .parquet file, or a directory written by "
            "datasets' save_to_disk")
    if not HUB_ID.match(name) or name.lower().endswith(SUFFIXES):
        raise DataError(f"{name}: no such file or directory; {hint}")
    if importlib.util.find_spec("datasets") is None:
        raise DataError(f"{name}: not a local file or directory, and reading a Hugging Face hub dataset needs the "
                        f"`datasets` package (not installed) and a network connection; {hint}")
    import datasets

    chosen = "train" if split is None else split
    try:
        dataset = datasets.load_dataset(name, split=chosen)
    except Exception as e:  # offline, unknown id, unknown split: all end the same way for the caller
        raise DataError(f"{name}: could not load split {chosen!r} from the Hugging Face hub ({type(e).__name__}: "
                        f"{str(e)[:200]}); {hint}") from e
    for i, record in enumerate(dataset):
        yield f"{name}:record {i}", record
