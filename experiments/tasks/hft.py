"""The stages of the harmful fine-tuning pipeline as runs of the one training loop, and the evaluation of a stage's
model: what ``experiments.hft`` chains.

Every stage but BFPO's alignment is supervised fine-tuning (``bfpo.sft.sft_loss``) from the previous stage's exported
model, and they differ in their data and their update:

* base: ``bfpo.sft`` targets that comply with every request (a capable, unaligned model);
* alignment ``sft``: the gradient of the loss on the alignment data; ``bfpo``: BFPO's loss
  (``bfpo.train_step.make_preference_loss``) on preference pairs (the synthetic safety task's, or the preference
  file's), the reference the stage's starting model (a frozen copy, or the weights under LoRA); ``booster``:
  Booster's direction (``bfpo.defences.booster.booster_rule``) with a harmful stream beside the alignment stream;
  ``vaccine``: the gradient at the perturbed forward (``bfpo.defences.vaccine.vaccine_rule``); ``repnoise``: RepNoise's loss
  (``bfpo.defences.repnoise.repnoise_lm_loss``) on harmful requests paired with a refusal and a harmful answer;
* user stage: the user's data (a fraction harmful); with ``lisa`` the steps alternate between the alignment data
  and the user's (``bfpo.data.ScheduledStreams``) and the proximal gradient is chained before the optimizer
  (``bfpo.defences.lisa.proximal_gradient``); with ``format_matched`` safety examples in the user's prompt style
  (by the user's template, or rewritten by a local model: ``bfpo.data.format_rewrite``) are mixed into the user's
  data (``bfpo.data.format_matched``).

Every stage can train LoRA adapters instead of weights (merged into its export). Each stage writes its run
directory (metrics, checkpoints, summary) and its model as ``hf/``; when asked, a finished stage is reused and a
killed one resumes from its latest checkpoint. The data and the judges come from ``experiments.tasks.hft_data``.
The evaluation replies greedily (as the official evaluations do) to held-out harmful requests in the user's format
and as plain requests, and to held-out user-task prompts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import optax

from bfpo.data import MixedStreams, PreferencePair, PreferenceStream, ScheduledStreams, TokenizeConfig, tokenize_pairs
from bfpo.data.format_matched import PromptFormat, mix
from bfpo.data.format_rewrite import rewrite_with_model
from bfpo.defences import lisa
from bfpo.defences.booster import booster_rule
from bfpo.defences.repnoise import repnoise_lm_loss
from bfpo.defences.vaccine import vaccine_rule
from bfpo.eval.generative import generate_responses, judge_responses
from bfpo.generate import SamplingConfig
from bfpo.lora import LoRAConfig
from bfpo.model import source as model_source
from bfpo.model.llama import model_from_params
from bfpo.model.load_hf import save_hf
from bfpo.optim import OptimizerConfig, make_optimizer
from bfpo.sft import SFT_STREAM, sft_examples, sft_loss, sft_offsets_shape
from bfpo.tokenize import Tokenizer
from bfpo.train_params import ParamLayout, policy_params
from bfpo.train_step import PreferenceConfig, StreamSpec, make_preference_loss
from experiments.configs.hft import HFTConfig, HFTConfigError, parse_method
from experiments.run import RunConfig, Task, train
from experiments.run_dir import standard_json
from experiments.tasks import bfpo as bfpo_task
from experiments.tasks.hft_data import stage_data
from runtime.checkpoint import Checkpointer
from runtime.mesh import make_mesh
from runtime.sharding import shards_of
from runtime.step import loss_gradient, make_train_step

HARMFUL_STREAM = "harmful"
RUN_PRECISION = RunConfig().precision
PREFERENCE_STREAM = "safety"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One supervised stage: where it writes, what it starts from, how long and what trains, and its data
    (``streams``: name -> (examples, batch size); ``schedule`` picks one stream per step instead of all)."""

    name: str
    out_dir: Path
    source: tuple[str, str]
    steps: int
    seed: int
    trainable: str
    optimizer: OptimizerConfig
    streams: dict[str, tuple[list[PreferencePair], int]]
    rule: str = "sft"
    """sft, bfpo, booster, vaccine or repnoise."""
    schedule: Callable[[int], str] | None = None
    lisa: lisa.LisaConfig | None = None
    lora: LoRAConfig = LoRAConfig()


