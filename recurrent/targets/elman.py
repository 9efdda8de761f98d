"""A compiled chain as a stack of Elman ReLU RNN layers, h_t = ReLU(W_h h_{t-1} + W_i x_t + b).

The paper (Petrov et al., 2024, Sec. 1 and 4) argues that Elman RNNs host LSRL because a ReLU is the identity
on non-negative values. Every layer of the chain (``recurrent.chain``) becomes one Elman layer; the layer reads
the previous Elman layer's hidden units as its input x_t (the first reads the tokens).

Representation. A chain value v (one lane of a layer's output) is carried by Elman units h with v = P h:
  - one unit h = v when v is provably non-negative (the sign analysis below), since then ReLU(v) = v;
  - two units [v+; v-] = [ReLU(v); ReLU(-v)] otherwise (the split construction), read back as v = v+ - v-.
With E the matching unit-from-value map (rows +e_j, or +e_j and -e_j), a chain layer becomes
  - relu layer  v = ReLU(W v' + b):           W_i = W P', b, W_h = 0 (outputs are non-negative: one unit each);
  - state layer v = M v_{t-1} + W v'_t + b    (M = A on the recurrent lanes, 0 on the pass-through lanes):
                                              W_i = E W P', b_E = E b, W_h = E M P, h_0 = ReLU(E v_0);
  - readout     y = W_out P h + b_out.
Since P E = I and ReLU(E v) is exactly [v+; v-] (or v), P h_t = v_t for every t by induction.

Sign analysis. The tokens are signed; relu layer outputs are non-negative. A pass-through lane z = (W v' + b)_j
is non-negative when b_j >= 0 and row j of W is >= 0 on non-negative inputs and 0 on signed ones. The recurrent
lanes kept as single units are the largest set S of such lanes with v_0 >= 0 whose row of A is >= 0 on S and 0
off S (found by removing violators until none is left).

Exactness. Every unit holds exactly its value's positive or negative part. In floating point the pre-activation
sums the same non-zero products as the chain (a split lane contributes A_jk v+_k or -A_jk v-_k, one of them 0),
so only the summation order differs: no error grows with sequence length beyond the chain's own rounding, and in
float64 the model equals the interpreter wherever the chain does. It is not approximate.

Not hostable: a ``mul`` layer (the ``Multiplicative`` gate). An Elman layer has no product of two units, so
programs must use the lambda-based conditionals (``f_ifelse``, modes direct/optimized/step_optimized of
``recurrent.programs.conditionals``); a product raises ``CompileError`` naming the layer.

The weights use the layout of ``flax.nnx.SimpleCell`` (``dense_i.kernel`` (in, hidden), ``dense_i.bias``,
``dense_h.kernel`` (hidden, hidden)) with ``activation_fn=jax.nn.relu``, so they load into that cell unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from recurrent.chain import Chain
from recurrent.compile import through_chain
from recurrent.errors import CompileError
from recurrent.scan import check_dtype
from recurrent.targets.compiled_module import CompiledRNN
from recurrent.targets.summary import TargetSummary

TARGET = "elman"


@dataclasses.dataclass(frozen=True)
class ElmanLayer:
    kernel_i: np.ndarray
    """(in, hidden): ``SimpleCell.dense_i.kernel``."""
    bias: np.ndarray
    """(hidden,): ``SimpleCell.dense_i.bias``."""
    kernel_h: np.ndarray
    """(hidden, hidden): ``SimpleCell.dense_h.kernel``."""
    carry: np.ndarray
    """(hidden,): h_0."""

    @property
    def width(self) -> int:
        return self.bias.shape[0]

    @property
    def recurrent(self) -> int:
        """Units with a non-zero recurrent weight (in or out)."""
        k = self.kernel_h != 0
        return int(np.count_nonzero(k.any(axis=0) | k.any(axis=1)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"kernel_i": self.kernel_i, "bias": self.bias, "kernel_h": self.kernel_h, "carry": self.carry}


@dataclasses.dataclass(frozen=True)
class ElmanNet:
    in_dim: int
    layers: tuple[ElmanLayer, ...]
    readout_kernel: np.ndarray
    """(hidden, out)."""
    readout_bias: np.ndarray

    @property
    def out_dim(self) -> int:
        return self.readout_bias.shape[0]

    def summary(self) -> TargetSummary:
        arrays = [a for l in self.layers for k, a in l.arrays().items() if k != "carry"]
        return TargetSummary.of(TARGET, self.layers, arrays + [self.readout_kernel, self.readout_bias])


def _nonneg_rows(W: np.ndarray, b: np.ndarray, inputs_nonneg: np.ndarray) -> np.ndarray:
    """Rows of W v + b that are >= 0 for every v with the given non-negative lanes."""
    ok = b >= 0
    ok &= np.all(np.where(inputs_nonneg[None, :], W >= 0, W == 0), axis=1)
    return ok


def _recurrent_nonneg(A: np.ndarray, init: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Largest set S of candidate lanes with init >= 0 and A_jk >= 0 on S, A_jk = 0 off S, for j in S."""
    keep = candidates & (init >= 0)
    while True:
        fine = np.all(np.where(keep[None, :], A >= 0, A == 0), axis=1)
        new = keep & fine
        if np.array_equal(new, keep):
            return keep
        keep = new


