"""Config of the BFPO comparison: an optional SFT stage that makes the base model, one preference run per objective
from that base on the same data, and the evaluation every model gets.

Presets (``python -m experiments.bfpo_compare <preset> --help``):

* ``synthetic``: the byte-level tiny Llama trained from scratch by SFT on a mix of helpful-safe answers, refusals
  and helpful-unsafe compliance (so the base is helpful and sometimes unsafe), then BFPO, DPO, IPO and SafeDPO
  on the synthetic safety task; a CPU run of a few minutes.
* ``demo``: the same with fewer steps and prompts (``make demo``).
* ``smollm2``: SmolLM2-135M-Instruct from its GGUF file, a short SFT stage on the synthetic task rendered in its
  ChatML template, then the four objectives, ``down_proj`` only, reference log-probs cached once for all runs.
"""

from __future__ import annotations

import dataclasses
import re
import sys

from bfpo.errors import ConfigError
from bfpo.eval.heldout import EvalConfig
from bfpo.objectives import OBJECTIVES
from bfpo.objectives.table import with_labeling
from bfpo.optim import OptimizerConfig
from bfpo.sft import SFTConfig
from bfpo.train_params import ParamLayout
from experiments.configs.bfpo_train import BFPOTrainConfig, StreamData
from experiments.run import RunConfig
from experiments.run_dir import LaunchConfig
from runtime.mesh import MeshConfig


