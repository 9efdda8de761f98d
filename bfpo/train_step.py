"""The preference train step: log-probs of every stream in one forward, an objective from the registry, AdamW.

A training batch is ``{stream: stream batch}`` (the contract of ``bfpo.data``: "chosen" / "rejected" sides of
[B, L] tokens in the layout of ``bfpo.tokenize.pack_prompt_response``, safety labels, ``pair_mask``,
``example_id`` and, with a reference cache, "reference_chosen" / "reference_rejected"). For each stream s the
step runs the policy once over the 2B rows [chosen; rejected] (``bfpo.logprobs.sequence_logprobs``: summed
response-token log-probs, never the [2B, L, V] logits), takes the reference log-probs from the batch, from a
frozen copy or from the LoRA base weights (``bfpo.train_params``; always without gradient), builds
``PreferenceScores`` and calls the objective. The loss is

    L = sum_s w_s * Lbar_s,      Lbar_s = (1 / n_s) sum_{i real pair of s} l(i),

the BFPO recipe's safety loss plus its helpfulness buffer with weight 1 (Zhang et al. 2025, the authors'
``trainer.py``; the paper's equation number is not confirmed).

Exact gradient accumulation. ``runtime.step.make_train_step`` weights each micro-batch m by
``metrics["loss"].count`` and divides by the summed counts. The step reports ``count = n_{0,m}`` (real pairs of
the first, main, stream) and ``total = n_{0,m} L_m``. With one stream that is exactly the masked mean over the
whole batch whatever the padding. With several streams it is exact whenever every stream's real-pair count is
the same in every micro-batch (full training batches split evenly; ``split_microbatches`` interleaves rows), since
then sum_m n_{0,m} L_m / sum_m n_{0,m} = sum_s w_s sum_m T_{s,m} / n_s. Padding rows concentrated in one
micro-batch of a secondary stream would weight its pairs slightly differently; training batches have none.

KTO needs log-probs of prompts paired with another pair's response: a stream batch may carry an optional
"mismatched" side (same layout; ``TokenizedPairs.batch(mismatched=True)`` builds it from the batch's own
responses) that joins the same forward as a third block of rows; without it a KTO trainer raises ``BFPOError``.

Per-stream metrics are prefixed by the stream name ("buffer/loss", "safety/rewards/margin",
"safety/safety/accuracy", "safety/logps/chosen"); per-pair-type ones, including the objective-independent
"safety/pairs/margin/unsafe_safe", only in evaluation (``make_eval_metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bfpo.errors import BFPOError, DataError
from bfpo.labeling import PAIR_TYPES, pair_type_index
from bfpo.logprobs import SIDES, concatenated_rows, model_graphdef, row_logprobs
from bfpo.model.config import LlamaConfig
from bfpo.objectives import PreferenceScores, get_objective
from bfpo.objectives.registry import Objective
from bfpo.train_params import ParamLayout, policy_params, reference_params
from runtime.metrics import Metric
from runtime.step import make_train_step



@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    """A named data stream and the weight of its mean loss in the total."""

    name: str
    weight: float = 1.0

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise BFPOError(f"StreamSpec.name={self.name!r}: expected a non-empty name without '/'")
        if not (isinstance(self.weight, (int, float)) and self.weight >= 0):
            raise BFPOError(f"StreamSpec.weight={self.weight!r} for stream {self.name!r}: expected a number >= 0")


@dataclass(frozen=True, kw_only=True)
class PreferenceConfig:
    """``objective``: a registry name; ``objective_config``: its config (None: the registry's default), e.g.
    ``BFPOConfig(labeling=LabelingConfig(tau=0.01, b1=3, alpha=0.5))`` or ``DPOConfig(beta=0.1)``. The first
    stream is the main one (its pairs are the loss's count). ``logprob_chunk``: positions per vocabulary chunk."""

    objective: str = "bfpo"
    objective_config: Any = None
    streams: tuple[StreamSpec, ...] = (StreamSpec(name="safety"),)
    layout: ParamLayout = field(default_factory=ParamLayout)
    logprob_chunk: int = 128

    def __post_init__(self):
        default = get_objective(self.objective).config
        if self.objective_config is not None and type(self.objective_config) is not type(default):
            raise BFPOError(f"PreferenceConfig.objective_config: objective {self.objective!r} takes a "
                            f"{type(default).__name__}, got {type(self.objective_config).__name__}")
        if not self.streams:
            raise BFPOError("PreferenceConfig.streams: at least one stream is needed")
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise BFPOError(f"PreferenceConfig.streams: stream names must differ, got {names}")
        if not isinstance(self.layout, ParamLayout):
            raise BFPOError(f"PreferenceConfig.layout={self.layout!r}: expected a ParamLayout")
        if self.logprob_chunk < 1:
            raise BFPOError(f"PreferenceConfig.logprob_chunk={self.logprob_chunk}: must be at least 1")
        needs_reference = get_objective(self.objective).needs_reference
        if needs_reference and self.layout.reference == "none":
            raise BFPOError(f"PreferenceConfig.layout.reference='none' but objective {self.objective!r} needs a "
                            "reference model: use 'batch' (a precomputed cache), 'frozen' or 'base' (LoRA)")

    @property
    def resolved(self) -> tuple[Objective, Any]:
        objective = get_objective(self.objective)
        return objective, objective.config if self.objective_config is None else self.objective_config


def stream_scores(graphdef: nnx.GraphDef, policy: Any, reference: Any | None, stream: Mapping[str, Any],
                  objective: Objective, chunk: int, where: str) -> tuple[PreferenceScores, jax.Array]:
    """``PreferenceScores`` of one stream batch (policy over [chosen; rejected(; mismatched)] in one forward)."""
    sides = SIDES
    if objective.needs_mismatched:
        if "mismatched" not in stream:
            raise BFPOError(f"{where}: objective {objective.name!r} needs log-probs of mismatched (prompt, response) "
                            "pairs; the stream batch has no 'mismatched' side (build it with "
                            "TokenizedPairs.batch(..., mismatched=True) or PreferenceStream(..., mismatched=True))")
        sides = SIDES + ("mismatched",)
    rows = concatenated_rows(stream, sides, where)
    b = jnp.shape(stream["chosen"]["tokens"])[0]
    policy_lp, counts = row_logprobs(graphdef, policy, rows, chunk)
    if reference is not None:
        reference_lp = jax.lax.stop_gradient(row_logprobs(graphdef, reference, rows, chunk)[0])
    elif objective.needs_reference:
        keys = ["reference_chosen", "reference_rejected"] + (["reference_mismatched"] if len(sides) == 3 else [])
        missing = [k for k in keys if k not in stream]
        if missing:
            raise DataError(f"{where}: objective {objective.name!r} takes reference log-probs from the batch "
                            f"(layout.reference='batch') but the stream batch lacks {missing}; wrap the data "
                            "with bfpo.reference_cache.WithReference")
        reference_lp = jnp.concatenate([jnp.asarray(stream[k], jnp.float32) for k in keys])
    else:
        reference_lp = None
    extra = {}
    if len(sides) == 3:
        extra = {"policy_mismatched": policy_lp[2 * b:],
                 "reference_mismatched": None if reference_lp is None else reference_lp[2 * b:]}
    scores = PreferenceScores.from_concatenated(
        policy_lp[:2 * b], counts[:2 * b], None if reference_lp is None else reference_lp[:2 * b],
        chosen_safe=jnp.asarray(stream["chosen_safe"], jnp.float32),
        rejected_safe=jnp.asarray(stream["rejected_safe"], jnp.float32),
        pair_mask=jnp.asarray(stream["pair_mask"]).astype(bool), **extra)
    return scores, b


def pair_type_margins(scores: PreferenceScores) -> dict[str, Metric]:
    """Mean log-ratio margin h = Delta(y_w) - Delta(y_l) per pair type, whatever the objective: on unsafe-chosen
    pairs a negative h means the policy moved towards the safe response relative to the reference."""
    h = jax.lax.stop_gradient(
        (scores.policy_chosen - scores.reference_chosen) - (scores.policy_rejected - scores.reference_rejected))
    kind = pair_type_index(*scores.safety)
    return {f"pairs/margin/{name}": Metric.from_values(h, scores.mask & (kind == i))
            for i, name in enumerate(PAIR_TYPES)}


def _is_per_type(key: str) -> bool:
    return any(key.endswith("/" + name) for name in PAIR_TYPES)


def make_preference_loss(model_cfg: LlamaConfig, cfg: PreferenceConfig, *, per_type: bool = False) -> Callable:
    """``loss_fn(params, batch, rng) -> (loss, metrics)`` for ``runtime.step.make_train_step``; ``params`` is the
    dict of ``bfpo.train_params.build_params``.

    Per-pair-type metrics ("safety/margin/unsafe_safe", ...) are kept only with ``per_type`` (evaluation): a
    training batch need not hold every pair type, and a metric over no pairs has no value to log."""
    graphdef = model_graphdef(model_cfg)
    objective, objective_cfg = cfg.resolved
    layout = cfg.layout

    def loss_fn(params, batch, rng):
        del rng  # the step is deterministic (no dropout)
        unknown = sorted(set(batch) - {s.name for s in cfg.streams})
        if unknown:
            raise DataError(f"training batch has streams {unknown} that PreferenceConfig.streams does not name")
        policy = policy_params(layout, params)
        reference = reference_params(layout, params)
        total_loss = jnp.zeros((), jnp.float32)
        metrics: dict[str, Metric] = {}
        main_count = None
        for spec in cfg.streams:
            if spec.name not in batch:
                raise DataError(f"training batch lacks stream {spec.name!r}; it has {sorted(batch)}")
            stream = batch[spec.name]
            scores, _ = stream_scores(graphdef, policy, reference, stream, objective, cfg.logprob_chunk,
                                      where=f"batch[{spec.name!r}]")
            loss_s, metrics_s = objective.loss(scores, objective_cfg)
            total_loss = total_loss + spec.weight * loss_s
            if main_count is None:
                main_count = metrics_s["loss"].count
            mask = scores.mask
            metrics_s = {**metrics_s,
                         "logps/chosen": Metric.from_values(jax.lax.stop_gradient(scores.policy_chosen), mask),
                         "logps/rejected": Metric.from_values(jax.lax.stop_gradient(scores.policy_rejected), mask)}
            if per_type and scores.reference_chosen is not None:
                metrics_s.update(pair_type_margins(scores))
            metrics.update({f"{spec.name}/{k}": v for k, v in metrics_s.items() if per_type or not _is_per_type(k)})
        metrics["loss"] = Metric(total=jax.lax.stop_gradient(total_loss) * main_count, count=main_count)
        return total_loss, metrics

    return loss_fn


def make_preference_step(model_cfg: LlamaConfig, cfg: PreferenceConfig, tx: optax.GradientTransformation, *,
                         grad_accum: int = 1):
    """``step(state, batch) -> (state, metrics)``: pure, for ``jax.jit`` (one compilation per bucket shape)."""
    return make_train_step(make_preference_loss(model_cfg, cfg), tx, grad_accum=grad_accum)


def make_eval_metrics(model_cfg: LlamaConfig, cfg: PreferenceConfig) -> Callable:
    """``metrics(params, batch)``: the step's metrics without a gradient (held-out evaluation)."""
    loss_fn = make_preference_loss(model_cfg, cfg, per_type=True)
    return lambda params, batch: loss_fn(params, batch, None)[1]

