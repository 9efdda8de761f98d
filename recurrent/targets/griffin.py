"""A compiled chain as a Hawk stack: Griffin's recurrent (RG-LRU) blocks alternating with gated MLP blocks.

Recurrent block (De et al., 2024, Sec. 2.4 and Fig. 2; names as in the reference implementation), input u_t:
    y   = GeLU(linear_y(u))                                     gate branch
    x   = conv_1d(linear_x(u))                                  causal depthwise, width 4, w[3 - j] reads x_{t-j}
    r_t = sigma(a_gate(x)),  i_t = sigma(input_gate(x))         block-diagonal gates (blocks of width 1 here)
    log a_t = -c r_t softplus(a_param),  c = 8                  (a = sigma(Lambda) with Lambda = -a_param)
    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t),  h_{-1} = 0  (RG-LRU, eq. 4-6)
    out = linear_out(h * y)
MLP block (Sec. 2.2): out = ffw_down(GeLU(u W_up[0] + b_up[0]) * (u W_up[1] + b_up[1])). GeLU is the tanh form
of the reference; the identities used hold for the exact form too. The paper (Petrov et al., 2024, Sec. 1)
counts Hawk/Griffin among the architectures LSRL compiles to; this is a construction.

The chain is lowered onto diagonal recurrences (``recurrent.passes.diagonal``). The stack alternates recurrent
and MLP blocks, as Hawk does; each lowered layer takes the next slot that can host it: a recurrent layer only a
recurrent block, a relu or product layer either kind. An MLP slot facing a recurrent layer holds the identity
(two units per value, GeLU(v) - GeLU(-v) = v). Every block outputs its layer's values (d_model varies).

Saturation facts (float32 and float64): sigma(1000) == 1, GeLU(64) == 64, exp(-8000) == 0, exp(-2^-61) == 1.
Gates r = i = 1 (bias 1000, zero weights). Fixed gate branches are y = GeLU(64) = 64, undone in linear_out.

Channels per lowered lane (v its value):
  - linear lane with decay a, one channel per conv tap j (the term w . h + b enters at lag j): linear_x row
    g (w, b), linear_out 1 / 64, where the gain g undoes the multiplier m = sqrt(1 - a_t^2):
      a = 0:       a_param = 1000, log a_t = -8000, a_t == 0, m == 1, g = 1 (position-wise; exact);
      a = 1:       softplus(a_param) = 2^-(k+3) with k = ``decay_exponent`` (default 61), so log a_t = -2^-k.
                   For k >= 54 a_t == 1.0 in float32/64 (an exact accumulator) while 1 - a_t^2 = 2^(1-k) is
                   still resolved when evaluated as -expm1(2 log a_t): m = 2^((1-k)/2) (2^-30 at k = 61) and
                   g = 1/m; exact up to a relative rounding of a few ulp per token. The same weights in an
                   implementation that forms 1 - exp(2 log a_t) get m = 0 (no input): for those pick k < 53,
                   where a = exp(-2^-k) < 1 and a value written t steps earlier is read scaled by a^t >= 1 - t 2^-k,
                   an error <= T 2^-k sum_t |u_t| after T tokens, plus a gain error ~ 2^(k-53) from the cancellation
                   (the decay/input-gain trade-off: k = 26 balances them, ~1.5e-8 T relative);
      0 < a < 1:   softplus(a_param) = -log(a) / 8, g = 1 / sqrt(1 - a^2): relative rounding per step.
  - relu lane: the RG-LRU channel holds 1 (decay 0, linear_x bias 1), the gate branch is
    GeLU(K (w . h + b)), K = 2^relu_exponent (default 40), linear_out 1 / K; or an MLP unit GeLU(K u) * 1.
    |GeLU(K u) / K - ReLU(u)| = |u| Phi(-K |u|) <= 0.17 / K (1.5e-13) for every u and 0 to rounding once
    |K u| >= 40: per token, not growing with T.
  - product lane v = a c: two channels/units, c through the RG-LRU (decay 0) or the MLP's linear half, gated by
    GeLU(+a) and GeLU(-a), read out +1 and -1: (GeLU(a) - GeLU(-a)) c = a c. Exact to rounding.
    ``gated_products=False`` refuses products (CompileError); a constant factor makes a linear lane.
Error vs sequence length T (default k = 61): the accumulators do not decay, so the model equals the chain up
to rounding, <= a few T eps sum |u| for a running sum (tested at 1e-9 against the interpreter in float64); with
k < 53 add T 2^-k sum |u|. Past the lowering's ``horizon`` an input-free rotation (a modulo counter) is wrong.

Not as in the reference: blocks have no residual connection and no RMSNorm (the LSRL chain has neither), widths
vary per block, there is no local attention (Hawk), and the reference code's segment reset (multiplier 1 at the
first token) is not applied: the paper's equations are.
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
from recurrent.targets.compiled_module import CompiledRNN, scan_tokens
from recurrent.passes.diagonal import CONV_WIDTH, DiagonalChain, DiagonalLayer, lower_to_diagonal
from recurrent.targets.summary import TargetSummary

TARGET = "griffin"
C_EXPONENT = 8.0
SATURATE = 1000.0
BIG = 64.0
"""GeLU(BIG) == BIG in float32 and float64: the fixed gate branch."""


def _softplus_inverse(v: float) -> float:
    return float(np.log(np.expm1(v))) if v < 30 else v


@dataclasses.dataclass(frozen=True)
class GriffinBlock:
    kind: str
    """"recurrent" or "mlp"."""
    arrays: dict[str, np.ndarray]
    """The reference block's parameters by name; Flax layouts (kernel (in, out))."""

    @property
    def width(self) -> int:
        return self.arrays["rg_lru.a_param"].shape[0] if self.kind == "recurrent" else self.arrays["ffw_up.b"].shape[1]

    @property
    def recurrent(self) -> int:
        """RG-LRU channels whose state survives a step (a_t > 0)."""
        return int(np.count_nonzero(self.arrays["rg_lru.a_param"] < SATURATE)) if self.kind == "recurrent" else 0


