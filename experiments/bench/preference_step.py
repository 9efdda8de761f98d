"""Preference-training throughput on this machine: our jitted BFPO/DPO step against TRL's ``DPOTrainer``.

What is compared
----------------
Both sides train the same tiny Llama (``LlamaConfig.tiny()``: 2 layers, width 64, the byte tokenizer's 264-token
vocabulary; our random weights written with ``save_hf`` and opened by transformers) on the same pairs: ``batch``
pairs per step, each a ``prompt_len``-token prompt with two ``response_len``-token responses (random letters, one
byte token each, the last token EOS), so every row is prompt_len + response_len tokens on both sides.

* ours: ``bfpo.train_step.make_preference_step`` under ``jax.jit`` on one device: one forward over
  [chosen; rejected] through ``sequence_logprobs``, reference log-probs from a frozen copy of the model (TRL's
  default without PEFT), the objective, AdamW with global-norm clipping at 1.0, every parameter trained.
  Variants: DPO (beta 0.1), BFPO (tau 0.01), and BFPO with the reference log-probs taken from the batch
  (``bfpo.reference_cache``: the reference forward is paid once per dataset, not per step).
* peer: TRL's ``DPOTrainer`` (loss ``sigmoid``, beta 0.1, its AdamW, clipping at 1.0, frozen reference copy),
  run by ``experiments/bench/_trl_dpo_peer.py`` in a separate process under ``--peer-python`` (an environment
  with ``trl`` installed; TRL is a benchmark peer, not a dependency). Its step time is taken by a
  ``TrainerCallback`` around each optimizer step (collation, both forwards, backward, update).

Rates are pairs per second from the median step time after warm-up (ours: after compilation and one call).
Memory is each process's peak resident set (VmHWM; framework and Python included), and for ours also the
compiled step's own buffers (``memory_analysis``: arguments + outputs - aliases + temporaries). Both run on the
same cores, one after the other, in one invocation.

Set-up of the peer environment (once; it reuses this project's torch and transformers through a .pth file):

    python3 -m venv /tmp/trlvenv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/trlvenv/lib/python3.11/site-packages/project.pth
    /tmp/trlvenv/bin/pip install trl==1.16.0

Run: ``XLA_FLAGS= .venv/bin/python -m experiments.bench.preference_step --peer-python /tmp/trlvenv/bin/python``.
Without ``--peer-python`` (the default, e.g. under ``make bench``) only our side runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tyro

from bfpo.labeling import LabelingConfig
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import init_params, model_from_params
from bfpo.model.load_hf import save_hf
from bfpo.objectives import BFPOConfig, DPOConfig
from bfpo.optim import OptimizerConfig, make_optimizer
from bfpo.reference_cache import reference_logprob_fn
from bfpo.tokenize import Tokenizer, pack_prompt_response
from bfpo.train_params import ParamLayout, build_params, trainable_predicate
from bfpo.train_step import PreferenceConfig, make_preference_step
from experiments.bench._host_memory import peak_rss_mib
from runtime.mesh import MeshConfig, make_mesh
from runtime.train_state import train_state_from_params

PEER_SCRIPT = Path(__file__).with_name("_trl_dpo_peer.py")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    batch: int = 8
    prompt_len: int = 64
    response_len: int = 64
    steps: int = 30
    """Timed steps per variant (after compilation and one warm-up call)."""
    peer_python: str | None = None
    """Python of an environment with trl installed (see the module docstring); None skips the peer."""
    peer_steps: int = 30
    peer_warmup: int = 2
    scan_layers: bool = False
    """Our layers as one scanned layer (compile time independent of depth) or unrolled, like PyTorch's Python
    loop: on XLA:CPU the scan's per-iteration bookkeeping costs about as much as the tiny model's layers."""
    causal_blocks: int = 4
    """Query blocks per attention pass, each skipping its future keys (``ExecutionConfig.causal_blocks``; exact)."""
    out: str = "runs/bench/preference_step.json"


def make_pairs(cfg: Config, n: int, seed: int = 0) -> list[dict[str, str]]:
    """Random lowercase texts whose byte-level token counts are exactly the configured lengths (the response's
    last token is EOS, which TRL appends and we append)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    text = lambda k: "".join(rng.choice(letters, k))  # noqa: E731
    return [{"prompt": text(cfg.prompt_len), "chosen": text(cfg.response_len - 1),
             "rejected": text(cfg.response_len - 1)} for _ in range(n)]


def stream_batch(pairs: list[dict[str, str]], tok: Tokenizer, with_reference: bool) -> dict[str, Any]:
    """One stream batch in the ``bfpo.data`` contract, safety labels all safe (the peer has none)."""
    prompts = [tok.encode(p["prompt"]) for p in pairs]
    sides = {side: pack_prompt_response(prompts, [tok.encode(p[side]) + [tok.eos_id] for p in pairs], tok.pad_id)
             for side in ("chosen", "rejected")}
    b = len(pairs)
    batch = {**sides, "chosen_safe": np.ones(b, np.float32), "rejected_safe": np.ones(b, np.float32),
             "pair_mask": np.ones(b, bool), "example_id": np.arange(b, dtype=np.int32)}
    if with_reference:
        batch["reference_chosen"] = np.zeros(b, np.float32)
        batch["reference_rejected"] = np.zeros(b, np.float32)
    return batch