def completed(run_dir: Path, steps: int) -> bool:
    summary = run_dir / "summary.json"
    if not summary.exists() or not (run_dir / "hf" / "config.json").exists():
        return False
    s = json.loads(summary.read_text())
    return s.get("stopped") == "completed" and s.get("steps_done") == steps


def stage_config(stage: Stage) -> dict:
    """What a stage's ``config.json`` records: everything that decides its training, so that a stage is resumed
    only by the same stage."""
    return json.loads(standard_json({
        "stage": stage.name, "rule": stage.rule, "source": list(stage.source), "steps": stage.steps,
        "seed": stage.seed, "trainable": stage.trainable, "optimizer": dataclasses.asdict(stage.optimizer),
        "lora": dataclasses.asdict(stage.lora), "lisa": stage.lisa and dataclasses.asdict(stage.lisa),
        "streams": {k: len(v[0]) for k, v in stage.streams.items()},
        "examples": {k: hashlib.sha256(json.dumps([[e.source, e.prompt, e.chosen, e.rejected] for e in v[0]])
                                       .encode()).hexdigest()[:16] for k, v in stage.streams.items()}}))


def resumable(run_dir: Path, config: dict) -> bool:
    """A killed stage: the same stage's config and at least one checkpoint, no finished summary."""
    path = run_dir / "config.json"
    if not path.exists() or json.loads(path.read_text()) != config:
        return False
    with Checkpointer(str(run_dir.absolute() / "checkpoints")) as ckpt:
        return ckpt.latest_step() is not None


def tokenize_config(cfg: HFTConfig) -> TokenizeConfig:
    return TokenizeConfig(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, buckets=cfg.buckets)


def run_stage(cfg: HFTConfig, stage: Stage) -> tuple[Any, Any, Tokenizer]:
    """Trains ``stage`` (or reuses it when finished and ``cfg.reusing``) and returns (model config, parameters,
    tokenizer) of its exported model."""
    mesh = make_mesh(cfg.run.mesh)
    src = cfg.model
    hf_dir = stage.out_dir / "hf"
    if cfg.reusing and completed(stage.out_dir, stage.steps):
        model_cfg, params, tokenizer = model_source.load_model("hf", str(hf_dir), mesh, src.execution)
        return model_cfg, params, tokenizer
    config = stage_config(stage)
    resume = cfg.reusing and resumable(stage.out_dir, config)
    if stage.out_dir.exists() and not resume:
        shutil.rmtree(stage.out_dir)
    kind, path = stage.source
    model_cfg, loaded, tokenizer = model_source.load_or_init(kind, path, mesh, src.execution, stage.seed)
    layout, tx, step_fn = stage_step(cfg, stage, model_cfg)
    tok_cfg = tokenize_config(cfg)
    streams = {name: PreferenceStream(tokenize_pairs(examples, tokenizer, tok_cfg), batch, stage.seed)
               for name, (examples, batch) in stage.streams.items()}
    batches = (MixedStreams(streams) if stage.schedule is None
               else ScheduledStreams(streams, stage.schedule, key=SFT_STREAM))
    run_cfg = RunConfig(out_dir=str(stage.out_dir), steps=stage.steps, seed=stage.seed, mesh=cfg.run.mesh,
                        log_every=min(cfg.log_every, stage.steps), eval_every=0,
                        checkpoint_every=cfg.checkpoint_every, resume=resume, progress=False, tensorboard=False)
    state_spec = lambda m: bfpo_task.layout_state_spec(layout, model_cfg, tx, stage.seed,  # noqa: E731
                                                       RUN_PRECISION, m)
    init_state = lambda m: bfpo_task.layout_init_state(layout, loaded, tx, stage.seed,  # noqa: E731
                                                       RUN_PRECISION, m)
    task = Task(name=f"hft[{stage.name}]", state_spec=state_spec, init_state=init_state,
                step_fn=step_fn, data=batches,
                config=config,
                peak_update=stage.optimizer.learning_rate)
    train(run_cfg, task)
    abstract, shardings = state_spec(mesh)
    with Checkpointer(str(stage.out_dir.absolute() / "checkpoints")) as ckpt:
        state, _ = ckpt.restore(abstract, shardings)
    params = policy_params(layout, state.params)
    save_hf(model_from_params(model_cfg, params), hf_dir, tokenizer=tokenizer)
    return model_cfg, params, tokenizer


