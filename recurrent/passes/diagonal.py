"""Lowering a compiled chain onto diagonal recurrences: the common first step of the Mamba and Hawk/Griffin targets.

A chain state layer runs s_t = A s_{t-1} + u_t with a dense r x r matrix A (``recurrent.chain``). Mamba's
selective SSM and Hawk's RG-LRU only have a per-channel decay a in [0, 1] (exp(Delta A) with A < 0, or
a^{c r_t} with a = sigma(Lambda)), and a causal depthwise convolution of width 4 in front of it. This module
rewrites the chain into a ``DiagonalChain`` whose recurrent layers are

    z_t[l] = sum_{j < K} [t >= j] (W_j[l] . h_{t-j} + b_j[l])      (causal taps, K <= 4, zero before the first token)
    s_t[l] = a_l s_{t-1}[l] + z_t[l],  s_{-1} = 0,                   output h'_t = s_t

with a_l in [0, 1] (0: a position-wise lane), and whose relu/mul layers are those of the chain. Every
construction below returns the layer's original values as v = P s + c; (P, c) is folded into the next layer's
weights (W P, b + W c) or the readout, so the lowered chain computes the same function.

Per connected block A_c of A (indices joined by non-zero entries), in this order:
  1. diagonalisable over the reals, A_c = V diag(lambda) V^{-1}, with every eigenvalue in [0, 1] (values within
     1e-12 of 0 or 1 are snapped): q = V^{-1} s runs q_t = lambda q_{t-1} + V^{-1} u_t, and P = V. Exact for a
     1 x 1 block; otherwise exact up to the rounding of V and V^{-1} (condition number at most ``max_condition``).
  2. nilpotent (A_c^m = 0, m <= 4): a shift register, s_t = sum_{j < m} A_c^j u_{t-j} (u before the first token
     is 0): m conv taps, no recurrence. Exact.
  3. input-free (its rows of W and b are zero): s_t = A_c^{t+1} s_0 is a fixed sequence (the rotation of
     ``f_modulo_counter``, whose complex eigenvalues no real diagonal hosts). Counter-based redesign: a lane
     counts p_t = t + 1 (a = 1), an extra ReLU layer forms ReLU(t - k) for k < horizon, and the sequence is read
     back as its piecewise-linear interpolation g(0) + sum_k (second difference of g at k) ReLU(t - k), exact at
     every integer t < ``horizon`` and wrong after it (the bound is the horizon, not an error size). The other
     lanes of the layer cross the extra ReLU layer as [ReLU(v); ReLU(-v)], read back as the difference.
  4. anything else (a rotation or dense block driven by the input, an eigenvalue outside [0, 1], a Jordan block,
     a longer shift register): ``CompileError`` naming the layer, the target and the reason.
Initial states (the targets start from s = 0): with a = 1 the constant s_0 goes into c; with a = 0 it is never
read; otherwise the first-token impulse a s_0 enters through two bias taps (+a s_0 at lag 0, -a s_0 at lag 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recurrent.chain import Chain
from recurrent.errors import CompileError

CONV_WIDTH = 4
SNAP = 1e-12


@dataclasses.dataclass(frozen=True)
class DiagonalLayer:
    kind: str
    """"diag" (taps + diagonal recurrence), "relu" or "mul" (as in ``recurrent.chain``)."""
    weight: np.ndarray
    """diag: (K, w, in), tap j reads h_{t-j}; relu: (w, in); mul: (2 w, in)."""
    bias: np.ndarray
    """diag: (K, w), tap j's bias (absent before token j); relu/mul: (rows,)."""
    decay: np.ndarray | None = None
    """diag: (w,) in [0, 1]."""

    @property
    def width(self) -> int:
        rows = self.weight.shape[-2]
        return rows // 2 if self.kind == "mul" else rows


@dataclasses.dataclass(frozen=True)
class DiagonalChain:
    in_dim: int
    layers: tuple[DiagonalLayer, ...]
    readout_weight: np.ndarray
    readout_bias: np.ndarray

    @property
    def out_dim(self) -> int:
        return self.readout_weight.shape[0]


@dataclasses.dataclass
class _Lanes:
    """Lanes of one diag layer under construction, and the read-back of the original layer's values."""

    in_dim: int
    taps: list = dataclasses.field(default_factory=list)  # per lane: {lag: (row, bias)}
    decay: list = dataclasses.field(default_factory=list)
    readback: list = dataclasses.field(default_factory=list)  # per lane: {original index: coefficient}

    def add(self, taps: dict, decay: float, readback: dict) -> int:
        self.taps.append(taps)
        self.decay.append(decay)
        self.readback.append(readback)
        return len(self.taps) - 1

    def layer(self) -> DiagonalLayer:
        K = 1 + max((max(t) for t in self.taps if t), default=0)
        w = len(self.taps)
        weight, bias = np.zeros((K, w, self.in_dim)), np.zeros((K, w))
        for l, taps in enumerate(self.taps):
            for j, (row, b) in taps.items():
                weight[j, l], bias[j, l] = row, b
        return DiagonalLayer("diag", weight, bias, np.asarray(self.decay, dtype=np.float64))

    def readback_matrix(self, width: int) -> np.ndarray:
        P = np.zeros((width, len(self.taps)))
        for l, back in enumerate(self.readback):
            for i, coef in back.items():
                P[i, l] += coef
        return P