def _unit_maps(nonneg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E, P): units = ReLU(E v), v = P units; one unit per non-negative lane, [v+; v-] per signed lane."""
    rows = []
    for j, pos in enumerate(nonneg):
        rows.append((j, 1.0))
        if not pos:
            rows.append((j, -1.0))
    E = np.zeros((len(rows), nonneg.size))
    for u, (j, sign) in enumerate(rows):
        E[u, j] = sign
    return E, E.T.copy()


def chain_to_elman(chain: Chain) -> ElmanNet:
    """The Elman stack computing ``chain`` (see the module docstring); ``CompileError`` on product layers."""
    nonneg = np.zeros(chain.in_dim, dtype=bool)
    P_prev = np.eye(chain.in_dim)
    layers = []
    for i, layer in enumerate(chain.layers):
        W = np.asarray(layer.weight, np.float64)
        b = np.asarray(layer.bias, np.float64)
        if layer.kind == "mul":
            raise CompileError(
                f"layer {i} (mul, width {layer.width}): target {TARGET} cannot host a Multiplicative gate, since an "
                "Elman layer has no product of two units; use a lambda-based conditional (f_ifelse) instead"
            )
        if layer.kind == "relu":
            out_nonneg = np.ones(layer.width, dtype=bool)
            E, P = _unit_maps(out_nonneg)
            M = np.zeros((layer.width, layer.width))
            v0 = np.zeros(layer.width)
        elif layer.kind == "state":
            r = layer.recurrent
            A = np.asarray(layer.A, np.float64)
            init = np.asarray(layer.init, np.float64)
            out_nonneg = _nonneg_rows(W, b, nonneg)
            out_nonneg[:r] = _recurrent_nonneg(A, init, out_nonneg[:r])
            E, P = _unit_maps(out_nonneg)
            M = np.zeros((layer.width, layer.width))
            M[:r, :r] = A
            v0 = np.zeros(layer.width)
            v0[:r] = init
        else:
            raise CompileError(f"layer {i}: target {TARGET} does not know the layer kind {layer.kind!r}")
        layers.append(
            ElmanLayer(
                kernel_i=(E @ W @ P_prev).T,
                bias=E @ b,
                kernel_h=(E @ M @ P).T,
                carry=np.maximum(E @ v0, 0.0),
            )
        )
        nonneg, P_prev = out_nonneg, P
    W_out = np.asarray(chain.readout_weight, np.float64)
    return ElmanNet(chain.in_dim, tuple(layers), (W_out @ P_prev).T, np.asarray(chain.readout_bias, np.float64))


compile_elman = through_chain(chain_to_elman)


def elman_params(net: ElmanNet, dtype=jnp.float32) -> dict:
    check_dtype(dtype)
    cast = lambda a: jnp.asarray(np.asarray(a), dtype=dtype)  # noqa: E731
    return {
        "layers": [{k: cast(v) for k, v in l.arrays().items()} for l in net.layers],
        "readout_kernel": cast(net.readout_kernel),
        "readout_bias": cast(net.readout_bias),
    }


def run_elman(params: dict, x_BxTxD: jax.Array) -> jax.Array:
    """Outputs (B, T, O) of the Elman stack with these parameters (pure; jit-able)."""
    dtype = params["readout_kernel"].dtype
    h_TxBxW = jnp.swapaxes(jnp.asarray(x_BxTxD, dtype), 0, 1)
    for p in params["layers"]:
        drive_TxBxW = h_TxBxW @ p["kernel_i"] + p["bias"][None, None]

        def step(h_BxW, d_BxW, kernel_h=p["kernel_h"]):
            h_BxW = jax.nn.relu(h_BxW @ kernel_h + d_BxW)
            return h_BxW, h_BxW

        h0_BxW = jnp.broadcast_to(p["carry"], drive_TxBxW.shape[1:])
        _, h_TxBxW = jax.lax.scan(step, h0_BxW, drive_TxBxW)
    return jnp.swapaxes(h_TxBxW @ params["readout_kernel"] + params["readout_bias"][None, None], 0, 1)


class ElmanRNN(CompiledRNN):
    """Runs a compiled Elman stack on tokens (B, T, D) -> (B, T, O) in ``dtype`` (weights are ``nnx.Param``s)."""

    def __init__(self, net: ElmanNet, *, dtype=jnp.float32):
        super().__init__(elman_params(net, dtype), run_elman)
