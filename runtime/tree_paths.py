"""Names of pytree leaves: a key path (``jax.tree_util`` DictKey / GetAttrKey / SequenceKey / FlattenedIndexKey)
as its keys, or as one slash-joined string (``layers/3/mlp/down_proj/kernel``).

NNX states add a ``value`` attribute under every variable; it names no parameter, so it is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def path_keys(path: Sequence[Any]) -> tuple[str, ...]:
    """The keys of a key path as strings, without NNX's ``value`` attribute."""
    keys = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                k = getattr(k, attr)
                break
        if k != "value":
            keys.append(str(k))
    return tuple(keys)


def path_str(path: Sequence[Any]) -> str:
    """The slash-joined keys of a key path."""
    return "/".join(path_keys(path))
