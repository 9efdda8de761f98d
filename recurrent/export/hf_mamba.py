"""A compiled Mamba stack as a Hugging Face ``MambaForCausalLM`` checkpoint that transformers loads and runs.

``recurrent.targets.mamba`` builds the blocks (``MambaNet``: the selective-SSM block's parameters, per block
d_model and d_inner). The reference stack (``MambaForCausalLM``) differs in three ways, each met exactly here:

1. Every block is pre-normalised and residual: h <- h + mixer(RMSNorm(h)), RMSNorm(h) = w * h / sqrt(mean(h^2) +
   eps), and a final RMSNorm precedes the head. ``layer_norm_epsilon`` is a config field: with eps = 2^120 and
   w = 2^60, mean(h^2) + eps == eps in float32 whenever mean(h^2) < 2^96 (half the spacing of float32 at 2^120),
   so rsqrt gives 2^-60 and RMSNorm(h) == h bit for bit (power-of-two products are exact for |h| >= 2^-66).
   The normalisation is therefore the identity on every stream with rms below 2^48 (2.8e14); ``check_stream``
   reports a stream beyond it.
2. One width for all blocks: the stream has lane 0 = 1 (the embedding's constant, read by the head's bias
   terms), and two regions A and B used alternately: block b reads the chain's layer b-1 values from one region
   and writes layer b's values into the other, which holds zeros then. Block b also clears its input region:
   per lane v two channels x = SiLU(+K v) and SiLU(-K v) (K = 2^60, decay 0, gate 64), read out as
   (-x+ + x-) / (64 K). For K|v| >= 18, SiLU(K|v|) == K|v| and SiLU(-K|v|) is 0 or below half an ulp, so the
   residual adds exactly -v and the lane returns to 0 (v + (-v) == 0 in IEEE arithmetic); below that
   (0 < |v| < 1.6e-17) a residue under 2e-17 remains. The stream at every block boundary is then exactly the
   chain's layer values, in region A or B, as the layout file says. Every block has the same d_inner
   (``expand`` * hidden, channels beyond a block's own are zero) and the same d_state = dt_rank = 1.
3. Tokens in, logits out. The embedding of token k holds (1, k) in (lane 0, the input lane), so the program
   reads the token id as a number. The head (no bias) decodes the program's output y = R h + r as
   logits_k = 2 k y - k^2 = sum_lanes 2 k R h + (2 k r - k^2) * 1, whose argmax is the integer nearest y for
   y in [0, vocab) (logit_y - logit_k = (y - k)^2). ``output="values"`` writes the readout itself instead
   (logits = y), for programs whose outputs are not token ids; their inputs go in as ``inputs_embeds``
   (``residual_inputs``).

What stays as in ``recurrent.targets.mamba``: the SiLU(K u) ReLU (2^-40 absolute error at most), the +-pair
linear lanes and four-channel products (rounding only), Delta = softplus(64) = 64, B = 2^-6, C = 1 from the
constant channel. Written in float32 (``torch_dtype``); bfloat16 would round the 2^60-scaled channels' sums.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from recurrent.errors import CompileError
from recurrent.passes.diagonal import CONV_WIDTH
from recurrent.targets.mamba import BIG, DROP_LOG, MambaNet

NORM_EPS = 2.0**120
"""``layer_norm_epsilon``: larger than any mean square the stream reaches, so RMSNorm divides by 2^60."""
NORM_GAIN = 2.0**60
"""Every RMSNorm weight: rsqrt(NORM_EPS) * NORM_GAIN == 1."""
STREAM_RMS_LIMIT = 2.0**48
"""RMSNorm is the identity while the stream's root mean square stays below this."""
CLEAR_GAIN = 2.0**60
"""K of the clearing channels: SiLU(K v) == K v for |v| >= 18 / K."""
LAYOUT_FILE = "lsrl_layout.json"
OUTPUTS = ("tokens", "values")


@dataclasses.dataclass(frozen=True)
class ResidualLayout:
    """Where the chain's values live in the exported model's residual stream."""

    hidden: int
    intermediate: int
    const_lane: int
    input_lanes: tuple[int, ...]
    block_lanes: tuple[tuple[int, ...], ...]
    """Lanes holding block b's output (the chain's diagonal layer b) after block b."""
    output: str
    vocab_size: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ResidualLayout":
        return cls(hidden=d["hidden"], intermediate=d["intermediate"], const_lane=d["const_lane"],
                   input_lanes=tuple(d["input_lanes"]), block_lanes=tuple(tuple(b) for b in d["block_lanes"]),
                   output=d["output"], vocab_size=d["vocab_size"])


def block_outputs(block) -> int:
    """The width of a block's output (``MambaBlock.width`` counts its channels)."""
    return block.arrays["out_proj.weight"].shape[0]


