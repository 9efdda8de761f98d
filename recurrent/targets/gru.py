"""A compiled chain as a stack of GRU layers in the parameter layout of ``flax.nnx.GRUCell``.

The cell (flax.nnx.GRUCell; dense_i = x W_i + b_i and dense_h = h W_h, each split into r, z, n thirds):
    r = sigma(x W_ir + b_ir + h W_hr),  z = sigma(x W_iz + b_iz + h W_hz),
    n = tanh(x W_in + b_in + r * (h W_hn)),  h' = (1 - z) n + z h.
The paper (Petrov et al., 2024, Sec. 1, 4) argues GRUs host LSRL through saturated update gates; this is that
construction, made exact by floating-point saturation.

Scaling (as in ``recurrent.targets.lstm``). Hidden units carry eps * value with eps = 2^-k (default k = 50), a
power of two compensated in the next layer's input weights and the readout; tanh(x) == x in floating point for
|x| < tau (float64 ~ 1.5e-8, float32 ~ 4e-4), so tanh is exactly linear while |value| < tau / eps. Gates are
saturated with pre-activations of +-G, G = 1e3, where sigma rounds to exactly 1.0 / 0.0.

Layers (u = W v' + b the chain pre-activation, v' the previous layer's values):
  - state layer lanes (s_t = A s_{t-1} + u_t; pass-through lanes have A = 0): the update gate z = 0 overwrites,
    the reset gate r = 1 lets the recurrence through: h_t = n = tanh(eps u_t + h_{t-1} A^T) = eps s_t,
    h_0 = eps s_0. One unit per lane.
  - relu layer: two units per lane, p (sample and hold) and q (the held value, delayed), both gated by the sign of
    u through sigma(-K u) with K = 2^40:
        p: z = sigma(-K u), n = tanh(eps u)              ->  p_t = eps u_t if u_t > 0, else p_{t-1}
        q: z = 0, r = sigma(-K u), n = tanh(r p_{t-1})   ->  q_t = p_{t-1} if u_t < 0, else 0
    so p_t - q_t = eps ReLU(u_t) exactly, and at u_t = 0 both gates are 1/2 and p_t - q_t = 0. The next layer
    reads (p - q) / eps. p_0 = q_0 = 0.
  - readout y = W_out (value map of the last layer's units) + b_out.

Exactness and error vs sequence length T: exact up to rounding order while (a) every carried value (including the
held p) stays below tau / eps (1.5e7 in float64 at k = 50: a unit counter is exact for T < 1.5e7 tokens, after
which tanh's relative error (eps v)^2 / 3 per step accumulates linearly in T) and (b) no ReLU input lies in
(0, G / K) ~ (0, 9e-10) in magnitude, where the gates are not saturated; there the error is at most the held
value's magnitude for that token. Otherwise the error does not depend on T.

Products (``mul`` layers, v = a * c, the halves of W v' + b): a cell multiplies a value only by a gate, so a
product is hosted only as a gated one, with ``gated_products=True``: the same (p, q) pairs with n = c and the
switch sigma(-2^13 (a - 1/2)) (a constant factor instead scales c, with the switch always on). Exact when a is
0 or 1 (the multiplicative conditional modes, ``f_ifelse_mul``); for other a the lane computes [a > 1/2] c.
Without the flag a ``mul`` layer raises ``CompileError`` naming the layer, because the target cannot host a
product of two arbitrary program values.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recurrent.chain import Chain
from recurrent.compile import through_chain
from recurrent.errors import CompileError
from recurrent.scan import check_dtype
from recurrent.targets.summary import TargetSummary
from recurrent.targets.compiled_module import CompiledRNN

TARGET = "gru"
SATURATE = 1e3
RELU_GAIN = 2.0**40
GATE_GAIN = 2.0**13


@dataclasses.dataclass(frozen=True)
class GRULayer:
    kernel_i: np.ndarray
    """(in, 3 hidden), thirds r, z, n: ``GRUCell.dense_i.kernel``."""
    bias: np.ndarray
    """(3 hidden,): ``GRUCell.dense_i.bias``."""
    kernel_h: np.ndarray
    """(hidden, 3 hidden): ``GRUCell.dense_h.kernel``."""
    carry: np.ndarray

    @property
    def width(self) -> int:
        return self.carry.shape[0]

    @property
    def recurrent(self) -> int:
        k = self.kernel_h != 0
        w = self.width
        used = k.any(axis=1) | k[:, :w].any(axis=0) | k[:, w : 2 * w].any(axis=0) | k[:, 2 * w :].any(axis=0)
        return int(np.count_nonzero(used))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"kernel_i": self.kernel_i, "bias": self.bias, "kernel_h": self.kernel_h, "carry": self.carry}


@dataclasses.dataclass(frozen=True)
class GRUNet:
    in_dim: int
    layers: tuple[GRULayer, ...]
    readout_kernel: np.ndarray
    readout_bias: np.ndarray
    eps: float

    def summary(self) -> TargetSummary:
        arrays = [a for l in self.layers for k, a in l.arrays().items() if k != "carry"]
        return TargetSummary.of(TARGET, self.layers, arrays + [self.readout_kernel, self.readout_bias])


def _state_layer(W: np.ndarray, b: np.ndarray, A: np.ndarray, init: np.ndarray, eps: float) -> GRULayer:
    w, d = W.shape[0], W.shape[1]
    kernel_i = np.zeros((d, 3 * w))
    kernel_i[:, 2 * w :] = eps * W.T
    bias = np.concatenate([np.full(w, SATURATE), np.full(w, -SATURATE), eps * b])
    kernel_h = np.zeros((w, 3 * w))
    kernel_h[:, 2 * w :] = A.T
    return GRULayer(kernel_i, bias, kernel_h, eps * init)


def _hold_layer(Ws: np.ndarray, bs: np.ndarray, Wn: np.ndarray, bn: np.ndarray, eps: float) -> GRULayer:
    """Sample-and-hold pairs (p, q) with p - q = eps n_t when the switch s_t = Ws x + bs > 0, else 0 (see the
    module docstring; the switch's pre-activation is already scaled by its gain)."""
    w, d = Wn.shape[0], Wn.shape[1]
    h = 2 * w  # units [p; q]
    kernel_i = np.zeros((d, 3 * h))
    bias = np.zeros(3 * h)
    # r (third 0): p's is irrelevant (its n reads no h), q's is sigma(-s).
    kernel_i[:, w:h] = -Ws.T
    bias[w:h] = -bs
    # z (third 1): p's is sigma(-s), q's is 0.
    kernel_i[:, h : h + w] = -Ws.T
    bias[h : h + w] = -bs
    bias[h + w : 2 * h] = -SATURATE
    # n (third 2): p's is tanh(eps n), q's is tanh(r p_{t-1}).
    kernel_i[:, 2 * h : 2 * h + w] = eps * Wn.T
    bias[2 * h : 2 * h + w] = eps * bn
    kernel_h = np.zeros((h, 3 * h))
    kernel_h[np.arange(w), 2 * h + w + np.arange(w)] = 1.0
    return GRULayer(kernel_i, bias, kernel_h, np.zeros(h))


def _relu_layer(W: np.ndarray, b: np.ndarray, eps: float) -> GRULayer:
    return _hold_layer(RELU_GAIN * W, RELU_GAIN * b, W, b, eps)


def _gate_layer(W: np.ndarray, b: np.ndarray, eps: float) -> GRULayer:
    """A product layer v = a * c (the halves of W v' + b): a constant factor scales the other one with the switch
    always on; otherwise a is the 0/1 switch, s = 2^13 (a - 1/2), and n = c."""
    w = W.shape[0] // 2
    Wa, ba, Wc, bc = W[:w], b[:w], W[w:], b[w:]
    const_a, const_c = ~Wa.any(axis=1), ~Wc.any(axis=1)
    Wn = np.where(const_a[:, None], ba[:, None] * Wc, np.where(const_c[:, None], bc[:, None] * Wa, Wc))
    bn = np.where(const_a, ba * bc, np.where(const_c, bc * ba, bc))
    gated = ~const_a & ~const_c
    Ws = np.where(gated[:, None], GATE_GAIN * Wa, 0.0)
    bs = np.where(gated, GATE_GAIN * (ba - 0.5), SATURATE)
    return _hold_layer(Ws, bs, Wn, bn, eps)


def chain_to_gru(chain: Chain, scale_exponent: int = 50, gated_products: bool = False) -> GRUNet:
    """The GRU stack computing ``chain`` (see the module docstring); ``CompileError`` on product layers."""
    eps = 2.0 ** (-scale_exponent)
    value_map = np.eye(chain.in_dim)  # values of the previous layer = value_map @ its hidden units
    layers = []
    for i, layer in enumerate(chain.layers):
        if layer.kind == "mul" and not gated_products:
            raise CompileError(
                f"layer {i} (mul, width {layer.width}): target {TARGET} cannot host a Multiplicative product of two "
                "program values (a cell multiplies only by a gate); use a lambda-based conditional (f_ifelse), or "
                "gated_products=True when the first factor of every product is a 0/1 condition"
            )
        W = np.asarray(layer.weight, np.float64) @ value_map
        b = np.asarray(layer.bias, np.float64)
        w = layer.width
        if layer.kind == "mul":
            layers.append(_gate_layer(W, b, eps))
            value_map = np.concatenate([np.eye(w), -np.eye(w)], axis=1) / eps
            continue
        if layer.kind == "state":
            r = layer.recurrent
            A, init = np.zeros((w, w)), np.zeros(w)
            A[:r, :r] = np.asarray(layer.A, np.float64)
            init[:r] = np.asarray(layer.init, np.float64)
            layers.append(_state_layer(W, b, A, init, eps))
            value_map = np.eye(w) / eps
        elif layer.kind == "relu":
            layers.append(_relu_layer(W, b, eps))
            value_map = np.concatenate([np.eye(w), -np.eye(w)], axis=1) / eps
        else:
            raise CompileError(f"layer {i}: target {TARGET} does not know the layer kind {layer.kind!r}")
    W_out = np.asarray(chain.readout_weight, np.float64) @ value_map
    return GRUNet(chain.in_dim, tuple(layers), W_out.T, np.asarray(chain.readout_bias, np.float64), eps)


compile_gru = through_chain(chain_to_gru)


def gru_params(net: GRUNet, dtype=jnp.float32) -> dict:
    check_dtype(dtype)
    cast = lambda a: jnp.asarray(np.asarray(a), dtype=dtype)  # noqa: E731
    return {
        "layers": [{k: cast(v) for k, v in l.arrays().items()} for l in net.layers],
        "readout_kernel": cast(net.readout_kernel),
        "readout_bias": cast(net.readout_bias),
    }


def gru_step(p: dict, h_BxW: jax.Array, x_BxD: jax.Array) -> jax.Array:
    """One GRUCell step (the flax.nnx.GRUCell equations) with these parameters."""
    xr, xz, xn = jnp.split(x_BxD @ p["kernel_i"] + p["bias"][None], 3, axis=-1)
    hr, hz, hn = jnp.split(h_BxW @ p["kernel_h"], 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h_BxW


def run_gru(params: dict, x_BxTxD: jax.Array) -> jax.Array:
    """Outputs (B, T, O) of the GRU stack with these parameters (pure; jit-able)."""
    dtype = params["readout_kernel"].dtype
    h_TxBxW = jnp.swapaxes(jnp.asarray(x_BxTxD, dtype), 0, 1)
    for p in params["layers"]:
        def step(h, x_BxD, p=p):
            h = gru_step(p, h, x_BxD)
            return h, h

        h0 = jnp.broadcast_to(p["carry"], (h_TxBxW.shape[1],) + p["carry"].shape)
        _, h_TxBxW = jax.lax.scan(step, h0, h_TxBxW)
    return jnp.swapaxes(h_TxBxW @ params["readout_kernel"] + params["readout_bias"][None, None], 0, 1)


def load_cell(layer: GRULayer, dtype=jnp.float32) -> nnx.GRUCell:
    """A ``flax.nnx.GRUCell`` holding this layer's weights."""
    cell = nnx.GRUCell(layer.kernel_i.shape[0], layer.width, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    cell.dense_i.kernel[...] = jnp.asarray(layer.kernel_i, dtype)
    cell.dense_i.bias[...] = jnp.asarray(layer.bias, dtype)
    cell.dense_h.kernel[...] = jnp.asarray(layer.kernel_h, dtype)
    return cell


class GRURNN(CompiledRNN):
    """Runs a compiled GRU stack on tokens (B, T, D) -> (B, T, O) in ``dtype`` (weights are ``nnx.Param``s)."""

    def __init__(self, net: GRUNet, *, dtype=jnp.float32):
        super().__init__(gru_params(net, dtype), run_gru)
