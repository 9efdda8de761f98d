"""Config of the harmful fine-tuning pipeline (``python -m experiments.hft``): a capable base, the provider's
alignment with a defence, the user's fine-tuning on task data of which a fraction is harmful, and the evaluation
before and after the user stage.

A method is ``<alignment>`` or ``<alignment>+<fine-tuning defence>``: alignment ``sft`` (plain SFT on the
alignment data, the baseline), ``bfpo`` (BFPO on preference pairs of the safety task with a frozen reference, the
codebase's own method as the second baseline), ``booster``, ``vaccine`` or ``repnoise`` (on harmful requests paired
with a refusal and a harmful answer); fine-tuning defence ``lisa`` or ``format_matched``.

Presets (``python -m experiments.hft <preset> --help``):

* ``synthetic``: the byte-level tiny Llama from scratch: SFT to a base that complies with every request, then each
  method over the harmful fractions and seeds, on the synthetic safety task and the synthetic user task (exact
  ground truth); minutes per method on a CPU.
* ``demo``: the same with fewer steps, one fraction and one seed (``make demo``-sized).
* ``smollm2``: SmolLM2-135M-Instruct from the bundled GGUF, ``down_proj`` trained, the same synthetic data in its
  ChatML template, p = 0.1.
* ``llama2_7b``: the defences' papers' setting from local copies (never downloaded): Llama-2-7B with LoRA in every
  stage, BeaverTails-format safety data, an SST-2 / AG News / GSM8K user task in Alpaca's prompt style, p = 0.1,
  harmful score by a local LM classifier; sized for 8 x 80 GB GPUs (``python -m experiments.plan --launcher hft
  --preset llama2_7b --target h100x8`` compiles its alignment step without them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from bfpo.data.format_matched import PromptFormat
from bfpo.defences.booster import BoosterConfig
from bfpo.defences.lisa import LisaConfig
from bfpo.defences.registry import defences_of
from bfpo.defences.repnoise import RepNoiseConfig
from bfpo.defences.vaccine import VaccineConfig
from bfpo.errors import ConfigError
from bfpo.model.execution import ExecutionConfig
from bfpo.lora import LoRAConfig
from bfpo.objectives.safety import BFPOConfig
from bfpo.optim import OptimizerConfig
from bfpo.sft import SFTConfig
from experiments.configs.bfpo_eval import JudgeModel
from experiments.configs.bfpo_train import ModelSource
from experiments.run_dir import LaunchConfig
from runtime.mesh import MeshConfig

ALPACA_FORMAT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n{input}\n\n### Response:\n")
ALIGNMENTS = ("sft", "bfpo") + defences_of("alignment")
FINETUNE_DEFENCES = defences_of("fine-tuning")


class HFTConfigError(ConfigError):
    """A field of the harmful fine-tuning pipeline's config is inconsistent (the message names the field)."""


def parse_method(method: str) -> tuple[str, str | None]:
    """(alignment, fine-tuning defence or None) of a method name such as ``booster`` or ``sft+lisa``."""
    alignment, _, finetune = method.partition("+")
    if alignment not in ALIGNMENTS or (finetune and finetune not in FINETUNE_DEFENCES):
        raise HFTConfigError(f"HFTConfig.methods: {method!r}: expected <alignment> or <alignment>+<defence> with "
                             f"alignment in {ALIGNMENTS} and defence in {FINETUNE_DEFENCES}")
    return alignment, finetune or None