def time_ours(model_cfg: LlamaConfig, params: Any, pairs: list[dict[str, str]], tok: Tokenizer, *, objective: str,
              objective_config: Any, reference: str, steps: int) -> dict[str, Any]:
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1))
    layout = ParamLayout(reference=reference, trainable=None)
    pcfg = PreferenceConfig(objective=objective, objective_config=objective_config, layout=layout)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-5, schedule="constant", clip_norm=1.0), steps + 2)
    batch = {"safety": stream_batch(pairs, tok, with_reference=reference == "batch")}
    if reference == "batch":
        rows = batch["safety"]
        both = np.asarray(reference_logprob_fn(model_cfg)(params, rows), np.float32)
        rows["reference_chosen"], rows["reference_rejected"] = both[:len(pairs)], both[len(pairs):]
    state, shardings = train_state_from_params(build_params(layout, jax.tree.map(np.copy, params)), tx, mesh,
                                               seed=0, trainable=trainable_predicate(layout))
    step = jax.jit(make_preference_step(model_cfg, pcfg, tx), donate_argnums=0)
    device_batch = jax.device_put(batch)
    compiled = step.lower(state, device_batch).compile()
    mem = compiled.memory_analysis()
    step_bytes = None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                           - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    state, metrics = step(state, device_batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = step(state, jax.device_put(batch))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"objective": objective, "reference": reference, "step_seconds": median,
            "pairs_per_second": len(pairs) / median, "compiled_step_mib": None if step_bytes is None
            else step_bytes / 2**20, "loss": float(metrics["loss"].total / metrics["loss"].count)}


def run_peer(cfg: Config, work: Path) -> dict[str, Any]:
    out = work / "trl.json"
    cmd = [cfg.peer_python, str(PEER_SCRIPT), "--work", str(work), "--batch", str(cfg.batch),
           "--steps", str(cfg.peer_steps + cfg.peer_warmup), "--warmup", str(cfg.peer_warmup), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"TRL peer failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main(cfg: Config) -> dict[str, Any]:
    tok = Tokenizer.byte_level()
    model_cfg = LlamaConfig.tiny().with_execution(scan_layers=cfg.scan_layers, causal_blocks=cfg.causal_blocks)
    params = jax.device_get(jax.jit(lambda: init_params(model_cfg, 0))())
    pairs = make_pairs(cfg, cfg.batch)
    variants = [("dpo", DPOConfig(beta=0.1), "frozen"),
                ("bfpo", BFPOConfig(labeling=LabelingConfig(tau=0.01)), "frozen"),
                ("bfpo", BFPOConfig(labeling=LabelingConfig(tau=0.01)), "batch")]
    ours = [time_ours(model_cfg, params, pairs, tok, objective=o, objective_config=c, reference=r, steps=cfg.steps)
            for o, c, r in variants]
    ours_rss = peak_rss_mib()
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "jax": jax.__version__,
        "config": dataclasses.asdict(cfg), "ours": ours, "ours_peak_rss_mib": ours_rss,
    }
    lines = [f"ours {r['objective']:>4} ref={r['reference']:<6} {r['pairs_per_second']:8.1f} pairs/s "
             f"(step {1e3 * r['step_seconds']:.1f} ms, compiled step {r['compiled_step_mib']:.1f} MiB)" for r in ours]
    lines.append(f"ours process peak RSS {ours_rss:.0f} MiB")
    if cfg.peer_python:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            save_hf(model_from_params(model_cfg, jax.device_put(params)), work / "model")
            tok.hf.save_pretrained(str(work / "tokenizer"))
            (work / "pairs.json").write_text(json.dumps(make_pairs(cfg, cfg.batch * (cfg.peer_steps + cfg.peer_warmup))))
            peer = run_peer(cfg, work)
        result["peer"] = peer
        result["ratio_dpo_vs_trl"] = ours[0]["pairs_per_second"] / peer["pairs_per_second"]
        result["ratio_bfpo_cached_vs_trl"] = ours[2]["pairs_per_second"] / peer["pairs_per_second"]
        lines.append(f"peer {peer['peer']}: {peer['pairs_per_second']:.1f} pairs/s (step "
                     f"{1e3 * peer['step_seconds']:.1f} ms), peak RSS {peer['peak_rss_mib']:.0f} MiB")
        lines.append(f"ratio ours DPO / TRL DPO = {result['ratio_dpo_vs_trl']:.2f}x; ours BFPO with cached "
                     f"reference / TRL DPO = {result['ratio_bfpo_cached_vs_trl']:.2f}x")
    print("\n".join(lines), flush=True)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Config))