def plan_layout(net: MambaNet, output: str, vocab_size: int) -> ResidualLayout:
    widths = [net.in_dim] + [block_outputs(b) for b in net.blocks]
    region_a = max(widths[0::2])
    region_b = max(widths[1::2]) if len(widths) > 1 else 0
    hidden = 1 + region_a + region_b
    lanes = [tuple(range(1, 1 + w)) if i % 2 == 0 else tuple(range(1 + region_a, 1 + region_a + w))
             for i, w in enumerate(widths)]
    channels = max((b.width + 2 * widths[i] for i, b in enumerate(net.blocks)), default=1)  # own + clearing
    expand = max(1, math.ceil(channels / hidden))
    return ResidualLayout(hidden=hidden, intermediate=expand * hidden, const_lane=0, input_lanes=lanes[0],
                          block_lanes=tuple(lanes[1:]), output=output, vocab_size=vocab_size)


def _block_tensors(block, reads: tuple[int, ...], writes: tuple[int, ...], hidden: int, inner: int) -> dict:
    p = {k: np.asarray(v, np.float64) for k, v in block.arrays.items()}
    n = block.width
    clear = np.arange(n, n + 2 * len(reads)).reshape(-1, 2)
    in_w = np.zeros((2 * inner, hidden))
    in_b = np.zeros(2 * inner)
    in_w[:n, list(reads)] = p["in_proj.weight"][:n]
    in_w[inner:inner + n, list(reads)] = p["in_proj.weight"][n:]
    in_b[:n], in_b[inner:inner + n] = p["in_proj.bias"][:n], p["in_proj.bias"][n:]
    in_w[clear[:, 0], list(reads)] = CLEAR_GAIN
    in_w[clear[:, 1], list(reads)] = -CLEAR_GAIN
    in_b[inner + clear.reshape(-1)] = BIG
    conv = np.zeros((inner, 1, CONV_WIDTH))
    conv[:n] = p["conv1d.weight"]
    conv[clear.reshape(-1), 0, CONV_WIDTH - 1] = 1.0
    conv_b = np.zeros(inner)
    conv_b[:n] = p["conv1d.bias"]
    x_proj = np.zeros((p["x_proj.weight"].shape[0], inner))
    x_proj[:, :n] = p["x_proj.weight"]
    dt_w = np.zeros((inner, p["dt_proj.weight"].shape[1]))
    dt_b = np.full(inner, BIG)
    a_log = np.full((inner, p["A_log"].shape[1]), DROP_LOG)
    a_log[:n] = p["A_log"]
    out_w = np.zeros((hidden, inner))
    out_b = np.zeros(hidden)
    out_w[list(writes), :n] = p["out_proj.weight"]
    out_b[list(writes)] = p["out_proj.bias"]
    out_w[list(reads), clear[:, 0]] = -1.0 / (BIG * CLEAR_GAIN)
    out_w[list(reads), clear[:, 1]] = 1.0 / (BIG * CLEAR_GAIN)
    return {
        "norm.weight": np.full(hidden, NORM_GAIN),
        "mixer.in_proj.weight": in_w, "mixer.in_proj.bias": in_b,
        "mixer.conv1d.weight": conv, "mixer.conv1d.bias": conv_b,
        "mixer.x_proj.weight": x_proj,
        "mixer.dt_proj.weight": dt_w, "mixer.dt_proj.bias": dt_b,
        "mixer.A_log": a_log, "mixer.D": np.zeros(inner),
        "mixer.out_proj.weight": out_w, "mixer.out_proj.bias": out_b,
    }