def _blocks(A: np.ndarray) -> list[list[int]]:
    """Connected components of the graph with an edge i - j wherever A_ij or A_ji is non-zero."""
    r = A.shape[0]
    seen, out = [False] * r, []
    for start in range(r):
        if seen[start]:
            continue
        stack, comp = [start], []
        seen[start] = True
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in np.flatnonzero((A[i] != 0) | (A[:, i] != 0)):
                if not seen[j]:
                    seen[j] = True
                    stack.append(int(j))
        out.append(sorted(comp))
    return out


def _snap(lam: np.ndarray) -> np.ndarray:
    lam = lam.copy()
    lam[np.abs(lam) < SNAP] = 0.0
    lam[np.abs(lam - 1.0) < SNAP] = 1.0
    return lam


def _diagonalise(Ac: np.ndarray, max_condition: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """(lambda, V, V^{-1}) with real eigenvalues in [0, 1], or the reason there is none."""
    if Ac.shape == (1, 1):
        lam = _snap(Ac[0])
        V = np.eye(1)
    else:
        lam_c, V_c = np.linalg.eig(Ac)
        if np.abs(lam_c.imag).max() > SNAP:
            return f"complex eigenvalues {np.round(lam_c, 6).tolist()} (a rotation)"
        lam, V = _snap(lam_c.real), V_c.real
        cond = np.linalg.cond(V)
        if not np.isfinite(cond) or cond > max_condition:
            return f"not diagonalisable (eigenvector condition number {cond:.3g}: a Jordan block)"
    bad = lam[(lam < 0) | (lam > 1)]
    if bad.size:
        return f"eigenvalues {bad.tolist()} outside [0, 1], the decays a diagonal layer can hold"
    return lam, V, np.linalg.inv(V)


def _nilpotency(Ac: np.ndarray) -> int | None:
    M = np.eye(Ac.shape[0])
    for m in range(1, Ac.shape[0] + 1):
        M = M @ Ac
        if not M.any():
            return m
    return None


def _impulse_taps(values: list[float]) -> dict[int, float]:
    """Bias taps whose zero-padded sum is values[t] for t < len(values) and 0 after (values end in 0)."""
    taps, prev = {}, 0.0
    for j, v in enumerate(values):
        if v != prev:
            taps[j] = v - prev
        prev = v
    return taps


def _merge(taps: dict, extra: dict[int, float], in_dim: int) -> dict:
    out = dict(taps)
    for j, b in extra.items():
        row, b0 = out.get(j, (np.zeros(in_dim), 0.0))
        out[j] = (row, b0 + b)
    return out


def _state_layer(
    index: int, W: np.ndarray, b: np.ndarray, A: np.ndarray, init: np.ndarray, target: str, max_condition: float
) -> tuple[_Lanes, np.ndarray, list[tuple[list[int], np.ndarray, np.ndarray]]]:
    """Lanes of a lowered state layer, the constant part c of its read-back, and its input-free blocks."""
    w, d = W.shape
    r = A.shape[0]
    lanes, offset, clocked = _Lanes(d), np.zeros(w), []

    def fail(comp, reason):
        raise CompileError(
            f"layer {index} (state, width {w}): target {target} cannot host the recurrent block on lanes {comp}: "
            f"{reason}; a diagonal layer only holds decays in [0, 1], conv shifts of up to {CONV_WIDTH - 1} steps "
            "and input-free sequences"
        )

    for comp in _blocks(A):
        Ac, Wc, bc, s0 = A[np.ix_(comp, comp)], W[comp], b[comp], init[comp]
        found = _diagonalise(Ac, max_condition)
        if not isinstance(found, str):
            lam, V, Vinv = found
            Wq, bq, q0 = Vinv @ Wc, Vinv @ bc, Vinv @ s0
            for k, a in enumerate(lam):
                taps = {0: (Wq[k], bq[k])}
                if a == 1.0:
                    offset[comp] += V[:, k] * q0[k]
                elif a != 0.0 and q0[k] != 0.0:
                    taps = _merge(taps, _impulse_taps([a * q0[k], 0.0]), d)
                lanes.add(taps, float(a), {i: V[n, k] for n, i in enumerate(comp) if V[n, k] != 0})
            continue
        m = _nilpotency(Ac)
        if m is not None:
            if m > CONV_WIDTH:
                fail(comp, f"a shift register of length {m} is longer than the conv ({CONV_WIDTH} taps)")
            powers = [np.linalg.matrix_power(Ac, j) for j in range(m)]
            init_seq = [np.linalg.matrix_power(Ac, t + 1) @ s0 for t in range(m)]  # A^{t+1} s_0, ends at 0
            for n, i in enumerate(comp):
                taps = {j: ((powers[j] @ Wc)[n], (powers[j] @ bc)[n]) for j in range(m)}
                taps = {j: tb for j, tb in taps.items() if tb[0].any() or tb[1] != 0}
                taps = _merge(taps, _impulse_taps([float(v[n]) for v in init_seq]), d)
                lanes.add(taps, 0.0, {i: 1.0})
            continue
        if not Wc.any() and not bc.any():
            clocked.append((comp, Ac, s0))
            continue
        fail(comp, found)
    for i in range(r, w):
        lanes.add({0: (W[i], b[i])}, 0.0, {i: 1.0})
    return lanes, offset, clocked


def _clock_layers(
    lanes: _Lanes, offset: np.ndarray, clocked: list, width: int, horizon: int
) -> tuple[DiagonalLayer, DiagonalLayer, np.ndarray, np.ndarray]:
    """The diag layer plus a counter lane, then the ReLU layer of the counter-based redesign (module docstring)."""
    d = lanes.in_dim
    counter = lanes.add({0: (np.zeros(d), 1.0)}, 1.0, {})  # p_t = t + 1
    diag = lanes.layer()
    n = diag.width
    # ReLU layer: [ReLU(o); ReLU(-o)] for every diag lane o, then ReLU(p - 1 - k) = ReLU(t - k), k < horizon.
    Wr = np.zeros((2 * n + horizon, n))
    Wr[:n] = np.eye(n)
    Wr[n : 2 * n] = -np.eye(n)
    Wr[2 * n :, counter] = 1.0
    br = np.concatenate([np.zeros(2 * n), -1.0 - np.arange(horizon, dtype=np.float64)])
    relu = DiagonalLayer("relu", Wr, br)
    Pd = lanes.readback_matrix(width)
    P = np.concatenate([Pd, -Pd, np.zeros((width, horizon))], axis=1)
    c = offset.copy()
    for comp, Ac, s0 in clocked:
        g = np.empty((horizon + 1, len(comp)))
        s = s0.copy()
        for t in range(horizon + 1):
            s = Ac @ s
            g[t] = s
        slope = np.diff(g, axis=0)  # slope[k] = g(k+1) - g(k)
        kinks = np.concatenate([slope[:1], np.diff(slope, axis=0)])[:horizon]
        for n_, i in enumerate(comp):
            c[i] += g[0, n_]
            P[i, 2 * n :] = kinks[:, n_]
    return diag, relu, P, c


def lower_to_diagonal(
    chain: Chain, target: str, *, horizon: int = 512, max_condition: float = 1e8
) -> DiagonalChain:
    """The chain with every state layer on diagonal recurrences (see the module docstring)."""
    if horizon < 2:
        raise CompileError(f"lower_to_diagonal: horizon={horizon} must be at least 2")
    P, c = np.eye(chain.in_dim), np.zeros(chain.in_dim)
    layers: list[DiagonalLayer] = []
    for index, layer in enumerate(chain.layers):
        W = np.asarray(layer.weight, np.float64) @ P
        b = np.asarray(layer.bias, np.float64) + np.asarray(layer.weight, np.float64) @ c
        if layer.kind in ("relu", "mul"):
            layers.append(DiagonalLayer(layer.kind, W, b))
            P, c = np.eye(layer.width), np.zeros(layer.width)
            continue
        if layer.kind != "state":
            raise CompileError(f"layer {index}: target {target} does not know the layer kind {layer.kind!r}")
        A, init = np.asarray(layer.A, np.float64), np.asarray(layer.init, np.float64)
        lanes, offset, clocked = _state_layer(index, W, b, A, init, target, max_condition)
        if clocked:
            diag, relu, P, c = _clock_layers(lanes, offset, clocked, layer.width, horizon)
            layers += [diag, relu]
        else:
            layers.append(lanes.layer())
            P, c = lanes.readback_matrix(layer.width), offset
    W_out = np.asarray(chain.readout_weight, np.float64)
    return DiagonalChain(chain.in_dim, tuple(layers), W_out @ P, np.asarray(chain.readout_bias) + W_out @ c)


def evaluate(dchain: DiagonalChain, x_BxTxD: np.ndarray) -> np.ndarray:
    """The lowered chain's outputs (B, T, O) in NumPy float64 (a reference for the targets built on it)."""
    h = np.asarray(x_BxTxD, np.float64)
    for layer in dchain.layers:
        if layer.kind != "diag":
            z = h @ layer.weight.T + layer.bias
            h = np.maximum(z, 0.0) if layer.kind == "relu" else z[..., : layer.width] * z[..., layer.width :]
            continue
        steps = h.shape[1]
        z = np.zeros(h.shape[:2] + (layer.width,))
        for j in range(layer.weight.shape[0]):
            if j < steps:
                z[:, j:] += h[:, : steps - j] @ layer.weight[j].T + layer.bias[j]
        s = np.zeros((h.shape[0], layer.width))
        out = np.empty_like(z)
        for t in range(steps):
            s = layer.decay * s + z[:, t]
            out[:, t] = s
        h = out
    return h @ dchain.readout_weight.T + dchain.readout_bias
