"""The BFPO preference-training task: what ``experiments.bfpo_train`` runs and ``experiments.bfpo_compare`` runs once
per objective. From a ``BFPOTrainConfig`` it loads the model (``bfpo.model.source``), tokenizes the streams,
precomputes or loads the cached reference log-probs, builds the step (``bfpo.train_step``) and the held-out
evaluation, and gives ``experiments.run.train`` its ``Task``; after training it exports the policy (LoRA merged)
as a Hugging Face directory.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax

from bfpo.data import MixedStreams, PreferenceStream, TokenizeConfig, evaluation_batches, load_pairs, tokenize_pairs
from bfpo.data import synthetic
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import init_params, model_from_params
from bfpo.model import source as model_source
from bfpo.model.load_hf import save_hf
from bfpo.objectives import get_objective
from bfpo.optim import make_optimizer
from bfpo.reference_cache import (WithReference, compute_reference_logprobs, load_or_compute, params_fingerprint)
from bfpo.tokenize import Tokenizer
from bfpo.train_params import ParamLayout, build_params, policy_params, trainable_predicate
from bfpo.train_step import PreferenceConfig, StreamSpec, make_eval_metrics, make_preference_step
from experiments.configs.bfpo_train import BFPOTrainConfig, StreamData, TrainConfigError
from experiments.run import Task, checkpointer_for, restore_state, train
from runtime import sharding as sharding_lib
from runtime.batches import batch_axes, batch_shardings, put_batch
from runtime.mesh import make_mesh
from runtime.precision import Precision
from runtime.metrics import merge, to_host
from runtime.train_state import train_state_from_params, train_state_spec


def objective_config(cfg: BFPOTrainConfig) -> Any:
    """The config the selected objective runs with: its entry of ``cfg.objectives``."""
    return cfg.objectives.of(cfg.objective)


def preference_config(cfg: BFPOTrainConfig, streams: tuple[StreamData, ...] | None = None) -> PreferenceConfig:
    streams = cfg.streams if streams is None else streams
    return PreferenceConfig(objective=cfg.objective, objective_config=objective_config(cfg),
                            streams=tuple(StreamSpec(name=s.name, weight=s.weight) for s in streams),
                            layout=cfg.layout, logprob_chunk=cfg.logprob_chunk)


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
    state_spec: Any  # mesh -> (abstract train state, shardings)
    step_fn: Any


def layout_state_spec(layout: ParamLayout, model_cfg: LlamaConfig, tx, seed: int, precision: Precision,
                      mesh: jax.sharding.Mesh):
    """(abstract train state, shardings) of the parameters ``layout`` builds around a fresh model: no weights are
    read, so the planner and a restore share it."""
    return train_state_spec(lambda: build_params(layout, init_params(model_cfg, seed), seed), tx, mesh, seed=seed,
                            trainable=trainable_predicate(layout), precision=precision)


def layout_init_state(layout: ParamLayout, loaded: Any, tx, seed: int, precision: Precision,
                      mesh: jax.sharding.Mesh):
    """The first train state around loaded weights. The parameters are built outside jit, so the policy is the
    loaded arrays themselves (no copy of a 7B model); they are donated into the train state."""
    with sharding_lib.activate(mesh):
        built = build_params(layout, loaded, seed)
    return train_state_from_params(built, tx, mesh, seed=seed, trainable=trainable_predicate(layout),
                                   precision=precision)[0]


def step_parts(cfg: BFPOTrainConfig, model_cfg: LlamaConfig) -> StepParts:
    layout = cfg.layout
    tx = make_optimizer(cfg.optimizer, cfg.run.steps)
    pref = preference_config(cfg)
    return StepParts(tx=tx, layout=layout, pref=pref,
                     state_spec=functools.partial(layout_state_spec, layout, model_cfg, tx, cfg.run.seed,
                                                  cfg.run.precision),
                     step_fn=make_preference_step(model_cfg, pref, tx, grad_accum=cfg.run.grad_accum))


def stream_pairs(s: StreamData, seed: int, split: str = "train", on_bad_record: str = "error") -> list:
    if not s.path:
        config = synthetic.SyntheticConfig(pair_type_fractions=s.synthetic_fractions)
        return synthetic.make_pairs(s.synthetic_pairs, seed, split=split, config=config)
    pairs, report = load_pairs(s.path, split=s.split, on_bad_record=on_bad_record)
    if report.dropped and jax.process_index() == 0:
        print(f"[bfpo_train] {s.name}: {report.summary()}", flush=True)
    return pairs[:s.max_pairs] if s.max_pairs else pairs


def announce_streams(cfg: BFPOTrainConfig) -> list[str]:
    """One start-up line per synthetic stream (printed by process 0; returned for tests), so that generated pairs
    never join a run on user data unseen."""
    files = [s.name for s in cfg.streams if s.path]
    lines = []
    for s in cfg.streams:
        if s.path:
            continue
        shares = "/".join(f"{x:g}" for x in s.synthetic_fractions)
        line = (f"[bfpo_train] stream {s.name!r} is synthetic: {s.synthetic_pairs} generated pairs of the synthetic "
                f"safety task (pair-type shares {shares}), batch {s.batch_size}, weight {s.weight:g}")
        if files:
            line += (f"; it trains beside the data of {', '.join(map(repr, files))}: leave it out of --streams to "
                     "train on your data alone")
        lines.append(line)
    if jax.process_index() == 0:
        for line in lines:
            print(line, flush=True)
    return lines


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
    layout, tx, seed = parts.layout, parts.tx, cfg.run.seed

    announce_streams(cfg)
    tok_cfg = TokenizeConfig(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, buckets=cfg.buckets)
    tokenized = {s.name: tokenize_pairs(stream_pairs(s, cfg.data_seed + i, on_bad_record=cfg.on_bad_record),
                                        tokenizer, tok_cfg)
                 for i, s in enumerate(cfg.streams)}
    eval_tok = tokenize_pairs(eval_pairs(cfg), tokenizer, tok_cfg)
    for name, tok in {**tokenized, "evaluation data": eval_tok}.items():
        if tok.report.truncated and jax.process_index() == 0:
            print(f"[bfpo_train] {name}: {tok.report.summary()} to --max-prompt-length {cfg.max_prompt_length} / "
                  f"--max-length {cfg.max_length}", flush=True)
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

    evaluate = make_evaluation(model_cfg, eval_pref, eval_tok, cfg.eval_batch_size, mesh, eval_caches)
    main = cfg.streams[0].name
    task = Task(
        name=f"bfpo_train[{cfg.objective}]",
        state_spec=parts.state_spec,
        init_state=functools.partial(layout_init_state, layout, loaded, tx, seed, cfg.run.precision),
        step_fn=parts.step_fn,
        data=data,
        evals=(evaluate,),
        config=dataclasses.asdict(cfg),
        main_metrics=("loss", f"{main}/rewards/margin", f"{main}/safety/accuracy"),
        frozen_params=functools.partial(source_params, cfg),
        peak_update=cfg.optimizer.learning_rate,
    )
    prepared = Prepared(model_cfg=model_cfg, tokenizer=tokenizer, layout=layout, tokenized=tokenized,
                        eval_tokenized=eval_tok, eval_config=eval_pref)
    return task, prepared


def source_params(cfg: BFPOTrainConfig, mesh: jax.sharding.Mesh) -> Any:
    """The parameters ``cfg.layout`` builds around the model read from its source again (the same file, or the same
    seed): where a checkpoint's frozen weights come from, since the loaded arrays were donated into the first
    train state."""
    src = cfg.model
    _, again, _ = model_source.load_or_init(src.kind, src.path, mesh, src.execution, cfg.run.seed)
    with sharding_lib.activate(mesh):
        return build_params(cfg.layout, again, cfg.run.seed)


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


def train_and_export(cfg: BFPOTrainConfig, task: Task, prepared: Prepared):
    summary = train(cfg.run, task)
    if cfg.export and summary.stopped == "completed":
        path = export(cfg, task, prepared)
        if jax.process_index() == 0:
            (Path(cfg.run.out_dir) / "export.json").write_text(json.dumps({"hf_dir": str(path)}) + "\n")
    return summary


def run_config(run_dir: str | Path) -> BFPOTrainConfig:
    """The config a preference run ran with: its ``config.json``, else its latest checkpoint's record of it."""
    from experiments.config_file import CONFIG_NAME, from_jsonable, read_config_file

    run_dir = Path(run_dir)
    if (run_dir / CONFIG_NAME).is_file():
        return read_config_file(run_dir / CONFIG_NAME, BFPOTrainConfig)
    directory = run_dir.absolute() / "checkpoints"
    if not directory.is_dir():
        raise TrainConfigError(f"{run_dir}: not a preference run directory (no {CONFIG_NAME}, no checkpoints/, no "
                               "hf/ export)")
    from runtime.checkpoint import Checkpointer

    with Checkpointer(str(directory)) as ckpt:
        if ckpt.latest_step() is None:
            raise TrainConfigError(f"{directory}: holds no checkpoint")
        recorded = ckpt.read_meta().get("config")
    return from_jsonable(BFPOTrainConfig, recorded, where=f"{directory} (checkpoint metadata) config")