def hf_mamba_checkpoint(net: MambaNet, *, output: str = "tokens", vocab_size: int | None = None
                        ) -> tuple[dict, dict[str, np.ndarray], ResidualLayout]:
    """(config.json contents, state dict in float32, layout) of ``MambaForCausalLM`` computing ``net``.

    ``output="tokens"``: a program from one token id to one token id over ``vocab_size`` tokens;
    ``output="values"``: logits are the program's outputs (``vocab_size`` = their number)."""
    if output not in OUTPUTS:
        raise CompileError(f"hf export: output={output!r} must be one of {OUTPUTS}")
    out_dim = net.readout_weight.shape[0]
    if output == "tokens":
        if net.in_dim != 1 or out_dim != 1:
            raise CompileError(f"hf export: output='tokens' needs a program from one token to one token; this one "
                               f"reads {net.in_dim} and writes {out_dim} values (use output='values')")
        if vocab_size is None or vocab_size < 2:
            raise CompileError(f"hf export: output='tokens' needs vocab_size >= 2, got {vocab_size}")
    else:
        if vocab_size not in (None, out_dim):
            raise CompileError(f"hf export: output='values' writes {out_dim} logits; vocab_size={vocab_size}")
        vocab_size = out_dim
    layout = plan_layout(net, output, vocab_size)
    H, inner = layout.hidden, layout.intermediate
    reads = (layout.input_lanes,) + layout.block_lanes[:-1]
    tensors: dict[str, np.ndarray] = {}
    for b, block in enumerate(net.blocks):
        for name, arr in _block_tensors(block, reads[b], layout.block_lanes[b], H, inner).items():
            tensors[f"backbone.layers.{b}.{name}"] = arr
    last = list(layout.block_lanes[-1] if net.blocks else layout.input_lanes)
    embed = np.zeros((vocab_size, H))
    embed[:, layout.const_lane] = 1.0
    head = np.zeros((vocab_size, H))
    R, r = np.asarray(net.readout_weight, np.float64), np.asarray(net.readout_bias, np.float64)
    if output == "tokens":
        k = np.arange(vocab_size, dtype=np.float64)
        embed[:, layout.input_lanes[0]] = k
        head[:, last] = 2.0 * k[:, None] * R[0][None, :]
        head[:, layout.const_lane] = 2.0 * k * r[0] - k * k
    else:
        head[:, last] = R
        head[:, layout.const_lane] = r
    tensors["backbone.embeddings.weight"] = embed
    tensors["backbone.norm_f.weight"] = np.full(H, NORM_GAIN)
    tensors["lm_head.weight"] = head
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    config = {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "vocab_size": vocab_size,
        "hidden_size": H,
        "state_size": int(net.blocks[0].arrays["A_log"].shape[1]) if net.blocks else 1,
        "num_hidden_layers": len(net.blocks),
        "layer_norm_epsilon": NORM_EPS,
        "expand": inner // H,
        "conv_kernel": CONV_WIDTH,
        "use_bias": True,
        "use_conv_bias": True,
        "hidden_act": "silu",
        "residual_in_fp32": True,
        "time_step_rank": int(net.blocks[0].arrays["dt_proj.weight"].shape[1]) if net.blocks else 1,
        "tie_word_embeddings": False,
        "use_cache": True,
        "pad_token_id": 0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    }
    return config, tensors, layout


def save_hf_mamba(net: MambaNet, directory: str | Path, *, output: str = "tokens", vocab_size: int | None = None,
                  horizon: int | None = None, program: dict | None = None, overwrite: bool = False
                  ) -> ResidualLayout:
    """Writes ``config.json``, ``model.safetensors`` and ``lsrl_layout.json`` (the lanes, the constructions'
    constants, ``horizon``: the lowering's horizon, the longest prompt the model is right for where the program
    has a modulo counter, and ``program``, a JSON description of what was compiled) into ``directory``."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise CompileError(f"hf export: {directory} exists and is not empty (pass overwrite=True)")
    config, tensors, layout = hf_mamba_checkpoint(net, output=output, vocab_size=vocab_size)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    record = {
        "layout": layout.to_json(),
        "constants": {"layer_norm_epsilon": NORM_EPS, "norm_weight": NORM_GAIN, "clear_gain": CLEAR_GAIN,
                      "relu_gain": net.relu_gain, "gate": BIG, "stream_rms_limit": STREAM_RMS_LIMIT},
        "horizon": horizon,
        "summary": dataclasses.asdict(net.summary()),
        "program": program or {},
    }
    (directory / LAYOUT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return layout


def read_layout(directory: str | Path) -> ResidualLayout:
    path = Path(directory) / LAYOUT_FILE
    try:
        return ResidualLayout.from_json(json.loads(path.read_text())["layout"])
    except FileNotFoundError:
        raise CompileError(f"{path}: missing (not a directory written by save_hf_mamba)") from None
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CompileError(f"{path}: field 'layout' unreadable ({type(e).__name__}: {e})") from None


def residual_inputs(layout: ResidualLayout, x_BxTxD: np.ndarray) -> np.ndarray:
    """``inputs_embeds`` (B, T, hidden) float32 carrying the program inputs ``x`` (B, T, D) and the constant."""
    x = np.asarray(x_BxTxD, np.float64)
    if x.ndim != 3 or x.shape[-1] != len(layout.input_lanes):
        raise CompileError(f"residual_inputs: inputs {x.shape}, expected (B, T, {len(layout.input_lanes)})")
    out = np.zeros(x.shape[:2] + (layout.hidden,), np.float32)
    out[..., layout.const_lane] = 1.0
    out[..., list(layout.input_lanes)] = x
    return out


def check_stream(layout: ResidualLayout, hidden_states: np.ndarray) -> float:
    """The largest root mean square of the stream (``output_hidden_states``, (B, T, hidden) arrays); raises where
    it reaches ``STREAM_RMS_LIMIT``, beyond which the RMSNorms are no longer the identity."""
    rms = max(float(np.sqrt(np.mean(np.square(np.asarray(h, np.float64)), axis=-1)).max()) for h in hidden_states)
    if not rms < STREAM_RMS_LIMIT:
        raise CompileError(f"hf export: the residual stream reaches rms {rms:.3g} >= {STREAM_RMS_LIMIT:.3g}, where "
                           "RMSNorm with eps 2^120 stops being the identity")
    return rms
