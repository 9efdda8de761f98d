"""A compiled chain as a stack of Mamba blocks (the S6 selective SSM) in the reference block's parameterisation.

The block (Gu and Dao, 2023, Alg. 2 and Sec. 3.5; names as in the reference ``Mamba`` module), per channel d of
d_inner, state index n of d_state, input u_t of width d_model:
    [x; z] = in_proj(u)                                  in_proj.weight (2 d_inner, d_model), in_proj.bias
    x      = SiLU(causal depthwise conv_4(x) + b_conv)   conv1d.weight (d_inner, 1, 4), [..., 3] = current token
    [dt~; B; C] = x_proj(x)                              x_proj.weight (dt_rank + 2 d_state, d_inner)
    Delta  = softplus(dt_proj.weight dt~ + dt_proj.bias),   A = -exp(A_log)
    h_t[d, n] = exp(Delta_d A_dn) h_{t-1}[d, n] + Delta_d B_n x_d     (zero-order hold, simplified B; h_{-1} = 0)
    y_d    = sum_n C_n h_t[d, n] + D_d x_d,   y = y * SiLU(z),   out = out_proj(y)
The paper (Petrov et al., 2024, Sec. 1) counts Mamba among the architectures LSRL compiles to; this is a
construction. The chain is first lowered onto diagonal recurrences (``recurrent.passes.diagonal``); each
lowered layer becomes one block whose output is the layer's values (d_model of the next block = that width).

Saturation facts used (both float32 and float64): sigma(64) == 1, so SiLU(64) == 64 and softplus(64) == 64;
exp(-64 e^-60) == 1 (|Delta A| below the resolution at 1); exp(-64 * 1024) == 0. Every channel gets
Delta = 64 (dt_proj.bias = 64, zero weights), d_state = dt_rank = 1, and one constant channel with conv bias 64
(x = 64) from which x_proj reads B = 2^-6 and C = 1, so Delta B = 1 exactly and h_t = abar h_{t-1} + x_t,
y = h_t (D = 0) with abar = 1 (A_log = -60: an exact accumulator), 0 (A_log = log 1024: position-wise) or
exp(64 A) for a decay in (0, 1). Every gate that is not a factor is z = 64, SiLU(z) = 64, undone in out_proj.

Channels per lowered lane (v the lane's value):
  - recurrent or position-wise linear lane, one pair per conv tap j of the lane (its term u = w . h + b enters
    at lag j through conv tap 3 - j): x = SiLU(+u) and x = SiLU(-u), same decay, out_proj (+1, -1) / 64.
    SiLU(u) - SiLU(-u) = u (sigma(u) + sigma(-u)) = u, so by linearity of the recurrence the pair's difference
    is the lane's state. Exact up to rounding (a few ulp per term).
  - relu lane: x = SiLU(K u), K = 2^relu_exponent (default 40), decay 0, out_proj 1 / (64 K).
    |SiLU(K u) / K - ReLU(u)| = |u| sigma(-K |u|) <= 0.2785 / K (2.5e-13 at K = 2^40) for every u, and it is
    below 1e-16 |u| once |u| >= 37 / K (3.4e-11): exact for every ReLU input outside (-37/K, 37/K) except for
    rounding; the error is per token and does not grow with T.
  - product lane v = a c (the halves of W h + b): four channels x = SiLU(s a), z = s' c for s, s' = +-1, out_proj
    s s': (SiLU(a) - SiLU(-a)) (SiLU(c) - SiLU(-c)) = a c for any a, c. Exact up to rounding. A constant factor
    (a zero row) makes it a linear lane instead. ``gated_products=False`` refuses products (CompileError).
Error vs sequence length T: accumulators are exact in floating point (abar == 1), so the error is the rounding
of a running float sum, <= T eps max|state| (eps = 2^-53 in float64), as for the chain itself; decays in (0, 1)
add a relative error of a few ulp per step. Beyond the lowering's ``horizon`` an input-free rotation (a modulo
counter) is wrong. Within these the model equals the interpreter to rounding (tested at 1e-9 in float64).

Not as in the reference stack: blocks have no residual connection and no normalisation (the LSRL chain has
neither; a residual would add the block input to its output), d_model and d_inner vary per block, and
in_proj/out_proj carry biases (the reference block's ``bias=True`` option) for the chain's constants.
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

TARGET = "mamba"
BIG = 64.0
"""sigma(BIG) == 1: SiLU(BIG) == softplus(BIG) == BIG, the constant channel, every Delta and every fixed gate."""
HOLD_LOG = -60.0
"""A_log of an accumulator: |Delta A| = 64 e^-60 < 3e-8, so exp(Delta A) == 1.0 in float32 and float64."""
DROP_LOG = float(np.log(1024.0))
"""A_log of a position-wise channel: Delta A = -65536, exp underflows to exactly 0."""
PARAM_NAMES = (
    "in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
    "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias",
)


@dataclasses.dataclass(frozen=True)
class MambaBlock:
    arrays: dict[str, np.ndarray]
    """The reference block's parameters by name (``PARAM_NAMES``), PyTorch layouts."""

    @property
    def width(self) -> int:
        return self.arrays["D"].shape[0]

    @property
    def recurrent(self) -> int:
        """Channels whose state survives a step (abar > 0)."""
        return int(np.count_nonzero(self.arrays["A_log"][:, 0] < DROP_LOG))