@dataclasses.dataclass(frozen=True)
class GriffinNet:
    in_dim: int
    blocks: tuple[GriffinBlock, ...]
    readout_weight: np.ndarray
    readout_bias: np.ndarray
    relu_gain: float

    @property
    def layers(self) -> tuple[GriffinBlock, ...]:
        return self.blocks

    def summary(self) -> TargetSummary:
        arrays = [a for b in self.blocks for a in b.arrays.values()]
        return TargetSummary.of(TARGET, self.blocks, arrays + [self.readout_weight, self.readout_bias])


def _decay_param(decay: float, decay_exponent: int) -> tuple[float, float]:
    """(a_param, input gain 1 / sqrt(1 - a_t^2)) for a channel of this decay (r_t = 1)."""
    if decay == 0.0:
        return SATURATE, 1.0
    neg_log_a = 2.0**-decay_exponent if decay == 1.0 else -float(np.log(decay))
    a_param = _softplus_inverse(neg_log_a / C_EXPONENT)
    log_a = -C_EXPONENT * float(np.logaddexp(a_param, 0.0))
    return a_param, 1.0 / float(np.sqrt(-np.expm1(2.0 * log_a)))


@dataclasses.dataclass
class _Units:
    """Channels (recurrent block) or hidden units (MLP block): value row/bias, lag, gate row/bias, decay, out."""

    d_model: int
    d_out: int
    rows: list = dataclasses.field(default_factory=list)

    def add(self, value=None, vb=0.0, lag=0, gate=None, gb=BIG, decay=0.0, out=None):
        zero = np.zeros(self.d_model)
        self.rows.append((zero if value is None else value, vb, lag, zero if gate is None else gate, gb, decay,
                          np.zeros(self.d_out) if out is None else out))

    def unit(self, lane: int, coef: float) -> np.ndarray:
        out = np.zeros(self.d_out)
        out[lane] = coef
        return out

    def columns(self):
        if not self.rows:  # an empty layer still needs one (idle) unit
            self.add(gb=0.0)
        value, vb, lag, gate, gb, decay, out = (np.array(c, dtype=np.float64) for c in zip(*self.rows))
        return value, vb, lag.astype(int), gate, gb, decay, out

    def recurrent_block(self, decay_exponent: int) -> GriffinBlock:
        value, vb, lag, gate, gb, decay, out = self.columns()
        n = len(vb)
        params = [_decay_param(float(a), decay_exponent) for a in decay]
        gain = np.array([g for _, g in params])
        conv = np.zeros((CONV_WIDTH, n))
        conv[CONV_WIDTH - 1 - lag, np.arange(n)] = 1.0
        return GriffinBlock("recurrent", {
            "linear_y.kernel": gate.T.copy(),
            "linear_y.bias": gb,
            "linear_x.kernel": (gain[:, None] * value).T.copy(),
            "linear_x.bias": gain * vb,
            "conv_1d.w": conv,
            "conv_1d.b": np.zeros(n),
            "rg_lru.a_param": np.array([a for a, _ in params]),
            "rg_lru.input_gate.w": np.zeros((n, 1, 1)),
            "rg_lru.input_gate.b": np.full((n, 1), SATURATE),
            "rg_lru.a_gate.w": np.zeros((n, 1, 1)),
            "rg_lru.a_gate.b": np.full((n, 1), SATURATE),
            "linear_out.kernel": out,
            "linear_out.bias": np.zeros(self.d_out),
        })

    def mlp_block(self) -> GriffinBlock:
        value, vb, _, gate, gb, _, out = self.columns()
        return GriffinBlock("mlp", {
            "ffw_up.w": np.stack([gate.T, value.T]),
            "ffw_up.b": np.stack([gb, vb]),
            "ffw_down.kernel": out,
            "ffw_down.bias": np.zeros(self.d_out),
        })


