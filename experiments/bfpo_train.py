"""Preference fine-tuning of a causal LM with BFPO (or another registered objective) through the shared loop.

Streams of preference pairs (a safety stream, optionally the paper's helpfulness buffer) are tokenized into
bucket-padded batches; reference log-probs are precomputed once and cached on disk (or taken from a frozen copy,
or from the LoRA base weights); ``bfpo.train_step`` runs one forward per stream and AdamW on the trainable subset
(``down_proj`` by default). Held-out preference metrics (loss, safety accuracy) are reported every
``--run.eval-every`` steps; checkpoints and ``--run.resume`` come from ``experiments.run`` (the data position is
in the checkpoint). At the end the trained model (LoRA merged) is written as a Hugging Face safetensors directory
``<out_dir>/hf`` with the tokenizer files.

Run: ``python -m experiments.bfpo_train tiny --help`` (presets: tiny, smollm2, zephyr-7b, mistral-7b).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import tyro

from bfpo.data import MixedStreams, PreferenceStream, TokenizeConfig, evaluation_batches, load_pairs, tokenize_pairs
from bfpo.data.tokenized import batch_spec
from bfpo.data import synthetic
from bfpo.errors import BFPOError
from bfpo.labeling import LabelingConfig
from bfpo.lora import LoRAConfig
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import init_params, model_from_params
from bfpo.model import source as model_source
from bfpo.model.load_hf import save_hf
from bfpo.objectives import BFPOConfig, get_objective
from bfpo.optim import make_optimizer
from bfpo.reference_cache import (WithReference, compute_reference_logprobs, load_or_compute, params_fingerprint)
from bfpo.tokenize import Tokenizer
from bfpo.train_params import ParamLayout, build_params, policy_params, trainable_predicate
from bfpo.train_step import PreferenceConfig, StreamSpec, make_eval_metrics, make_preference_step
from experiments.configs.bfpo_train import BFPOTrainConfig, StreamData, TrainConfigError
from experiments.planning import LauncherPlan, Program, parse_preset, train_step_program
from experiments.run import Task, checkpointer_for, cli, restore_state, train
from runtime import sharding as sharding_lib
from runtime.batches import batch_axes, batch_shardings, put_batch
from runtime.mesh import MeshConfig, make_mesh
from runtime.metrics import merge, to_host
from runtime.train_state import train_state_from_params, train_state_spec

PRESETS = {"tiny": BFPOTrainConfig.tiny, "smollm2": BFPOTrainConfig.smollm2, "zephyr-7b": BFPOTrainConfig.zephyr_7b,
           "mistral-7b": BFPOTrainConfig.mistral_7b}


def objective_config(cfg: BFPOTrainConfig) -> Any:
    """The objective's default config with the launcher's hyperparameters (tau, b1, alpha, beta, averaging) set
    on the fields it has."""
    default = get_objective(cfg.objective).config
    if isinstance(default, BFPOConfig):
        return BFPOConfig(labeling=LabelingConfig(tau=cfg.tau, b1=cfg.b1, alpha=cfg.alpha),
                          average_log_probs=default.average_log_probs or cfg.average_log_probs)
    values = {"tau": cfg.tau, "beta": cfg.beta}
    if cfg.average_log_probs:
        values["average_log_probs"] = True
    names = {f.name for f in dataclasses.fields(default)}
    return dataclasses.replace(default, **{k: v for k, v in values.items() if k in names})


def param_layout(cfg: BFPOTrainConfig) -> ParamLayout:
    lora = None if cfg.lora_rank == 0 else LoRAConfig(targets=cfg.lora_targets, rank=cfg.lora_rank,
                                                      alpha=cfg.lora_alpha)
    return ParamLayout(reference=cfg.reference, trainable=cfg.trainable or None, lora=lora)


def preference_config(cfg: BFPOTrainConfig, streams: tuple[StreamData, ...] | None = None) -> PreferenceConfig:
    streams = cfg.streams if streams is None else streams
    return PreferenceConfig(objective=cfg.objective, objective_config=objective_config(cfg),
                            streams=tuple(StreamSpec(name=s.name, weight=s.weight) for s in streams),
                            layout=param_layout(cfg), logprob_chunk=cfg.logprob_chunk)


def model_config(cfg: BFPOTrainConfig) -> LlamaConfig:
    """The model's config without reading its weights (``bfpo.model.source.model_config``)."""
    src = cfg.model
    if not (src.architecture or model_source.at_hand(src.kind, src.path)):
        what = "a GGUF file" if src.kind == "gguf" else "a local Hugging Face directory (no config.json there)"
        raise TrainConfigError(f"ModelSource.path={src.path!r} is not {what}: point --model.path at one, or name "
                               "its shape with --model.architecture (mistral_7b, llama3_8b, llama3_2_1b, ...)")
    return model_source.model_config(src.kind, src.path, src.architecture, src.execution)