def stage_step(cfg: HFTConfig, stage: Stage, model_cfg) -> tuple[ParamLayout, Any, Callable]:
    """(layout, optimizer, train step) of a stage: its loss and update rule, needing no data or weights (the
    pipeline and the planner share it)."""
    layout = stage_layout(stage)
    tx = make_optimizer(stage.optimizer, stage.steps)
    if stage.lisa is not None:
        tx = optax.chain(lisa.proximal_gradient(stage.lisa, stage.steps), tx)
    loss = sft_loss(model_cfg, layout, cfg.logprob_chunk)
    gradient = loss_gradient
    if stage.rule == "booster":
        gradient = booster_rule(sft_loss(model_cfg, layout, cfg.logprob_chunk, stream=HARMFUL_STREAM),
                                cfg.alignment.booster)
    elif stage.rule == "vaccine":
        gradient = vaccine_rule(loss, sft_offsets_shape(model_cfg), cfg.alignment.vaccine)
    elif stage.rule == "repnoise":
        loss = repnoise_lm_loss(model_cfg, layout, cfg.logprob_chunk, cfg.alignment.repnoise)
    elif stage.rule == "bfpo":
        loss = make_preference_loss(model_cfg, PreferenceConfig(
            objective="bfpo", objective_config=cfg.alignment.bfpo, streams=(StreamSpec(name=PREFERENCE_STREAM),),
            layout=layout, logprob_chunk=cfg.logprob_chunk))
    return layout, tx, make_train_step(loss, tx, gradient=gradient)


def stage_layout(stage: Stage) -> ParamLayout:
    """What trains: the ``trainable`` weights or LoRA adapters; BFPO's reference is the stage's starting model (a
    frozen copy, or the weights under the adapters)."""
    reference = "none"
    if stage.rule == "bfpo":
        reference = "base" if stage.lora.enabled else "frozen"
    return ParamLayout(reference=reference, trainable=stage.trainable or None, lora=stage.lora)


# --- the stages of the pipeline ---------------------------------------------------------------------------------

def base_stage(cfg: HFTConfig, out: Path) -> Stage:
    examples = sft_examples(cfg.base.examples, 0, cfg.base)
    return Stage(name="base", out_dir=out / "base", source=(cfg.model.kind, cfg.model.path), steps=cfg.base.steps,
                 seed=0, trainable=cfg.base.trainable, optimizer=cfg.base.optimizer,
                 streams={SFT_STREAM: (examples, cfg.base.batch_size)})


def alignment_data(cfg: HFTConfig, seed: int) -> list[PreferencePair]:
    return stage_data(cfg).alignment(cfg.alignment.examples, seed)


def alignment_stage(cfg: HFTConfig, alignment: str, seed: int, base: tuple[str, str], out: Path, *,
                    with_data: bool = True) -> Stage:
    """The alignment stage of ``alignment``; without data its streams hold no examples (the planner's view)."""
    a, source = cfg.alignment, stage_data(cfg)
    read = (lambda what: what()) if with_data else (lambda what: [])  # noqa: E731
    streams = {SFT_STREAM: (read(lambda: alignment_data(cfg, seed)), a.batch_size)}
    if alignment == "repnoise":
        streams = {SFT_STREAM: (read(lambda: source.refusal_pairs(a.harmful_examples, seed)), a.batch_size)}
    if alignment == "bfpo":
        streams = {PREFERENCE_STREAM: (read(lambda: source.preference_pairs(a.examples, seed)), a.batch_size)}
    if alignment == "booster":
        streams[HARMFUL_STREAM] = (read(lambda: source.harmful(a.harmful_examples, seed)), a.harmful_batch_size)
    return Stage(name=f"align:{alignment}:seed{seed}", out_dir=out / "align" / alignment / f"seed{seed}",
                 source=base, steps=a.steps, seed=seed, trainable=a.trainable, optimizer=a.optimizer,
                 streams=streams, rule=alignment, lora=a.lora)


