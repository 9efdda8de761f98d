"""The traced program of the LM's response log-probs and of their gradient, as SHA-256 hashes of the jaxprs: equal
hashes at two commits mean the same program, so the same FLOPs and memory in the planner and the same compiled
step. It checks that a model change meant to cost nothing when unused (an optional input or output of the
forward pass, such as the attention offsets or the layer taps of the harmful fine-tuning defences) leaves the
plain forward and backward passes as they were.

Run at each commit: ``python -m experiments.bench.lm_program_hash`` (``--preset smollm2_135m`` for another shape).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import tyro
from flax import nnx

from bfpo.logprobs import sequence_logprobs
from bfpo.model.config import LlamaConfig


@dataclasses.dataclass(frozen=True)
class Config:
    preset: str = "tiny"
    """A ``LlamaConfig`` preset (its shapes; no weights are read or made)."""
    batch: int = 2
    tokens: int = 16
    out: str = "runs/bench/lm_program_hash.json"


def main(cfg: Config) -> dict[str, str]:
    from bfpo.model.llama import LlamaForCausalLM

    model_cfg = getattr(LlamaConfig, cfg.preset)()
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LlamaForCausalLM(model_cfg, rngs=nnx.Rngs(0))))
    tokens = jnp.zeros((cfg.batch, cfg.tokens), jnp.int32)
    mask = jnp.ones((cfg.batch, cfg.tokens), bool)

    def logprob_sum(params):
        sums, _ = sequence_logprobs(nnx.merge(graphdef, params), tokens, mask, mask, cfg.tokens)
        return jnp.sum(sums)

    out = {}
    for name, fn in (("forward", logprob_sum), ("gradient", jax.grad(logprob_sum))):
        text = str(jax.make_jaxpr(fn)(state))
        out[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    print(f"[lm_program_hash] {cfg.preset} B={cfg.batch} T={cfg.tokens}: forward {out['forward']}, "
          f"gradient {out['gradient']}", flush=True)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps({"config": dataclasses.asdict(cfg), **out}, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main(tyro.cli(Config))