@dataclasses.dataclass(frozen=True)
class StepParts:
    """The pieces of the train step that need no data or weights (shared by ``make_task`` and the planner)."""

    tx: Any
    layout: ParamLayout
    pref: PreferenceConfig
    predicate: Any
    fresh: Any  # () -> freshly initialised model parameters (traceable)
    state_spec: Any  # mesh -> (abstract train state, shardings)
    step_fn: Any


def step_parts(cfg: BFPOTrainConfig, model_cfg: LlamaConfig) -> StepParts:
    layout = param_layout(cfg)
    tx = make_optimizer(cfg.optimizer, cfg.run.steps)
    seed = cfg.run.seed
    fresh = lambda: init_params(model_cfg, seed)  # noqa: E731
    predicate = trainable_predicate(layout)
    pref = preference_config(cfg)

    def state_spec(mesh):
        return train_state_spec(lambda: build_params(layout, fresh(), seed), tx, mesh, seed=seed, trainable=predicate,
                                precision=cfg.run.precision)

    return StepParts(tx=tx, layout=layout, pref=pref, predicate=predicate, fresh=fresh, state_spec=state_spec,
                     step_fn=make_preference_step(model_cfg, pref, tx, grad_accum=cfg.run.grad_accum))


def stream_pairs(s: StreamData, seed: int, split: str = "train", on_bad_record: str = "error") -> list:
    if not s.path:
        config = synthetic.SyntheticConfig(pair_type_fractions=s.synthetic_fractions)
        return synthetic.make_pairs(s.synthetic_pairs, seed, split=split, config=config)
    pairs, report = load_pairs(s.path, split=s.split, on_bad_record=on_bad_record)
    if report.dropped and jax.process_index() == 0:
        print(f"[bfpo_train] {s.name}: {report.summary()}", flush=True)
    return pairs[:s.max_pairs] if s.max_pairs else pairs


