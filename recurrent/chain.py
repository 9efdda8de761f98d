"""A compiled LSRL program: a chain of layers, each reading only the previous layer's output at the same token.

    h^0_t = x_t
    state layer:  z = W h^{k-1}_t + b;  s_t = A s_{t-1} + z[:r] (s_0 = init);  h^k_t = [s_t; z[r:]]
    relu layer:   h^k_t = max(W h^{k-1}_t + b, 0)
    mul layer:    z = W h^{k-1}_t + b (2w rows);  h^k_t = z[:w] * z[w:]
    y_t = W_out h^L_t + b_out

The first r lanes of a state layer are genuinely recurrent (A is r x r); the other lanes are pass-through
(A = 0 rows in the published form, here stored without their zero block). This is the paper's linear-RNN
model: LinState layers with position-wise (gated) ReLU MLPs between them, no residual stream.
"""

from __future__ import annotations

import dataclasses

import numpy as np

LAYER_KINDS = ("state", "relu", "mul")


@dataclasses.dataclass(frozen=True)
class Layer:
    kind: str
    weight: np.ndarray
    bias: np.ndarray
    A: np.ndarray | None = None
    init: np.ndarray | None = None

    @property
    def width(self) -> int:
        return self.weight.shape[0] // 2 if self.kind == "mul" else self.weight.shape[0]

    @property
    def recurrent(self) -> int:
        return 0 if self.A is None else self.A.shape[0]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"weight": self.weight, "bias": self.bias}
        if self.kind == "state":
            out.update(A=self.A, init=self.init)
        return out


@dataclasses.dataclass(frozen=True)
class Chain:
    in_dim: int
    layers: tuple[Layer, ...]
    readout_weight: np.ndarray
    readout_bias: np.ndarray

    @property
    def out_dim(self) -> int:
        return self.readout_weight.shape[0]

    def summary(self) -> "ChainSummary":
        return summarize(self)


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    kind: str
    width: int
    recurrent: int
    """Rows of A that are not zero (a zero row is a lane the published form would count as pass-through)."""
    parameters: int
    nonzeros: int
    max_weight: float
    dynamic_range: float
    """Largest over smallest non-zero absolute weight (bias included)."""


@dataclasses.dataclass(frozen=True)
class ChainSummary:
    layers: tuple[LayerSummary, ...]
    state_layers: int
    state_dims: int
    recurrent_dims: int
    max_width: int
    parameters: int
    nonzeros: int
    max_weight: float

    def format(self) -> str:
        lines = [
            f"{len(self.layers)} layers ({self.state_layers} state), state dims {self.state_dims} "
            f"({self.recurrent_dims} recurrent), max width {self.max_width}, {self.parameters} parameters "
            f"({self.nonzeros} non-zero), largest weight {self.max_weight:.3g}"
        ]
        for i, l in enumerate(self.layers):
            rec = f" ({l.recurrent} recurrent)" if l.kind == "state" else ""
            lines.append(
                f"  {i:3d} {l.kind:5s} width {l.width:5d}{rec}  max |w| {l.max_weight:.3g}  "
                f"range {l.dynamic_range:.3g}"
            )
        return "\n".join(lines)


def _stats(arrays: list[np.ndarray]) -> tuple[int, int, float, float]:
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    nz = np.abs(flat[flat != 0])
    big = float(nz.max()) if nz.size else 0.0
    rng = float(nz.max() / nz.min()) if nz.size else 1.0
    return int(flat.size), int(nz.size), big, rng


def summarize(chain: Chain) -> ChainSummary:
    per = []
    for l in chain.layers:
        params, nz, big, rng = _stats(list(l.arrays().values()))
        # Genuinely recurrent rows: a zero row of A makes its lane a function of the current token only.
        rows = 0 if l.A is None else int(np.count_nonzero(np.any(l.A != 0, axis=1)))
        per.append(LayerSummary(l.kind, l.width, rows, params, nz, big, rng))
    params, nz, big, rng = _stats([chain.readout_weight, chain.readout_bias])
    per.append(LayerSummary("out", chain.out_dim, 0, params, nz, big, rng))
    state = [l for l in chain.layers if l.kind == "state"]
    return ChainSummary(
        layers=tuple(per),
        state_layers=len(state),
        state_dims=sum(l.width for l in state),
        recurrent_dims=sum(p.recurrent for p in per if p.kind == "state"),
        max_width=max([l.width for l in chain.layers] + [chain.in_dim, chain.out_dim]),
        parameters=sum(p.parameters for p in per),
        nonzeros=sum(p.nonzeros for p in per),
        max_weight=max(p.max_weight for p in per),
    )


def evaluate(chain: Chain, x_BxTxD: np.ndarray, dtype=np.float64) -> np.ndarray:
    """The chain's outputs (B, T, O) in NumPy (float64 by default), layer by layer over whole sequences."""
    cast = lambda a: np.asarray(a, dtype=dtype)  # noqa: E731
    h = cast(x_BxTxD)
    for layer in chain.layers:
        z = h @ cast(layer.weight).T + cast(layer.bias)
        if layer.kind == "relu":
            h = np.maximum(z, 0.0)
        elif layer.kind == "mul":
            w = layer.width
            h = z[..., :w] * z[..., w:]
        else:
            r = layer.recurrent
            A = cast(layer.A)
            s = np.broadcast_to(cast(layer.init), (z.shape[0], r)).copy()
            states = np.empty(z.shape[:2] + (r,), dtype=dtype)
            for t in range(z.shape[1]):
                s = s @ A.T + z[:, t, :r]
                states[:, t] = s
            h = np.concatenate([states, z[..., r:]], axis=-1)
    return h @ cast(chain.readout_weight).T + cast(chain.readout_bias)
