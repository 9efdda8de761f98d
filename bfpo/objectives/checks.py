"""Validation of objective configs: each message names the config class, the field and what was expected."""

from __future__ import annotations

import math

from bfpo.errors import BFPOError


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(owner: str, name: str, value) -> None:
    if not (_is_number(value) and value > 0):
        raise BFPOError(f"{owner}.{name}={value!r}: expected a finite number greater than 0")


def non_negative(owner: str, name: str, value) -> None:
    if not (_is_number(value) and value >= 0):
        raise BFPOError(f"{owner}.{name}={value!r}: expected a finite number at least 0")


def in_range(owner: str, name: str, value, low: float, high: float, *, high_open: bool) -> None:
    if not (_is_number(value) and low <= value and (value < high if high_open else value <= high)):
        raise BFPOError(f"{owner}.{name}={value!r}: expected a number in [{low}, {high}{')' if high_open else ']'}")


def boolean(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise BFPOError(f"{owner}.{name}={value!r}: expected a bool")