def eval_pairs(cfg: BFPOTrainConfig) -> list:
    if not cfg.eval_path:
        return synthetic.make_pairs(cfg.eval_pairs, cfg.data_seed, split="test")
    pairs, report = load_pairs(cfg.eval_path, split=cfg.eval_split, on_bad_record=cfg.on_bad_record)
    if report.dropped and jax.process_index() == 0:
        print(f"[bfpo_train] evaluation data: {report.summary()}", flush=True)
    return pairs[:cfg.eval_pairs]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything ``make_task`` builds besides the Task: kept for the export and for tests."""

    model_cfg: LlamaConfig
    tokenizer: Tokenizer
    layout: ParamLayout
    tokenized: dict  # stream name -> TokenizedPairs
    eval_tokenized: Any
    eval_config: PreferenceConfig


def make_task(cfg: BFPOTrainConfig) -> tuple[Task, Prepared]:
    mesh = make_mesh(cfg.run.mesh)
    src = cfg.model
    model_cfg, loaded, tokenizer = model_source.load_or_init(src.kind, src.path, mesh, src.execution, cfg.run.seed)
    parts = step_parts(cfg, model_cfg)
    layout, tx, predicate, seed = parts.layout, parts.tx, parts.predicate, cfg.run.seed

    tok_cfg = TokenizeConfig(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, buckets=cfg.buckets)
    tokenized = {s.name: tokenize_pairs(stream_pairs(s, cfg.data_seed + i, on_bad_record=cfg.on_bad_record),
                                        tokenizer, tok_cfg)
                 for i, s in enumerate(cfg.streams)}
    eval_tok = tokenize_pairs(eval_pairs(cfg), tokenizer, tok_cfg)
    mismatched = get_objective(cfg.objective).needs_mismatched  # KTO's reference-point rows
    data = MixedStreams({s.name: PreferenceStream(tokenized[s.name], s.batch_size, cfg.data_seed + i,
                                                  bucket_window=cfg.bucket_window, mismatched=mismatched)
                         for i, s in enumerate(cfg.streams)})
    eval_caches = None
    if layout.reference == "batch":
        cache_dir = Path(cfg.reference_cache_dir or Path(cfg.run.out_dir) / "reference_cache")
        model_fp = params_fingerprint(model_cfg, loaded)

        def cache_for(name, tok):
            def compute():
                return compute_reference_logprobs(model_cfg, loaded, evaluation_batches(tok, cfg.eval_batch_size),
                                                  len(tok), mesh=mesh, chunk=cfg.logprob_chunk,
                                                  desc=f"reference log-probs ({name})")

            return load_or_compute(cache_dir, model_fingerprint=model_fp, data_fingerprint=tok.fingerprint(),
                                   compute=compute, name=name)

        data = WithReference(data, {name: cache_for(name, tok) for name, tok in tokenized.items()})
        eval_caches = {cfg.streams[0].name: cache_for("eval", eval_tok)}

    eval_pref = preference_config(cfg, cfg.streams[:1])

    def init_state(mesh):
        # Built outside jit so that the policy is the loaded arrays themselves (no copy of a 7B model); they are
        # donated into the train state.
        with sharding_lib.activate(mesh):
            built = build_params(layout, loaded, seed)
        return train_state_from_params(built, tx, mesh, seed=seed, trainable=predicate,
                                       precision=cfg.run.precision)[0]

    def frozen_params(mesh):
        # The loaded arrays were donated into the first train state, so the frozen weights come from the source
        # again (the same file, or the same seed).
        src = cfg.model
        _, again, _ = model_source.load_or_init(src.kind, src.path, mesh, src.execution, seed)
        with sharding_lib.activate(mesh):
            return build_params(layout, again, seed)

    evaluate = make_evaluation(model_cfg, eval_pref, eval_tok, cfg.eval_batch_size, mesh, eval_caches)
    main = cfg.streams[0].name
    task = Task(
        name=f"bfpo_train[{cfg.objective}]",
        state_spec=parts.state_spec,
        init_state=init_state,
        step_fn=parts.step_fn,
        data=data,
        evals=(evaluate,),
        config=dataclasses.asdict(cfg),
        main_metrics=("loss", f"{main}/rewards/margin", f"{main}/safety/accuracy"),
        frozen_params=frozen_params,
        peak_update=cfg.optimizer.learning_rate,
    )
    prepared = Prepared(model_cfg=model_cfg, tokenizer=tokenizer, layout=layout, tokenized=tokenized,
                        eval_tokenized=eval_tok, eval_config=eval_pref)
    return task, prepared


def make_evaluation(model_cfg, pref: PreferenceConfig, tokenized, batch_size: int, mesh, caches):
    """Held-out metrics of the main stream's objective over every evaluation pair (padding rows masked out)."""
    metrics_fn = jax.jit(make_eval_metrics(model_cfg, pref))
    name = pref.streams[0].name
    mismatched = get_objective(pref.objective).needs_mismatched
    batches = [{name: b} for b in evaluation_batches(tokenized, batch_size, mismatched)]
    if caches is not None:
        batches = list(WithReference(iter(batches), caches))

    def evaluate(state) -> dict[str, float]:
        total = {}
        for host in batches:
            placed = put_batch(host, batch_shardings(host, batch_axes(host), mesh))
            total = merge(total, metrics_fn(state.params, placed))
        return to_host(total)

    return evaluate


def final_params(cfg: BFPOTrainConfig, task: Task) -> Any:
    """The trained parameter dict, restored from the run's last checkpoint onto the mesh."""
    mesh = make_mesh(cfg.run.mesh)
    with checkpointer_for(task, str(Path(cfg.run.out_dir).absolute() / "checkpoints")) as ckpt:
        state, _ = restore_state(ckpt, task, mesh)
    return state.params


