"""Every registered objective's config side by side, so a launcher can embed the registry's own config classes as
they are: ``ObjectiveConfigs().of("dpo")`` is DPO's default ``DPOConfig``, and on the command line each field is
``--objectives.<name>.<field>`` (``--objectives.bfpo.labeling.tau``, ``--objectives.dpo.beta``, ...).

The table is built from ``OBJECTIVES``, so a newly registered objective gets its entry and its flags without an
edit here. Only the selected objective's entry is read; the others stay at what they were set to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bfpo.errors import BFPOError
from bfpo.objectives.registry import OBJECTIVES, get_objective


def _of(self, name: str) -> Any:
    """The config the objective called ``name`` runs with."""
    get_objective(name)
    return getattr(self, name)


def _with_config(self, name: str, **changes) -> "ObjectiveConfigs":
    """A copy with ``changes`` applied to objective ``name``'s config (nested fields as ``labeling=...``)."""
    return dataclasses.replace(self, **{name: dataclasses.replace(_of(self, name), **changes)})


def _check(self) -> None:
    for name, objective in OBJECTIVES.items():
        if type(getattr(self, name)) is not type(objective.config):
            raise BFPOError(f"ObjectiveConfigs.{name}: objective {name!r} takes a {type(objective.config).__name__}, "
                            f"got {type(getattr(self, name)).__name__}")


ObjectiveConfigs = dataclasses.make_dataclass(
    "ObjectiveConfigs",
    [(name, type(o.config), dataclasses.field(default=o.config)) for name, o in OBJECTIVES.items()],
    namespace={"of": _of, "with_config": _with_config, "__post_init__": _check,
               "__doc__": "One config per registered objective (its registry default unless set).",
               "__module__": __name__},
    frozen=True, kw_only=True,
)


def describe(config: Any) -> str:
    """``config``'s numeric fields, nested ones flattened (``labeling.tau=0.01, labeling.b1=3, ...``)."""
    def fields(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from fields(value, f"{prefix}{f.name}.")
            elif isinstance(value, float):
                yield f"{prefix}{f.name}={value:g}"

    return ", ".join(fields(config))


def with_labeling(table: "ObjectiveConfigs | None" = None, **changes) -> "ObjectiveConfigs":
    """``table`` (default: every registry default) with ``changes`` to the labeling constants (b1, alpha, tau) of
    every objective that has them (BFPO in both its summed and averaged forms)."""
    table = ObjectiveConfigs() if table is None else table
    for name in OBJECTIVES:
        config = table.of(name)
        labeling = getattr(config, "labeling", None)
        if labeling is not None:
            table = table.with_config(name, labeling=dataclasses.replace(labeling, **changes))
    return table
