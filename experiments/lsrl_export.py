"""Compiles the dictionary-lookup program (tok2tok, ``recurrent.programs.tok2tok``) and exports it twice: as this
project's chain checkpoint (``chain/``: safetensors + JSON, ``recurrent.export.chain_checkpoint``) and as a Hugging
Face ``MambaForCausalLM`` directory (``hf_mamba/``, ``recurrent.export.hf_mamba``). Then it checks both against the
compiler: the chain read back from disk equals the compiled one array for array, and transformers' own forward
pass, in float32, on a dictionary of ``--pairs`` random pairs, is asked every key (``--queries``, default all):
the answer is the head's argmax at the last ``key_length`` tokens. A second check feeds one prompt token by token
through transformers' recurrent (cached) path.

Writes ``report.json`` and ``report.md`` into ``--run.out-dir``: answers right, the largest difference between the
exported model's output lane and the chain's float64 output (at the answer tokens and over all tokens), the
stream's largest rms against the bound under which the RMSNorms are the identity, model sizes and times.

Run: ``python -m experiments.lsrl_export [--key-length 3] [--pairs 100] [--vocab 11] [--run.out-dir DIR]``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from experiments.run import cli
from recurrent import CompileError, compile_program
from recurrent.chain import evaluate
from recurrent.export.chain_checkpoint import load_chain, save_chain
from recurrent.export.hf_mamba import check_stream, save_hf_mamba
from recurrent.programs import MODES
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_answers, tok2tok_program
from recurrent.programs.tok2tok import tok2tok_prompts
from recurrent.targets.mamba import chain_to_mamba


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig:
    key_length: int = 3
    pairs: int = 100
    vocab: int = 11
    """Token ids 0 .. vocab - 1; keys and values are drawn from 1 .. vocab - 1."""
    mode: str = "multiplicative_optimized"
    """The conditional construction (``recurrent.programs.MODES``)."""
    seed: int = 0
    queries: int | None = None
    """How many of the dictionary's keys to ask (default: every one)."""
    batch: int = 20
    """Prompts per forward pass."""
    overwrite: bool = False
    out_dir: Annotated[str, tyro.conf.arg(name="run.out-dir")] = "runs/lsrl_export"

    def __post_init__(self):
        if self.mode not in MODES:
            raise CompileError(f"--mode {self.mode!r}: must be one of {MODES}")
        if self.key_length < 1 or self.pairs < 1 or self.batch < 1:
            raise CompileError("--key-length, --pairs and --batch must be at least 1")
        if self.vocab < 3:
            raise CompileError(f"--vocab {self.vocab}: must be at least 3 (token 0 and two distinct tokens)")
        if self.queries is not None and not 1 <= self.queries <= self.pairs:
            raise CompileError(f"--queries {self.queries}: must be in 1 .. --pairs ({self.pairs})")


def _same_chain(a, b) -> bool:
    pairs = [(x.arrays(), y.arrays()) for x, y in zip(a.layers, b.layers)]
    return (len(a.layers) == len(b.layers) and a.in_dim == b.in_dim
            and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in pairs)
            and np.array_equal(a.readout_weight, b.readout_weight) and np.array_equal(a.readout_bias, b.readout_bias))