def trained_policy(run_dir: str | Path, mesh: jax.sharding.Mesh) -> tuple[LlamaConfig, Any, Tokenizer, str]:
    """(model config, policy parameters on ``mesh``, tokenizer, what was loaded) of a preference run directory: its
    exported Hugging Face directory ``hf/`` when there is one, else its latest checkpoint (LoRA merged, frozen
    weights rebuilt from the run's model source and checked against their hashes)."""
    run_dir = Path(run_dir)
    hf_dir = run_dir / "hf"
    if (hf_dir / "config.json").is_file():
        model_cfg, params, tokenizer = model_source.load_model("hf", str(hf_dir), mesh)
        return model_cfg, params, tokenizer, f"{hf_dir} (the run's export)"
    cfg = run_config(run_dir)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(run_dir)))
    model_cfg = model_config(cfg)
    parts = step_parts(cfg, model_cfg)
    task = Task(name=f"bfpo_train[{cfg.objective}]", state_spec=parts.state_spec, init_state=None,
                step_fn=parts.step_fn, data=None, frozen_params=functools.partial(source_params, cfg))
    with checkpointer_for(task, str(run_dir.absolute() / "checkpoints")) as ckpt:
        step = ckpt.latest_step()
        with sharding_lib.activate(mesh):
            state, _ = restore_state(ckpt, task, mesh)
            params = jax.jit(lambda p: policy_params(parts.layout, p))(state.params)
    tokenizer = model_source.tokenizer_of(cfg.model.kind, cfg.model.path)
    return model_cfg, params, tokenizer, f"{run_dir}/checkpoints/{step} ({cfg.objective} from {cfg.model.kind} " \
        f"{cfg.model.path})".replace(" )", ")")


def run(cfg: BFPOTrainConfig):
    """Trains (resuming where a checkpoint exists) and exports."""
    return train_and_export(cfg, *make_task(cfg))