def _position_wise(units: _Units, layer: DiagonalLayer, relu_gain: float) -> None:
    """Relu lanes (gate GeLU(K u), value 1) and product lanes (gates GeLU(+-a), value c); see the docstring."""
    w = layer.width
    if layer.kind == "relu":
        for lane in range(w):
            units.add(vb=1.0, gate=relu_gain * layer.weight[lane], gb=relu_gain * layer.bias[lane],
                      out=units.unit(lane, 1.0 / relu_gain))
        return
    for lane in range(w):
        (Wa, ba), (Wc, bc) = (layer.weight[lane], layer.bias[lane]), (layer.weight[w + lane], layer.bias[w + lane])
        if not Wa.any() or not Wc.any():  # a constant factor: a linear lane
            k, (Wv, bv) = (ba, (Wc, bc)) if not Wa.any() else (bc, (Wa, ba))
            if k != 0 and (Wv.any() or bv != 0):
                _identity_lane(units, k * Wv, k * bv, lane)
            continue
        for s in (1.0, -1.0):
            units.add(value=Wc, vb=bc, gate=s * Wa, gb=s * ba, out=units.unit(lane, s))


def _identity_lane(units: _Units, row: np.ndarray, bias: float, lane: int) -> None:
    """v = GeLU(u) * 1 - GeLU(-u) * 1 (works in both block kinds: value 1, two gates)."""
    for s in (1.0, -1.0):
        units.add(vb=1.0, gate=s * row, gb=s * bias, out=units.unit(lane, s))


def diagonal_to_griffin(dchain: DiagonalChain, relu_exponent: int = 40, decay_exponent: int = 61) -> GriffinNet:
    gain = 2.0**relu_exponent
    blocks: list[GriffinBlock] = []
    d_model = dchain.in_dim
    for layer in dchain.layers:
        mlp_slot = len(blocks) % 2 == 1
        if mlp_slot and layer.kind == "diag":
            units = _Units(d_model, d_model)
            for lane in range(d_model):
                _identity_lane(units, np.eye(d_model)[lane], 0.0, lane)
            blocks.append(units.mlp_block())
            mlp_slot = False
        units = _Units(d_model, layer.width)
        if layer.kind == "diag":
            for lane in range(layer.width):
                for j in range(layer.weight.shape[0]):
                    row, bias = layer.weight[j, lane], layer.bias[j, lane]
                    if row.any() or bias != 0:
                        units.add(value=row, vb=bias, lag=j, decay=float(layer.decay[lane]),
                                  out=units.unit(lane, 1.0 / BIG))
        else:
            _position_wise(units, layer, gain)
        blocks.append(units.mlp_block() if mlp_slot else units.recurrent_block(decay_exponent))
        d_model = layer.width
    return GriffinNet(dchain.in_dim, tuple(blocks), dchain.readout_weight, np.asarray(dchain.readout_bias), gain)


def chain_to_griffin(
    chain: Chain, relu_exponent: int = 40, gated_products: bool = True, horizon: int = 512, decay_exponent: int = 61
) -> GriffinNet:
    """The Hawk stack computing ``chain`` (see the module docstring); ``CompileError`` where it cannot."""
    if not 1 <= decay_exponent <= 120:
        raise CompileError(f"chain_to_griffin: decay_exponent={decay_exponent} must be in 1..120")
    if not gated_products:
        for i, layer in enumerate(chain.layers):
            if layer.kind == "mul":
                raise CompileError(
                    f"layer {i} (mul, width {layer.width}): target {TARGET} with gated_products=False does not host "
                    "a Multiplicative product; use a lambda-based conditional (f_ifelse) or gated_products=True"
                )
    dchain = lower_to_diagonal(chain, TARGET, horizon=horizon)
    return diagonal_to_griffin(dchain, relu_exponent, decay_exponent)


