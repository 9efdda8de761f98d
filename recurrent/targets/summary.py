"""What a compiled model looks like, the same for every target: layer widths, recurrent units, parameter counts."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TargetSummary:
    target: str
    widths: tuple[int, ...]
    recurrent: tuple[int, ...]
    parameters: int
    nonzeros: int
    max_weight: float

    @classmethod
    def of(cls, target: str, layers, arrays) -> "TargetSummary":
        """The summary of ``layers`` (each with ``width`` and ``recurrent``) whose parameters are ``arrays``."""
        flat = np.concatenate([np.asarray(a).reshape(-1) for a in arrays])
        return cls(target=target, widths=tuple(l.width for l in layers), recurrent=tuple(l.recurrent for l in layers),
                   parameters=int(flat.size), nonzeros=int(np.count_nonzero(flat)),
                   max_weight=float(np.abs(flat).max()) if flat.size else 0.0)

    def format(self) -> str:
        lines = [
            f"{self.target}: {len(self.widths)} layers, max width {max(self.widths, default=0)}, "
            f"{self.parameters} parameters ({self.nonzeros} non-zero), largest weight {self.max_weight:.3g}"
        ]
        lines += [f"  {i:3d} width {w:5d} ({r} recurrent)" for i, (w, r) in enumerate(zip(self.widths, self.recurrent))]
        return "\n".join(lines)
