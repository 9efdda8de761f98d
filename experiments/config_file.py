"""Launcher configs as files: every run directory gets ``config.json``, the resolved config it ran with, and
``--config FILE`` (JSON or YAML, e.g. that file) loads one; flags after it override its fields.

``from_jsonable(cls, data)`` rebuilds a config dataclass from plain data by its type hints: nested dataclasses,
tuples (fixed and variable length), unions and ``Optional``, ``Literal`` values, and numbers (an int where a
float is expected is widened; nothing else is converted). An unknown key, a missing required field or a value
of the wrong type raises ``ConfigFileError`` naming the file and the dotted field path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from runtime.errors import RuntimeConfigError

CONFIG_NAME = "config.json"


class ConfigFileError(RuntimeConfigError):
    """A config file does not describe the launcher's config (the message names the file and field)."""


def to_jsonable(config: Any) -> Any:
    """A dataclass config as plain JSON data."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): to_jsonable(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_jsonable(v) for v in config]
    if isinstance(config, (str, int, float, bool)) or config is None:
        return config
    return repr(config)


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _convert(tp: Any, value: Any, where: str) -> Any:
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigFileError as e:
                errors.append(str(e))
        raise ConfigFileError(errors[0] if len(errors) == 1 else f"{where}: {value!r:.60} matches none of {tp}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigFileError(f"{where}: {value!r:.60} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_jsonable(tp, value, where)
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigFileError(f"{where}: expected a list, got {type(value).__name__} {value!r:.60}")
        args = typing.get_args(tp)
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigFileError(f"{where}: expected {len(args)} entries, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) or tp in (dict, Mapping) or origin is typing.get_origin(Mapping[str, Any]):
        if not isinstance(value, Mapping):
            raise ConfigFileError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigFileError(f"{where}: expected a number, got {type(value).__name__} {value!r:.60}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigFileError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r:.60}")
        return value
    raise ConfigFileError(f"{where}: fields of type {tp} cannot be read from a file")


def from_jsonable(cls: type, data: Any, where: str = "config") -> Any:
    """An instance of the dataclass ``cls`` from plain data (see the module docstring)."""
    if not isinstance(data, Mapping):
        raise ConfigFileError(f"{where}: expected a mapping of {cls.__name__}'s fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigFileError(f"{where}: unknown field(s) {unknown} of {cls.__name__} (fields: {sorted(fields)})")
    kwargs = {name: _convert(hints[name], data[name], f"{where}.{name}") for name in fields if name in data}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigFileError(f"{where}: {e}") from e


def read_config_file(path: str | os.PathLike, cls: type) -> Any:
    """A config of type ``cls`` from a JSON or YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 (JSON and YAML raise different types; both are the file's fault)
        raise ConfigFileError(f"--config {path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}"
                              f" ({e})") from e
    return from_jsonable(cls, data, where=str(path))


def config_class(config_type: Any) -> type:
    """The dataclass a launcher's config type parses into: itself, or the class shared by its preset subcommands."""
    tp = _strip(config_type)
    if dataclasses.is_dataclass(tp):
        return tp
    classes = {_strip(arg) for arg in typing.get_args(tp)}
    if len(classes) == 1 and dataclasses.is_dataclass(next(iter(classes))):
        return next(iter(classes))
    raise ConfigFileError(f"--config: cannot tell which config class {config_type} parses into")


def split_config_flag(args: list[str]) -> tuple[str | None, list[str]]:
    """(the --config path or None, the other arguments)."""
    for i, arg in enumerate(args):
        if arg == "--config":
            if i + 1 >= len(args):
                raise ConfigFileError("--config: expected a file path")
            return args[i + 1], args[:i] + args[i + 2:]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1:]
    return None, args


def out_dir_of(cfg: Any) -> str | None:
    """The run directory a parsed launcher config writes to: ``cfg.run.out_dir`` (every launcher's ``--run.out-dir``),
    else a top-level ``out_dir``."""
    run = getattr(cfg, "run", None)
    out = getattr(run, "out_dir", None) if run is not None else None
    return out if isinstance(out, str) else getattr(cfg, "out_dir", None)


def write_config(cfg: Any, out_dir: str | os.PathLike) -> Path:
    """``<out_dir>/config.json``: the resolved config, readable back with ``--config``."""
    path = Path(out_dir) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_jsonable(cfg), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