def run_hf(model, ids: np.ndarray, output_lanes: list[int]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(logits (B, T, V), the last block's output lanes (B, T, w), every hidden state) from transformers."""
    import torch

    with torch.no_grad():
        out = model(torch.as_tensor(ids, dtype=torch.long), output_hidden_states=True, use_cache=False)
    states = [h.numpy() for h in out.hidden_states]
    return out.logits.numpy(), states[-1][..., output_lanes], states


def run_hf_streaming(model, ids: np.ndarray, tail: int) -> np.ndarray:
    """Logits of the last ``tail`` tokens when the prompt's head goes in at once and the rest one token per call
    through the returned cache (transformers' recurrent path: conv and SSM state updates)."""
    import torch

    ids = torch.as_tensor(ids, dtype=torch.long)
    with torch.no_grad():
        out = model(ids[:, :-tail], use_cache=True)
        logits = []
        for t in range(ids.shape[1] - tail, ids.shape[1]):
            out = model(ids[:, t:t + 1], cache_params=out.cache_params, use_cache=True)
            logits.append(out.logits[:, -1].numpy())
    return np.stack(logits, axis=1)


def main(cfg: ExportConfig) -> dict:
    try:
        import torch
        from transformers import MambaForCausalLM
    except ImportError as e:
        raise CompileError(f"lsrl_export checks the export with transformers and torch: {e}") from None
    out = Path(cfg.out_dir)
    spec = Tok2TokSpec(key_length=cfg.key_length, mode=cfg.mode)
    L = cfg.key_length
    prompt_len = L + 2 * L * cfg.pairs
    program = {"name": "tok2tok", "key_length": L, "mode": cfg.mode, "scale": spec.scale,
               "large_constant": spec.large_constant, "pairs": cfg.pairs, "vocab": cfg.vocab,
               "prompt_length": prompt_len,
               "prompt": "query key (L tokens), then L key tokens and L value tokens per pair; the last L outputs "
                         "are the value stored under the query key"}
    t0 = time.perf_counter()
    chain = compile_program(tok2tok_program(spec))
    net = chain_to_mamba(chain, horizon=prompt_len)
    compile_s = time.perf_counter() - t0
    save_chain(chain, out / "chain", program=program, overwrite=cfg.overwrite)
    reloaded, _ = load_chain(out / "chain")
    layout = save_hf_mamba(net, out / "hf_mamba", vocab_size=cfg.vocab, horizon=prompt_len,
                           program=program, overwrite=cfg.overwrite)

    rng = np.random.default_rng(cfg.seed)
    keys, values = random_dictionary(rng, L, cfg.pairs, cfg.vocab - 1)
    asked = keys if cfg.queries is None else keys[rng.choice(cfg.pairs, cfg.queries, replace=False)]
    toks = tok2tok_prompts(asked, keys, values)
    answers = tok2tok_answers(asked, keys, values)
    ids = toks[..., 0].astype(np.int64)

    t0 = time.perf_counter()
    model = MambaForCausalLM.from_pretrained(out / "hf_mamba", dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    right, err_answer, err_all, rms = 0, 0.0, 0.0, 0.0
    lanes = list(layout.block_lanes[-1])
    t0 = time.perf_counter()
    for s in range(0, len(ids), cfg.batch):
        logits, h_last, states = run_hf(model, ids[s:s + cfg.batch], lanes)
        y = h_last.astype(np.float64) @ net.readout_weight.T + net.readout_bias
        ref = evaluate(chain, toks[s:s + cfg.batch])
        right += int((logits[:, -L:].argmax(-1) == answers[s:s + cfg.batch]).all(axis=1).sum())
        err_answer = max(err_answer, float(np.abs(y[:, -L:] - ref[:, -L:]).max()))
        err_all = max(err_all, float(np.abs(y - ref).max()))
        rms = max(rms, check_stream(layout, states))
    forward_s = time.perf_counter() - t0
    stream_logits = run_hf_streaming(model, ids[:1], L)
    full_logits = run_hf(model, ids[:1], lanes)[0][:, -L:]
    weights = out / "hf_mamba" / "model.safetensors"
    report = {
        "program": program,
        "queries": len(ids),
        "answers_right": right,
        "max_abs_output_error_at_answers": err_answer,
        "max_abs_output_error_all_tokens": err_all,
        "streaming_argmax_equal": bool((stream_logits.argmax(-1) == full_logits.argmax(-1)).all()),
        "streaming_max_abs_logit_difference": float(np.abs(stream_logits - full_logits).max()),
        "stream_rms_max": rms,
        "chain_round_trip_equal": _same_chain(chain, reloaded),
        "chain_summary": chain.summary().format(),
        "hf": {"hidden_size": layout.hidden, "intermediate_size": layout.intermediate,
               "layers": len(net.blocks), "parameters": int(sum(p.numel() for p in model.parameters())),
               "safetensors_bytes": weights.stat().st_size},
        "seconds": {"compile": compile_s, "load": load_s, "forward": forward_s},
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    print((out / "report.md").read_text())
    return report


def report_markdown(r: dict) -> str:
    p, hf = r["program"], r["hf"]
    return "\n".join([
        f"# tok2tok dictionary ({p['pairs']} pairs, key length {p['key_length']}, vocab {p['vocab']}) through "
        "transformers' MambaForCausalLM",
        "",
        f"- answers right: **{r['answers_right']} / {r['queries']}** (argmax of the head at the last "
        f"{p['key_length']} tokens, transformers {r['transformers']}, torch {r['torch']}, float32)",
        f"- output lane vs the chain in float64: max |error| {r['max_abs_output_error_at_answers']:.3g} at the "
        f"answer tokens, {r['max_abs_output_error_all_tokens']:.3g} over all {p['prompt_length']} tokens",
        f"- token-by-token (cached) path: argmax equal {r['streaming_argmax_equal']}, max logit difference "
        f"{r['streaming_max_abs_logit_difference']:.3g}",
        f"- residual stream rms at most {r['stream_rms_max']:.3g} (RMSNorm is the identity below 2^48 = 2.8e14)",
        f"- chain checkpoint read back equal: {r['chain_round_trip_equal']}",
        f"- model: {hf['layers']} blocks, hidden {hf['hidden_size']}, intermediate {hf['intermediate_size']}, "
        f"{hf['parameters']:,} parameters, {hf['safetensors_bytes'] / 1e6:.1f} MB",
        f"- seconds: compile {r['seconds']['compile']:.2f}, load {r['seconds']['load']:.2f}, forward "
        f"{r['seconds']['forward']:.1f}",
        "",
        "Compiled chain:",
        "",
        "```",
        r["chain_summary"],
        "```",
        "",
    ])


if __name__ == "__main__":
    cli(ExportConfig, main, expected_errors=(CompileError,))