class CompareConfigError(ConfigError):
    """A field of the comparison's config is inconsistent (the message names the field)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """``train`` is the preference run every objective shares (its ``objective``, ``run.out_dir``, ``run.mesh``,
    ``reference_cache_dir`` and ``export`` are set per run: the directories under ``run.out_dir`` and the mesh of
    ``run``); ``train.eval_pairs`` held-out pairs of the synthetic test split are the discriminative
    evaluation."""

    train: BFPOTrainConfig = BFPOTrainConfig.tiny()
    objectives: tuple[str, ...] = ("bfpo", "dpo", "ipo", "safedpo")
    sft: SFTConfig = SFTConfig()
    eval: EvalConfig = EvalConfig()
    run: LaunchConfig = LaunchConfig(out_dir="runs/bfpo_compare/synthetic", mesh=MeshConfig())
    """``--run.out-dir`` (the base, every run, the evaluations and the report) and ``--run.mesh.*`` (every stage
    runs on it); ``--run.resume`` is ``--reuse``."""
    reuse: bool = False
    """Keep the base and the runs that a previous invocation completed in ``run.out_dir`` (otherwise start
    afresh)."""
    trainer_eval: bool = True
    """Also run the trainer's held-out hook at the end of each run (reference-relative margins per pair type,
    kept in results.json)."""

    @property
    def out_dir(self) -> str:
        return self.run.out_dir

    @property
    def reusing(self) -> bool:
        return self.reuse or self.run.resume

    def __post_init__(self):
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise CompareConfigError(f"CompareConfig.objectives={self.objectives}: must be non-empty and distinct")
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown:
            raise CompareConfigError(f"CompareConfig.objectives: {unknown} not in the registry {sorted(OBJECTIVES)}")
        mismatched = [o for o in self.objectives if OBJECTIVES[o].needs_mismatched]
        if mismatched:
            raise CompareConfigError(f"CompareConfig.objectives: {mismatched} need mismatched pairs, which the "
                                     "trainer's streams do not build")
        if any(s.path for s in self.train.streams) or self.train.eval_path:
            raise CompareConfigError("CompareConfig.train: the comparison is scored by the synthetic task's ground "
                                     "truth, so every stream and the evaluation must be synthetic (empty path)")
        if self.train.layout.uses_lora:
            raise CompareConfigError("CompareConfig.train.layout.lora.rank: the comparison trains weights selected "
                                     "by train.trainable (the paper's selective fine-tuning); LoRA is not supported")
        if self.sft.steps and self.train.model.kind in ("hf", "gguf") and not self.train.model.path:
            raise CompareConfigError("CompareConfig.train.model.path is required for the SFT stage")

    # --- presets -----------------------------------------------------------------------------------------------

    @classmethod
    def synthetic(cls, out_dir: str = "runs/bfpo_compare/synthetic", **overrides) -> "CompareConfig":
        """The tiny byte-level model: SFT from scratch (400 steps), then 100 preference steps per objective on a
        safety stream (all four pair types) plus the safe/safe buffer, every weight trainable, BFPO's tau 0.1 (every other objective at its registry default)."""
        run = RunConfig(out_dir=out_dir, steps=100, log_every=25, eval_every=0, checkpoint_every=0,
                        progress=False, tensorboard=False)
        train = BFPOTrainConfig.tiny(
            out_dir, run=run, objectives=with_labeling(tau=0.1), layout=ParamLayout(trainable=""), eval_pairs=256, export=False,
            streams=(StreamData(name="safety", batch_size=16, synthetic_pairs=1024),
                     StreamData(name="buffer", batch_size=8, synthetic_pairs=256,
                                synthetic_fractions=(1.0, 0.0, 0.0, 0.0))),
            optimizer=OptimizerConfig(learning_rate=5e-4, warmup_ratio=0.1))
        base = dict(train=train, sft=SFTConfig(steps=400), eval=EvalConfig(), run=LaunchConfig(out_dir=out_dir,
                                                                                          mesh=MeshConfig()))
        return cls(**{**base, **overrides})

    @classmethod
    def demo(cls, out_dir: str = "runs/demo/bfpo_compare", **overrides) -> "CompareConfig":
        """``make demo``: the synthetic comparison with BFPO and DPO only, shorter stages and fewer prompts."""
        cfg = cls.synthetic(out_dir)
        train = dataclasses.replace(cfg.train, run=dataclasses.replace(cfg.train.run, steps=60, log_every=20),
                                    eval_pairs=128)
        base = dict(train=train, objectives=("bfpo", "dpo"), sft=dataclasses.replace(cfg.sft, steps=250),
                    eval=EvalConfig(harmful_prompts=64, benign_prompts=64), run=dataclasses.replace(cfg.run,
                                                                                                    out_dir=out_dir))
        return cls(**{**base, **overrides})

    @classmethod
    def smollm2(cls, out_dir: str = "runs/bfpo_compare/smollm2", **overrides) -> "CompareConfig":
        """SmolLM2-135M-Instruct (GGUF): SFT of ``down_proj`` on the synthetic answers in ChatML, then each
        objective, ``down_proj`` only, on short sequences and small batches with cached reference log-probs."""
        run = RunConfig(out_dir=out_dir, steps=60, log_every=10, eval_every=0, checkpoint_every=0,
                        progress=False, tensorboard=False, mesh=MeshConfig(data=1, fsdp=-1))
        train = BFPOTrainConfig.smollm2(
            out_dir, run=run, objectives=with_labeling(tau=0.1), layout=ParamLayout(trainable="down_proj"), eval_pairs=96, export=False,
            eval_batch_size=16, max_length=48, max_prompt_length=37, buckets=(48,), logprob_chunk=48,
            streams=(StreamData(name="safety", batch_size=4, synthetic_pairs=240),),
            optimizer=OptimizerConfig(learning_rate=1e-4, warmup_ratio=0.1))
        sft = SFTConfig(steps=40, examples=320, batch_size=8, trainable="down_proj",
                        optimizer=OptimizerConfig(learning_rate=3e-4, warmup_ratio=0.1))
        base = dict(train=train, sft=sft, eval=EvalConfig(harmful_prompts=48, benign_prompts=48, batch_size=16,
                                                          max_new_tokens=24),
                    run=LaunchConfig(out_dir=out_dir, mesh=MeshConfig(data=1, fsdp=-1)))
        return cls(**{**base, **overrides})


_COMPARE_FLAG = re.compile(r"^--compare\.")


def upgrade_compare_flags(args: list[str]) -> list[str]:
    """Flags of earlier versions under ``--compare.`` without it (``--compare.out-dir`` as ``--run.out-dir``),
    with a deprecation line each."""
    out = []
    for arg in args:
        if _COMPARE_FLAG.match(arg):
            new = "--" + arg[len("--compare."):]
            if new.split("=")[0] in ("--out-dir", "--out_dir"):
                new = "--run." + new[2:]
            print(f"warning: {arg.split('=')[0]} is deprecated: use {new.split('=')[0]}", file=sys.stderr, flush=True)
            arg = new
        out.append(arg)
    return out


PRESETS = {"synthetic": CompareConfig.synthetic, "demo": CompareConfig.demo, "smollm2": CompareConfig.smollm2}