def user_data(cfg: HFTConfig, p: float, seed: int, defence: str | None) -> list[PreferencePair]:
    f, source = cfg.finetune, stage_data(cfg)
    examples = source.user_stage(f.examples, p, seed, f.format)
    if defence == "format_matched":
        k = int(round(f.format_matched_ratio * len(examples)))
        examples = mix(examples, matched_safety(cfg, source, k, seed, examples), f.format_matched_ratio, seed)
    return examples


def matched_safety(cfg: HFTConfig, source, k: int, seed: int, user: list[PreferencePair]) -> list[PreferencePair]:
    """``k`` safety examples in the user's style: rendered in the user's template, or rewritten by the configured
    local model with the first ``shots`` user prompts as the style."""
    f, r = cfg.finetune, cfg.finetune.rewriter
    if r.kind == "none":
        return source.matched_safety(k, seed, f.format)
    mesh = make_mesh(cfg.run.mesh)
    model_cfg, params, tokenizer = model_source.load_model(r.kind, r.path, mesh)
    style = [ex.prompt[0]["content"] for ex in user[:r.shots]]
    return rewrite_with_model(model_from_params(model_cfg, params), tokenizer,
                              source.matched_safety(k, seed, PromptFormat()), style,
                              SamplingConfig(max_new_tokens=r.max_new_tokens, temperature=0.0),
                              batch_size=r.batch_size, mesh=mesh)


def finetune_stage(cfg: HFTConfig, method: str, p: float, seed: int, aligned: tuple[str, str], out: Path, *,
                   with_data: bool = True) -> Stage:
    """The user stage of ``method`` at harmful fraction ``p``; without data its streams hold no examples."""
    f = cfg.finetune
    _, defence = parse_method(method)
    streams = {"user": (user_data(cfg, p, seed, defence) if with_data else [], f.batch_size)}
    schedule, lisa_cfg = None, None
    if defence == "lisa":
        streams["alignment"] = (alignment_data(cfg, seed) if with_data else [], f.batch_size)
        lisa_cfg = f.lisa
        schedule = lisa_schedule(lisa_cfg)
    else:
        streams = {SFT_STREAM: streams["user"]}
    return Stage(name=f"finetune:{method}:p{p:g}:seed{seed}",
                 out_dir=out / "finetune" / method / f"p{p:g}" / f"seed{seed}", source=aligned, steps=f.steps,
                 seed=seed, trainable=f.trainable, optimizer=f.optimizer, streams=streams, schedule=schedule,
                 lisa=lisa_cfg, lora=f.lora)


def lisa_schedule(cfg: lisa.LisaConfig) -> Callable[[int], str]:
    """Step -> the stream of its Lisa phase ("alignment" or "user")."""
    return lambda step: "alignment" if lisa.phase_name(step, cfg) == "alignment" else "user"


# --- evaluation -------------------------------------------------------------------------------------------------

def evaluate(cfg: HFTConfig, model, tokenizer: Tokenizer, path: Path, reuse: bool) -> dict:
    """{prompt set: judged result} for one model, written to ``path`` (read back when ``reuse`` and present)."""
    if reuse and path.exists():
        return json.loads(path.read_text())
    e = cfg.eval
    sampling = SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=0.0)
    mesh = make_mesh(cfg.run.mesh)
    if e.batch_size % shards_of("batch", mesh):
        raise HFTConfigError(f"HFTConfig.eval.batch_size={e.batch_size}: the generation batches are split "
                             f"{shards_of('batch', mesh)} ways over the mesh's data axes; use a multiple of that")
    out = {}
    for i, (name, (prompt_set, judge)) in enumerate(stage_data(cfg).prompt_sets().items()):
        replies = generate_responses(model, tokenizer, prompt_set, sampling, batch_size=e.batch_size,
                                     rng=jax.random.key(e.seed + i), mesh=mesh)
        out[name] = judge_responses(prompt_set, replies, judge, sampling)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(standard_json(out, indent=1) + "\n")
    return out


def scores(result: dict) -> dict[str, float]:
    """harmful score (share of harmful requests answered harmfully: 1 - harmless rate), plain-request harmful score
    and fine-tune accuracy."""
    plain = result.get("harmful_plain", result["harmful_user_format"])  # one set when the user's format is plain
    return {"harmful_score": 1.0 - result["harmful_user_format"]["value"],
            "harmful_score_plain": 1.0 - plain["value"],
            "finetune_accuracy": result["task"]["value"]}

