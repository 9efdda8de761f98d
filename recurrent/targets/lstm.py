"""A compiled chain as a stack of LSTM layers in the parameter layout of ``flax.nnx.LSTMCell``.

The cell (flax.nnx.LSTMCell):  i = sigma(x W_ii + h W_hi + b_i),  f = sigma(x W_if + h W_hf + b_f),
g = tanh(x W_ig + h W_hg + b_g),  o = sigma(x W_io + h W_ho + b_o),  c' = f c + i g,  h' = o tanh(c').
The paper (Petrov et al., 2024, Sec. 1, 4) argues LSTMs host LSRL through saturated gates and near-linear
activations; this is that construction, made exact by floating-point saturation.

Scaling. Every hidden unit carries eps * v for its chain value v, with eps = 2^-k (default k = 50): a power of
two, so the rescaling is exact and compensated downstream (the next layer's input weights are divided by eps, the
readout too). For |x| below a threshold tau, XLA's tanh returns x itself (measured: float64 tau ~ 1.5e-8,
float32 tau ~ 4e-4), so tanh is exactly the identity while |v| < tau / eps (1.5e7 in float64 with k = 50).
Gates are saturated: sigma(+-G) with G = 1e3 rounds to exactly 1.0 / 0.0 in float32 and float64.

Layers (u = W v' + b the chain pre-activation of the layer, v' the previous layer's values):
  - state layer, recurrent lanes (s_t = A s_{t-1} + u_t): the cell state is the accumulator. f = 1, i = 1, o = 1,
    g = tanh(eps ((A - I) s_{t-1} + u_t)), so c_t = c_{t-1} + eps ((A - I) s_{t-1} + u_t) = eps s_t, and
    h_t = tanh(c_t) = eps s_t. Initial carry c_0 = h_0 = eps s_0. (W_hg = A - I acts on h = eps s.)
  - state layer, pass-through lanes and ``mul``-free position-wise lanes: f = 0, i = 1, o = 1, g = tanh(eps u).
  - relu layer: f = 0, o = 1, g = tanh(eps u), i = sigma(K u) with K = 2^40: the input gate is the ReLU's
    switch, exactly 0 or 1 when |u| >= G / K (~9e-10). Inside that window i g differs from eps ReLU(u) by at
    most eps |u|, an error of at most 9e-10 in value units.
  - readout y = W_out (h / eps) + b_out.

Exactness and error vs sequence length T. In value units the cell performs the chain's arithmetic with the
recurrence rewritten as s + ((A - I) s + u), so it is exact up to rounding order while (a) every carried value
stays below tau / eps and (b) no ReLU input lies in (0, 9e-10) in magnitude. Both are value bounds: a counter
that grows by one per token meets (a) for T < tau / eps (1.5e7 tokens in float64 at k = 50); past that the tanh
error is relative (eps v)^2 / 3 per step and accumulates linearly in T. The bound does not otherwise depend on T.

Products (``mul`` layers, v = a * c with a, c the two halves of W v' + b): a cell multiplies a value only by a
gate, so a product is hosted only as a gated one, with ``gated_products=True``: per lane, a constant factor (a
row of W that is zero) scales the other inside g with i = 1; otherwise a is taken as a 0/1 condition,
i = sigma(2^13 (a - 1/2)), g = tanh(eps c), f = 0, o = 1, exact when a is 0 or 1 (the multiplicative conditional
modes, ``f_ifelse_mul``: c t + (1 - c) f with c binary); for other a the lane computes [a > 1/2] c instead, wrong
by up to |a - [a > 1/2]| |c|. Without the flag a ``mul`` layer raises ``CompileError`` naming the layer,
because the target cannot host a product of two arbitrary program values.
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

TARGET = "lstm"
GATES = ("i", "f", "g", "o")
SATURATE = 1e3
"""|pre-activation| that rounds sigma to exactly 0 or 1 in float32 and float64."""
RELU_GAIN = 2.0**40
GATE_GAIN = 2.0**13
"""sigma(GATE_GAIN (a - 1/2)) is exactly a for a in {0, 1}, and saturated wherever |a - 1/2| >= 0.13."""


@dataclasses.dataclass(frozen=True)
class LSTMLayer:
    kernel_i: dict[str, np.ndarray]
    """gate -> (in, hidden): ``LSTMCell.ii/if_/ig/io.kernel``."""
    kernel_h: dict[str, np.ndarray]
    """gate -> (hidden, hidden): ``LSTMCell.hi/hf/hg/ho.kernel``."""
    bias: dict[str, np.ndarray]
    """gate -> (hidden,): ``LSTMCell.hi/hf/hg/ho.bias``."""
    carry: tuple[np.ndarray, np.ndarray]
    """(c_0, h_0)."""

    @property
    def width(self) -> int:
        return self.bias["g"].shape[0]

    @property
    def recurrent(self) -> int:
        k = np.zeros((self.width, self.width), dtype=bool)
        for g in GATES:
            k |= self.kernel_h[g] != 0
        return int(np.count_nonzero(k.any(axis=0) | k.any(axis=1) | (self.bias["f"] > 0)))

    def weights(self) -> list[np.ndarray]:
        return [d[g] for d in (self.kernel_i, self.kernel_h, self.bias) for g in GATES]


@dataclasses.dataclass(frozen=True)
class LSTMNet:
    in_dim: int
    layers: tuple[LSTMLayer, ...]
    readout_kernel: np.ndarray
    readout_bias: np.ndarray
    eps: float

    def summary(self) -> TargetSummary:
        arrays = [a for l in self.layers for a in l.weights()]
        return TargetSummary.of(TARGET, self.layers, arrays + [self.readout_kernel, self.readout_bias])


def _gate_layer(W: np.ndarray, b: np.ndarray, eps: float) -> LSTMLayer:
    """A product layer v = a * c (a, c the two halves of W v' + b) as input-gated cells (see the docstring)."""
    w = W.shape[0] // 2
    Wa, ba, Wc, bc = W[:w], b[:w], W[w:], b[w:]
    const_a, const_c = ~Wa.any(axis=1), ~Wc.any(axis=1)
    # A constant factor scales the other one (i = 1); otherwise a is the 0/1 gate: i = sigma(K (a - 1/2)).
    Wg = np.where(const_a[:, None], ba[:, None] * Wc, np.where(const_c[:, None], bc[:, None] * Wa, Wc))
    bg = np.where(const_a, ba * bc, np.where(const_c, bc * ba, bc))
    gated = ~const_a & ~const_c
    Wi = np.where(gated[:, None], GATE_GAIN * Wa, 0.0)
    bi = np.where(gated, GATE_GAIN * (ba - 0.5), SATURATE)
    zeros_i, zeros_h = np.zeros((W.shape[1], w)), np.zeros((w, w))
    return LSTMLayer(
        kernel_i={"i": Wi.T, "f": zeros_i, "g": eps * Wg.T, "o": zeros_i},
        kernel_h={g: zeros_h for g in GATES},
        bias={"i": bi, "f": np.full(w, -SATURATE), "g": eps * bg, "o": np.full(w, SATURATE)},
        carry=(np.zeros(w), np.zeros(w)),
    )


def chain_to_lstm(chain: Chain, scale_exponent: int = 50, gated_products: bool = False) -> LSTMNet:
    """The LSTM stack computing ``chain`` (see the module docstring); ``CompileError`` on product layers."""
    eps = 2.0 ** (-scale_exponent)
    in_scale = 1.0  # hidden units of the previous layer hold in_scale * value (tokens: 1)
    layers = []
    for i, layer in enumerate(chain.layers):
        if layer.kind == "mul" and not gated_products:
            raise CompileError(
                f"layer {i} (mul, width {layer.width}): target {TARGET} cannot host a Multiplicative product of two "
                "program values (a cell multiplies only by a gate); use a lambda-based conditional (f_ifelse), or "
                "gated_products=True when the first factor of every product is a 0/1 condition"
            )
        if layer.kind == "mul":
            W = np.asarray(layer.weight, np.float64) / in_scale
            layers.append(_gate_layer(W, np.asarray(layer.bias, np.float64), eps))
            in_scale = eps
            continue
        if layer.kind not in ("relu", "state"):
            raise CompileError(f"layer {i}: target {TARGET} does not know the layer kind {layer.kind!r}")
        W = np.asarray(layer.weight, np.float64) / in_scale
        b = np.asarray(layer.bias, np.float64)
        w = layer.width
        zeros_i, zeros_h = np.zeros((W.shape[1], w)), np.zeros((w, w))
        kernel_i = {"i": zeros_i, "f": zeros_i, "g": eps * W.T, "o": zeros_i}
        kernel_h = {g: zeros_h for g in GATES}
        bias = {"i": np.full(w, SATURATE), "f": np.full(w, -SATURATE), "g": eps * b, "o": np.full(w, SATURATE)}
        c0 = np.zeros(w)
        if layer.kind == "relu":
            kernel_i["i"] = RELU_GAIN * W.T
            bias["i"] = RELU_GAIN * b
        else:
            r = layer.recurrent
            bias["f"] = np.concatenate([np.full(r, SATURATE), np.full(w - r, -SATURATE)])
            hg = np.zeros((w, w))
            hg[:r, :r] = (np.asarray(layer.A, np.float64) - np.eye(r)).T
            kernel_h["g"] = hg
            c0[:r] = eps * np.asarray(layer.init, np.float64)
        layers.append(LSTMLayer(kernel_i, kernel_h, bias, (c0, np.tanh(c0))))
        in_scale = eps
    W_out = np.asarray(chain.readout_weight, np.float64) / in_scale
    return LSTMNet(chain.in_dim, tuple(layers), W_out.T, np.asarray(chain.readout_bias, np.float64), eps)


compile_lstm = through_chain(chain_to_lstm)


def lstm_params(net: LSTMNet, dtype=jnp.float32) -> dict:
    check_dtype(dtype)
    cast = lambda a: jnp.asarray(np.asarray(a), dtype=dtype)  # noqa: E731
    layers = []
    for l in net.layers:
        layers.append({
            "kernel_i": {g: cast(l.kernel_i[g]) for g in GATES},
            "kernel_h": {g: cast(l.kernel_h[g]) for g in GATES},
            "bias": {g: cast(l.bias[g]) for g in GATES},
            "carry": tuple(cast(c) for c in l.carry),
        })
    return {"layers": layers, "readout_kernel": cast(net.readout_kernel), "readout_bias": cast(net.readout_bias)}


def lstm_step(p: dict, c_BxW: jax.Array, h_BxW: jax.Array, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One LSTMCell step (the flax.nnx.LSTMCell equations) with these parameters."""
    pre = {g: x_BxD @ p["kernel_i"][g] + h_BxW @ p["kernel_h"][g] + p["bias"][g][None] for g in GATES}
    c_BxW = jax.nn.sigmoid(pre["f"]) * c_BxW + jax.nn.sigmoid(pre["i"]) * jnp.tanh(pre["g"])
    return c_BxW, jax.nn.sigmoid(pre["o"]) * jnp.tanh(c_BxW)


def run_lstm(params: dict, x_BxTxD: jax.Array) -> jax.Array:
    """Outputs (B, T, O) of the LSTM stack with these parameters (pure; jit-able)."""
    dtype = params["readout_kernel"].dtype
    h_TxBxW = jnp.swapaxes(jnp.asarray(x_BxTxD, dtype), 0, 1)
    for p in params["layers"]:
        def step(carry, x_BxD, p=p):
            c, h = lstm_step(p, *carry, x_BxD)
            return (c, h), h

        batch = h_TxBxW.shape[1]
        c0, h0 = (jnp.broadcast_to(a, (batch,) + a.shape) for a in p["carry"])
        _, h_TxBxW = jax.lax.scan(step, (c0, h0), h_TxBxW)
    return jnp.swapaxes(h_TxBxW @ params["readout_kernel"] + params["readout_bias"][None, None], 0, 1)


def load_cell(layer: LSTMLayer, dtype=jnp.float32) -> nnx.LSTMCell:
    """A ``flax.nnx.LSTMCell`` holding this layer's weights."""
    in_dim = layer.kernel_i["g"].shape[0]
    cell = nnx.LSTMCell(in_dim, layer.width, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    for g, (xi, hi) in {"i": ("ii", "hi"), "f": ("if_", "hf"), "g": ("ig", "hg"), "o": ("io", "ho")}.items():
        getattr(cell, xi).kernel[...] = jnp.asarray(layer.kernel_i[g], dtype)
        getattr(cell, hi).kernel[...] = jnp.asarray(layer.kernel_h[g], dtype)
        getattr(cell, hi).bias[...] = jnp.asarray(layer.bias[g], dtype)
    return cell


class LSTMRNN(CompiledRNN):
    """Runs a compiled LSTM stack on tokens (B, T, D) -> (B, T, O) in ``dtype`` (weights are ``nnx.Param``s)."""

    def __init__(self, net: LSTMNet, *, dtype=jnp.float32):
        super().__init__(lstm_params(net, dtype), run_lstm)