@dataclasses.dataclass(frozen=True)
class MambaNet:
    in_dim: int
    blocks: tuple[MambaBlock, ...]
    readout_weight: np.ndarray
    """(out, width of the last block's output)."""
    readout_bias: np.ndarray
    relu_gain: float

    @property
    def layers(self) -> tuple[MambaBlock, ...]:
        return self.blocks

    def summary(self) -> TargetSummary:
        arrays = [a for blk in self.blocks for a in blk.arrays.values()]
        return TargetSummary.of(TARGET, self.blocks, arrays + [self.readout_weight, self.readout_bias])


@dataclasses.dataclass
class _Channels:
    """Channels of one block under construction: (x row, x bias, lag, conv bias, z row, z bias, A_log, out)."""

    d_model: int
    d_out: int
    rows: list = dataclasses.field(default_factory=list)

    def add(self, x=None, xb=0.0, lag=0, conv_b=0.0, z=None, zb=BIG, a_log=DROP_LOG, out=None):
        zero = np.zeros(self.d_model)
        self.rows.append((zero if x is None else x, xb, lag, conv_b, zero if z is None else z, zb, a_log,
                          np.zeros(self.d_out) if out is None else out))

    def linear(self, row, bias, lag, a_log, lane, scale=1.0):
        for sign in (1.0, -1.0):
            out = np.zeros(self.d_out)
            out[lane] = sign * scale / BIG
            self.add(x=sign * row, xb=sign * bias, lag=lag, a_log=a_log, out=out)

    def block(self) -> MambaBlock:
        n = len(self.rows)
        x, xb, lag, conv_b, z, zb, a_log, out = (np.array(c, dtype=np.float64) for c in zip(*self.rows))
        conv = np.zeros((n, 1, CONV_WIDTH))
        conv[np.arange(n), 0, CONV_WIDTH - 1 - lag.astype(int)] = 1.0
        conv[0] = 0.0  # the constant channel
        x_proj = np.zeros((3, n))
        x_proj[1, 0] = 1.0 / (BIG * BIG)  # B = 64 / 64^2 = 2^-6, so Delta B = 1
        x_proj[2, 0] = 1.0 / BIG  # C = 1
        return MambaBlock({
            "in_proj.weight": np.concatenate([x, z]),
            "in_proj.bias": np.concatenate([xb, zb]),
            "conv1d.weight": conv,
            "conv1d.bias": conv_b,
            "x_proj.weight": x_proj,
            "dt_proj.weight": np.zeros((n, 1)),
            "dt_proj.bias": np.full(n, BIG),
            "A_log": a_log[:, None],
            "D": np.zeros(n),
            "out_proj.weight": out.T.copy(),
            "out_proj.bias": np.zeros(self.d_out),
        })


def _a_log(decay: float) -> float:
    if decay == 1.0:
        return HOLD_LOG
    if decay == 0.0:
        return DROP_LOG
    return float(np.log(-np.log(decay) / BIG))  # exp(64 A) = decay


def _block(layer: DiagonalLayer, d_model: int, relu_gain: float) -> MambaBlock:
    w = layer.width
    ch = _Channels(d_model, w)
    ch.add(conv_b=BIG, zb=0.0)  # channel 0: x = 64, the source of B and C
    if layer.kind == "diag":
        for lane in range(w):
            for j in range(layer.weight.shape[0]):
                row, bias = layer.weight[j, lane], layer.bias[j, lane]
                if row.any() or bias != 0:
                    ch.linear(row, bias, j, _a_log(float(layer.decay[lane])), lane)
    elif layer.kind == "relu":
        for lane in range(w):
            out = np.zeros(w)
            out[lane] = 1.0 / (BIG * relu_gain)
            ch.add(x=relu_gain * layer.weight[lane], xb=relu_gain * layer.bias[lane], out=out)
    else:
        for lane in range(w):
            (Wa, ba), (Wc, bc) = (layer.weight[lane], layer.bias[lane]), (layer.weight[w + lane], layer.bias[w + lane])
            if not Wa.any() or not Wc.any():  # a constant factor: a linear lane
                k, (Wv, bv) = (ba, (Wc, bc)) if not Wa.any() else (bc, (Wa, ba))
                if k != 0 and (Wv.any() or bv != 0):
                    ch.linear(k * Wv, k * bv, 0, DROP_LOG, lane)
                continue
            for sa in (1.0, -1.0):
                for sc in (1.0, -1.0):
                    out = np.zeros(w)
                    out[lane] = sa * sc
                    ch.add(x=sa * Wa, xb=sa * ba, z=sc * Wc, zb=sc * bc, out=out)
    return ch.block()