def _positive(owner: str, **values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise HFTConfigError(f"{owner}.{name}={value!r}: expected a positive integer")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlignmentConfig:
    """The provider's stage: SFT on alignment data (harmful requests refused, benign ones answered), with the
    method's update rule; Booster also reads a harmful batch per step."""

    steps: int = 150
    examples: int = 1024
    batch_size: int = 16
    harmful_share: float = 0.5
    """Share of harmful (refused) requests in the alignment data."""
    harmful_examples: int = 512
    """Harmful examples Booster simulates its attack step on, and RepNoise's paired examples."""
    harmful_batch_size: int = 16
    trainable: str = ""
    """Regex over parameter paths of what trains (empty: everything)."""
    lora: LoRAConfig = LoRAConfig()
    """Low-rank adapters instead of the ``trainable`` weights (rank 0: off); merged into the exported model."""
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.1)
    booster: BoosterConfig = BoosterConfig()
    vaccine: VaccineConfig = VaccineConfig()
    repnoise: RepNoiseConfig = RepNoiseConfig()
    bfpo: BFPOConfig = BFPOConfig()
    """BFPO's labeling (B1, alpha, tau); its data are ``examples`` preference pairs of the safety task, a quarter
    of each pair type."""

    def __post_init__(self):
        _positive("AlignmentConfig", steps=self.steps, examples=self.examples, batch_size=self.batch_size,
                  harmful_examples=self.harmful_examples, harmful_batch_size=self.harmful_batch_size)
        if not 0.0 <= self.harmful_share <= 1.0:
            raise HFTConfigError(f"AlignmentConfig.harmful_share={self.harmful_share}: expected a share in [0, 1]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewriterModel:
    """How format-matched safety examples get the user's prompt style: ``none`` renders them in
    ``FinetuneConfig.prompt_format`` (a template); otherwise a local causal LM (the bundled SmolLM2, a GGUF file or a
    Hugging Face directory) rewrites each request greedily, shown ``shots`` of the user's prompts as the style
    (``bfpo.data.format_rewrite``)."""

    kind: Literal["none", "smollm2", "gguf", "hf"] = "none"
    path: str = ""
    shots: int = 3
    max_new_tokens: int = 64
    batch_size: int = 16

    def __post_init__(self):
        _positive("RewriterModel", shots=self.shots, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        if self.kind in ("gguf", "hf") and not self.path:
            raise HFTConfigError(f"RewriterModel.path is required for kind={self.kind!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """The user's stage: SFT on ``examples`` examples in the user's prompt format, a fraction of them harmful."""

    steps: int = 150
    examples: int = 1000
    batch_size: int = 16
    harmful_fractions: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    """The fractions p swept; each method runs once per p and seed."""
    prompt_format: str = "Task: {input}"
    """The user's prompt style: every user-stage prompt (task and harmful) fills its ``{input}``."""
    trainable: str = ""
    lora: LoRAConfig = LoRAConfig()
    """Fresh adapters on the aligned model (rank 0: off), merged into the exported model."""
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.1)
    lisa: LisaConfig = LisaConfig(alignment_steps=10, finetune_steps=90)
    """Lisa's schedule; its alignment phases train on the alignment data."""
    format_matched_ratio: float = 0.1
    """Format-matched refusals added per user example."""
    rewriter: RewriterModel = RewriterModel()
    """Who puts the safety examples in the user's style: the template (``prompt_format``) or a local model."""

    def __post_init__(self):
        _positive("FinetuneConfig", steps=self.steps, examples=self.examples, batch_size=self.batch_size)
        object.__setattr__(self, "harmful_fractions", tuple(float(p) for p in self.harmful_fractions))
        if not self.harmful_fractions or any(not 0.0 <= p <= 1.0 for p in self.harmful_fractions):
            raise HFTConfigError(f"FinetuneConfig.harmful_fractions={self.harmful_fractions}: expected shares in "
                                 "[0, 1]")
        if not (math.isfinite(self.format_matched_ratio) and self.format_matched_ratio >= 0):
            raise HFTConfigError(f"FinetuneConfig.format_matched_ratio={self.format_matched_ratio}: expected >= 0")
        PromptFormat(self.prompt_format)

    @property
    def format(self) -> PromptFormat:
        return PromptFormat(self.prompt_format)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HFTEvalConfig:
    """Held-out harmful requests (harmful score) and user-task questions (fine-tune accuracy), greedy replies as in
    the official evaluations."""

    harmful_prompts: int = 128
    task_prompts: int = 128
    max_new_tokens: int = 24
    batch_size: int = 64
    seed: int = 0
    samples: int = 4

    def __post_init__(self):
        _positive("HFTEvalConfig", harmful_prompts=self.harmful_prompts, task_prompts=self.task_prompts,
                  max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, samples=self.samples)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HFTDataConfig:
    """Where the stages' data and the evaluation's prompts come from: the synthetic tasks (exact ground truth), or
    local files (``bfpo.data.hft_files``): a BeaverTails-format safety file for training and one for the harmful
    score, the user's task as SST-2, AG News or GSM8K records, and for BFPO's alignment a preference file in any
    format ``bfpo.data.load_pairs`` reads (PKU-SafeRLHF's carries both labels)."""

    source: Literal["synthetic", "files"] = "synthetic"
    safety_train: str = ""
    safety_test: str = ""
    preference_train: str = ""
    user_task: Literal["sst2", "agnews", "gsm8k"] = "sst2"
    user_train: str = ""
    user_test: str = ""
    harmful_judge: Literal["lm-classifier", "refusal-phrases"] = "lm-classifier"
    """How replies to the harmful prompts of files are judged: the LM classifier of ``judge_model`` (e.g. Llama
    Guard with ``--data.judge-model.prompt conversation``), or the refusal-phrase detector."""
    judge_model: JudgeModel = JudgeModel()

    def __post_init__(self):
        if self.source == "files":
            missing = [name for name in ("safety_train", "safety_test", "user_train", "user_test")
                       if not getattr(self, name)]
            if missing:
                flags = ", ".join("--data." + m.replace("_", "-") for m in missing)
                raise HFTConfigError(f"HFTDataConfig: source 'files' needs {flags}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HFTConfig:
    model: ModelSource = ModelSource()
    data: HFTDataConfig = HFTDataConfig()
    base: SFTConfig = SFTConfig(steps=400, harmful_compliance=1.0, benign_partial=0.0, benign_refusal=0.0)
    """The stage that makes the capable base from ``model`` (0 steps: the model itself is the base)."""
    alignment: AlignmentConfig = AlignmentConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    eval: HFTEvalConfig = HFTEvalConfig()
    methods: tuple[str, ...] = ("sft", "bfpo", "booster", "vaccine", "repnoise", "sft+lisa", "sft+format_matched")
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the alignment and user stages (data order, sampling of the data); the base is shared."""
    max_length: int = 72
    max_prompt_length: int = 40
    buckets: tuple[int, ...] = (72,)
    logprob_chunk: int = 128
    log_every: int = 50
    checkpoint_every: int = 0
    """Steps between a stage's checkpoints (0: only its last); with ``--reuse`` a killed stage resumes from its
    latest checkpoint (the same stage only: its config.json must match), bit for bit as if never stopped."""
    run: LaunchConfig = LaunchConfig(out_dir="runs/hft/synthetic", mesh=MeshConfig())
    reuse: bool = False
    """Keep the stages a previous invocation finished in ``run.out_dir``."""

    def __post_init__(self):
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise HFTConfigError(f"HFTConfig.methods={self.methods}: must be non-empty and distinct")
        for m in self.methods:
            parse_method(m)
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise HFTConfigError(f"HFTConfig.checkpoint_every={self.checkpoint_every!r}: expected an integer >= 0")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise HFTConfigError(f"HFTConfig.seeds={self.seeds}: expected distinct non-negative seeds")
        if (self.data.source == "files" and not self.data.preference_train
                and any(parse_method(m)[0] == "bfpo" for m in self.methods)):
            raise HFTConfigError("HFTConfig.data.preference_train: BFPO's alignment on files needs a preference file "
                                 "(--data.preference-train), or leave bfpo out of --methods")
        if self.data.source == "files" and self.base.steps:
            raise HFTConfigError(f"HFTConfig.base.steps={self.base.steps}: the base stage trains on the synthetic "
                                 "task; with files the model itself is the base (--base.steps 0)")
        if self.model.kind in ("hf", "gguf") and not self.model.path:
            raise HFTConfigError(f"HFTConfig.model.path is required for kind={self.model.kind!r}")

    @property
    def out_dir(self) -> str:
        return self.run.out_dir

    @property
    def reusing(self) -> bool:
        return self.reuse or self.run.resume

    # --- presets -----------------------------------------------------------------------------------------------

    @classmethod
    def synthetic(cls, out_dir: str = "runs/hft/synthetic", **overrides) -> "HFTConfig":
        base = dict(run=LaunchConfig(out_dir=out_dir, mesh=MeshConfig()))
        return cls(**{**base, **overrides})

    @classmethod
    def demo(cls, out_dir: str = "runs/demo/hft", **overrides) -> "HFTConfig":
        cfg = cls.synthetic(out_dir)
        base = dict(alignment=dataclasses.replace(cfg.alignment, steps=100),
                    finetune=dataclasses.replace(cfg.finetune, steps=100, harmful_fractions=(0.1,)),
                    eval=dataclasses.replace(cfg.eval, harmful_prompts=64, task_prompts=64),
                    methods=("sft", "booster"), seeds=(0,))
        return dataclasses.replace(cfg, **{**base, **overrides})

    @classmethod
    def smollm2(cls, out_dir: str = "runs/hft/smollm2", **overrides) -> "HFTConfig":
        opt = OptimizerConfig(learning_rate=3e-4, warmup_ratio=0.1)
        base = dict(model=ModelSource(kind="smollm2"),
                    base=SFTConfig(steps=40, examples=320, batch_size=8, trainable="down_proj",
                                   harmful_compliance=1.0, benign_partial=0.0, benign_refusal=0.0, optimizer=opt),
                    alignment=AlignmentConfig(steps=40, examples=320, batch_size=8, harmful_examples=160,
                                              harmful_batch_size=8, trainable="down_proj", optimizer=opt),
                    finetune=FinetuneConfig(steps=40, examples=320, batch_size=8, harmful_fractions=(0.1,),
                                            trainable="down_proj", optimizer=opt,
                                            lisa=LisaConfig(alignment_steps=4, finetune_steps=36)),
                    eval=HFTEvalConfig(harmful_prompts=48, task_prompts=48, batch_size=16),
                    seeds=(0,), max_length=48, max_prompt_length=37, buckets=(48,), logprob_chunk=48, log_every=10,
                    run=LaunchConfig(out_dir=out_dir, mesh=MeshConfig(data=1, fsdp=-1)))
        return cls(**{**base, **overrides})

    @classmethod
    def llama2_7b(cls, out_dir: str = "runs/hft/llama2_7b", *, model_dir: str = "Llama-2-7b-hf",
                  data_dir: str = "data", judge_dir: str = "Llama-Guard-3-8B", **overrides) -> "HFTConfig":
        """The papers' setting (the official git-disl code: Booster, Vaccine, Lisa): a local Llama-2-7B directory
        as the base; LoRA rank 8, alpha 4 on all seven projections in every stage (merged into each stage's
        export); alignment on 5,000 safe BeaverTails records (Booster's harmful batches from 5,000 unsafe ones),
        lr 5e-4, 20 epochs at batch 16; the user stage on 1,000 examples, 10% harmful, lr 1e-5, 20 epochs; Lisa
        with K_a 100, K_f 900, rho 1; greedy replies of up to 128 tokens to the first 1,000 unique unsafe prompts
        of ``30k_test`` and 1,000 user-task test records. The files are read from ``data_dir``
        (``beavertails/30k_{train,test}.jsonl``, ``sst2/{train,validation}.jsonl``, ``pku_saferlhf/train.jsonl``
        for BFPO); the harmful-reply judge is a local Llama Guard directory in its own chat template."""
        lora = LoRAConfig(targets=r"(q|k|v|o|gate|up|down)_proj", rank=8, alpha=4.0)
        batch = 16
        data = HFTDataConfig(source="files", safety_train=f"{data_dir}/beavertails/30k_train.jsonl",
                             safety_test=f"{data_dir}/beavertails/30k_test.jsonl",
                             preference_train=f"{data_dir}/pku_saferlhf/train.jsonl", user_task="sst2",
                             user_train=f"{data_dir}/sst2/train.jsonl", user_test=f"{data_dir}/sst2/validation.jsonl",
                             judge_model=JudgeModel(kind="hf", path=judge_dir, prompt="conversation",
                                                    unsafe_words=("unsafe",), safe_words=("safe",)))
        base = dict(
            model=ModelSource(kind="hf", path=model_dir, architecture="llama2_7b", execution=ExecutionConfig(
                dtype="bfloat16", param_dtype="bfloat16", remat="full", attention_query_chunk=512)),
            data=data, base=SFTConfig(steps=0),
            alignment=AlignmentConfig(steps=20 * 5000 // batch, examples=5000, batch_size=batch,
                                      harmful_examples=5000, harmful_batch_size=batch, lora=lora,
                                      optimizer=OptimizerConfig(learning_rate=5e-4, schedule="constant",
                                                                warmup_ratio=0.0)),
            finetune=FinetuneConfig(steps=20 * 1000 // batch, examples=1000, batch_size=batch,
                                    harmful_fractions=(0.1,), lora=lora, lisa=LisaConfig(),
                                    prompt_format=ALPACA_FORMAT,
                                    optimizer=OptimizerConfig(learning_rate=1e-5, schedule="constant",
                                                              warmup_ratio=0.0)),
            eval=HFTEvalConfig(harmful_prompts=1000, task_prompts=872, max_new_tokens=128, batch_size=64),
            seeds=(0,), max_length=512, max_prompt_length=384, buckets=(128, 256, 512), logprob_chunk=256,
            log_every=50, checkpoint_every=250, run=LaunchConfig(out_dir=out_dir, mesh=MeshConfig(data=1, fsdp=-1)))
        return cls(**{**base, **overrides})


PRESETS = {"synthetic": HFTConfig.synthetic, "demo": HFTConfig.demo, "smollm2": HFTConfig.smollm2,
           "llama2_7b": HFTConfig.llama2_7b}