compile_griffin = through_chain(chain_to_griffin)


def griffin_params(net: GriffinNet, dtype=jnp.float32) -> dict:
    check_dtype(dtype)
    cast = lambda a: jnp.asarray(np.asarray(a), dtype=dtype)  # noqa: E731
    return {
        "layers": [{k: cast(v) for k, v in b.arrays.items()} for b in net.blocks],
        "readout_weight": cast(net.readout_weight),
        "readout_bias": cast(net.readout_bias),
    }


def rg_lru_step(p: dict, h_BxW: jax.Array, x_BxW: jax.Array) -> jax.Array:
    """h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t), with 1 - a_t^2 evaluated as -expm1(2 log a_t)."""
    i_t = jax.nn.sigmoid(x_BxW * p["rg_lru.input_gate.w"][None, :, 0, 0] + p["rg_lru.input_gate.b"][None, :, 0])
    r_t = jax.nn.sigmoid(x_BxW * p["rg_lru.a_gate.w"][None, :, 0, 0] + p["rg_lru.a_gate.b"][None, :, 0])
    log_a = -C_EXPONENT * r_t * jax.nn.softplus(p["rg_lru.a_param"])[None]
    return jnp.exp(log_a) * h_BxW + jnp.sqrt(-jnp.expm1(2.0 * log_a)) * (i_t * x_BxW)


def griffin_step(p: dict, carry, u_BxM: jax.Array):
    """One token through one block; the carry of a recurrent block is (last 3 conv inputs, RG-LRU state)."""
    if "ffw_up.w" in p:
        gate_BxH = jax.nn.gelu(u_BxM @ p["ffw_up.w"][0] + p["ffw_up.b"][0][None])
        hidden = gate_BxH * (u_BxM @ p["ffw_up.w"][1] + p["ffw_up.b"][1][None])
        return carry, hidden @ p["ffw_down.kernel"] + p["ffw_down.bias"][None]
    window_Bx3xW, h_BxW = carry
    gate_BxW = jax.nn.gelu(u_BxM @ p["linear_y.kernel"] + p["linear_y.bias"][None])
    x_BxW = u_BxM @ p["linear_x.kernel"] + p["linear_x.bias"][None]
    taps_Bx4xW = jnp.concatenate([window_Bx3xW, x_BxW[:, None]], axis=1)
    x_BxW = jnp.einsum("bkw,kw->bw", taps_Bx4xW, p["conv_1d.w"]) + p["conv_1d.b"][None]
    h_BxW = rg_lru_step(p, h_BxW, x_BxW)
    return (taps_Bx4xW[:, 1:], h_BxW), (h_BxW * gate_BxW) @ p["linear_out.kernel"] + p["linear_out.bias"][None]


def run_griffin(params: dict, x_BxTxD: jax.Array) -> jax.Array:
    """Outputs (B, T, O) of the Hawk stack with these parameters (pure; jit-able; one scan over the tokens)."""
    dtype = params["readout_weight"].dtype
    x_TxBxD = jnp.swapaxes(jnp.asarray(x_BxTxD, dtype), 0, 1)
    batch = x_TxBxD.shape[1]
    carry0 = []
    for p in params["layers"]:
        w = p["rg_lru.a_param"].shape[0] if "rg_lru.a_param" in p else 0
        carry0.append((jnp.zeros((batch, CONV_WIDTH - 1, w), dtype), jnp.zeros((batch, w), dtype)))
    h_TxBxW = scan_tokens(griffin_step, params["layers"], carry0, x_TxBxD)
    return jnp.swapaxes(h_TxBxW @ params["readout_weight"].T + params["readout_bias"][None, None], 0, 1)


class GriffinRNN(CompiledRNN):
    """Runs a compiled Hawk stack on tokens (B, T, D) -> (B, T, O) in ``dtype`` (weights are ``nnx.Param``s)."""

    def __init__(self, net: GriffinNet, *, dtype=jnp.float32):
        super().__init__(griffin_params(net, dtype), run_griffin)