def diagonal_to_mamba(dchain: DiagonalChain, relu_exponent: int = 40) -> MambaNet:
    gain = 2.0**relu_exponent
    blocks, d_model = [], dchain.in_dim
    for layer in dchain.layers:
        blocks.append(_block(layer, d_model, gain))
        d_model = layer.width
    return MambaNet(dchain.in_dim, tuple(blocks), dchain.readout_weight, np.asarray(dchain.readout_bias), gain)


def chain_to_mamba(
    chain: Chain, relu_exponent: int = 40, gated_products: bool = True, horizon: int = 512
) -> MambaNet:
    """The Mamba stack computing ``chain`` (see the module docstring); ``CompileError`` where it cannot."""
    if not gated_products:
        for i, layer in enumerate(chain.layers):
            if layer.kind == "mul":
                raise CompileError(
                    f"layer {i} (mul, width {layer.width}): target {TARGET} with gated_products=False does not host "
                    "a Multiplicative product; use a lambda-based conditional (f_ifelse) or gated_products=True"
                )
    return diagonal_to_mamba(lower_to_diagonal(chain, TARGET, horizon=horizon), relu_exponent)


compile_mamba = through_chain(chain_to_mamba)


def mamba_params(net: MambaNet, dtype=jnp.float32) -> dict:
    check_dtype(dtype)
    cast = lambda a: jnp.asarray(np.asarray(a), dtype=dtype)  # noqa: E731
    return {
        "layers": [{k: cast(v) for k, v in b.arrays.items()} for b in net.blocks],
        "readout_weight": cast(net.readout_weight),
        "readout_bias": cast(net.readout_bias),
    }


def mamba_step(p: dict, carry: tuple[jax.Array, jax.Array], u_BxM: jax.Array):
    """One token through one Mamba block (the module docstring's equations): the carry is (the last 3 conv
    inputs (B, 3, d_inner), the SSM state (B, d_inner, d_state)); returns (carry, output (B, out))."""
    window_Bx3xI, h_BxIxN = carry
    xz = u_BxM @ p["in_proj.weight"].T + p["in_proj.bias"][None]
    x_BxI, z_BxI = jnp.split(xz, 2, axis=-1)
    taps_Bx4xI = jnp.concatenate([window_Bx3xI, x_BxI[:, None]], axis=1)
    x_BxI = jax.nn.silu(jnp.einsum("bki,ik->bi", taps_Bx4xI, p["conv1d.weight"][:, 0]) + p["conv1d.bias"][None])
    rank, n = p["dt_proj.weight"].shape[1], p["A_log"].shape[1]
    dt, B_BxN, C_BxN = jnp.split(x_BxI @ p["x_proj.weight"].T, [rank, rank + n], axis=-1)
    delta_BxI = jax.nn.softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"][None])
    decay_BxIxN = jnp.exp(delta_BxI[..., None] * -jnp.exp(p["A_log"])[None])
    h_BxIxN = decay_BxIxN * h_BxIxN + (delta_BxI * x_BxI)[..., None] * B_BxN[:, None, :]
    y_BxI = jnp.einsum("bin,bn->bi", h_BxIxN, C_BxN) + p["D"][None] * x_BxI
    y_BxI = y_BxI * jax.nn.silu(z_BxI)
    return (taps_Bx4xI[:, 1:], h_BxIxN), y_BxI @ p["out_proj.weight"].T + p["out_proj.bias"][None]


def run_mamba(params: dict, x_BxTxD: jax.Array) -> jax.Array:
    """Outputs (B, T, O) of the Mamba stack with these parameters (pure; jit-able). One scan over the tokens
    carries every block's conv window and state, so the stack compiles as a single loop."""
    dtype = params["readout_weight"].dtype
    x_TxBxD = jnp.swapaxes(jnp.asarray(x_BxTxD, dtype), 0, 1)
    batch = x_TxBxD.shape[1]
    carry0 = [
        (jnp.zeros((batch, CONV_WIDTH - 1, p["D"].shape[0]), dtype), jnp.zeros((batch,) + p["A_log"].shape, dtype))
        for p in params["layers"]
    ]
    h_TxBxW = scan_tokens(mamba_step, params["layers"], carry0, x_TxBxD)
    return jnp.swapaxes(h_TxBxW @ params["readout_weight"].T + params["readout_bias"][None, None], 0, 1)


class MambaRNN(CompiledRNN):
    """Runs a compiled Mamba stack on tokens (B, T, D) -> (B, T, O) in ``dtype`` (weights are ``nnx.Param``s)."""

    def __init__(self, net: MambaNet, *, dtype=jnp.float32):
        super().__init__(mamba_params(net, dtype), run_mamba)