def export(cfg: BFPOTrainConfig, task: Task, prepared: Prepared) -> Path:
    """<out_dir>/hf: the policy (LoRA merged) in the Hugging Face layout, plus the tokenizer files."""
    params = final_params(cfg, task)
    mesh = make_mesh(cfg.run.mesh)
    with sharding_lib.activate(mesh):
        merged = jax.jit(lambda p: policy_params(prepared.layout, p))(params)
    out = save_hf(model_from_params(prepared.model_cfg, merged), Path(cfg.run.out_dir) / "hf",
                  dtype=None if cfg.export_dtype == "model" else cfg.export_dtype, tokenizer=prepared.tokenizer)
    if jax.process_index() == 0:
        print(f"[bfpo_train] exported the trained model to {out}", flush=True)
    return out


def main(cfg: BFPOTrainConfig):
    return train_and_export(cfg, *make_task(cfg))


def train_and_export(cfg: BFPOTrainConfig, task: Task, prepared: Prepared):
    summary = train(cfg.run, task)
    if cfg.export and summary.stopped == "completed":
        path = export(cfg, task, prepared)
        if jax.process_index() == 0:
            (Path(cfg.run.out_dir) / "export.json").write_text(json.dumps({"hf_dir": str(path)}) + "\n")
    return summary


def config_type():
    """One tyro subcommand per preset; every field can be overridden after it."""
    return tyro.extras.subcommand_type_from_defaults({name: make() for name, make in PRESETS.items()})


# --- planning (experiments.plan) ---------------------------------------------------------------------------------


def plan_program(cfg: BFPOTrainConfig, mesh) -> Program:
    """The step ``train`` runs, on the abstract train state and a batch of every stream at the longest bucket."""
    model_cfg = model_config(cfg)
    parts = step_parts(cfg, model_cfg)
    length = max(cfg.buckets)
    mismatched = get_objective(cfg.objective).needs_mismatched
    batch = {s.name: batch_spec(s.batch_size, length, mismatched=mismatched, reference=cfg.reference == "batch")
             for s in cfg.streams}
    pairs = sum(s.batch_size for s in cfg.streams)
    rows_per_pair = 3 if mismatched else 2
    return train_step_program(f"bfpo_train[{cfg.objective}]", parts.state_spec, parts.step_fn, batch,
                              cfg.run.grad_accum, mesh,
                              work={"pairs": pairs, "tokens": pairs * rows_per_pair * length})


def with_execution(cfg: BFPOTrainConfig, **changes) -> BFPOTrainConfig:
    model = dataclasses.replace(cfg.model, execution=dataclasses.replace(cfg.model.execution, **changes))
    return dataclasses.replace(cfg, model=model)


def plan_alternatives(cfg: BFPOTrainConfig, sizes) -> list[tuple[str, BFPOTrainConfig]]:
    """Memory-saving variants: all devices on fsdp, full remat, twice the micro-batches, attention query chunks."""
    out = []
    n = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
    if sizes["fsdp"] != n:
        out.append((f"--run.mesh.data 1 --run.mesh.fsdp {n} --run.mesh.tensor 1",
                    dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, mesh=MeshConfig(data=1, fsdp=n)))))
    if cfg.model.execution.remat != "full":
        out.append(("--model.remat full", with_execution(cfg, remat="full")))
    accum = cfg.run.grad_accum * 2
    if all(s.batch_size % accum == 0 and (s.batch_size // accum) % (sizes["data"] * sizes["fsdp"]) == 0
           for s in cfg.streams):
        out.append((f"--run.grad-accum {accum}",
                    dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, grad_accum=accum))))
    chunk = cfg.model.execution.attention_query_chunk
    for q in (512, 256):
        if (chunk is None or chunk > q) and max(cfg.buckets) > q:
            out.append((f"--model.attention-query-chunk {q}", with_execution(cfg, attention_query_chunk=q)))
            break
    return out


PLAN = LauncherPlan(
    parse=lambda preset, args: parse_preset(config_type(), preset, args, "experiments.bfpo_train"),
    program=plan_program,
    presets=tuple(PRESETS),
    without_remat=lambda cfg: with_execution(cfg, remat="none"),
    alternatives=plan_alternatives,
)


if __name__ == "__main__":
    cli(config_type(), main, expected_errors=(BFPOError, TrainConfigError))
