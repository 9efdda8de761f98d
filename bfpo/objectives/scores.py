"""The inputs every preference objective shares, and the metrics they all report.

Symbols used in the objectives' docstrings: for a pair (x, y_w, y_l), y_w the chosen (more helpful) response,

    log pi(y|x)       summed response-token log-probs of the policy (``bfpo.logprobs.sequence_logprobs``),
    |y|               the number of response tokens,
    Delta(y) = log pi(y|x) - log pi_ref(y|x)                      (the log-ratio, summed unless stated),
    h = Delta(y_w) - Delta(y_l)                                   (the log-ratio margin),
    sigma             the logistic function,  s_w, s_l            the safety labels (1 safe, 0 unsafe).

A ``pair_mask`` marks real pairs (a padded batch has zero rows); every loss and metric is a (sum, count) pair
over the masked pairs only, so micro-batches and devices combine exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from bfpo.errors import DataError
from bfpo.labeling import PAIR_TYPES, pair_type_index
from runtime.metrics import Metric

# The fields every objective with a reference model needs.
REFERENCE = ("reference_chosen", "reference_rejected")


@struct.dataclass
class PreferenceScores:
    """Per-pair log-probs and labels, each [B].

    ``reference_*`` may be None for reference-free objectives; ``policy_mismatched`` / ``reference_mismatched``
    (log-probs of prompt x_i with a response from another pair, KTO's reference-point estimate) only KTO
    needs. Safety labels default to safe/safe, the pair mask to all pairs. ``chosen_present`` /
    ``rejected_present`` (default: both) let an unpaired objective (KTO) take rows that hold only a desirable
    or only an undesirable response; paired objectives ignore them.
    """

    policy_chosen: jax.Array
    policy_rejected: jax.Array
    chosen_tokens: jax.Array
    rejected_tokens: jax.Array
    reference_chosen: jax.Array | None = None
    reference_rejected: jax.Array | None = None
    chosen_safe: jax.Array | None = None
    rejected_safe: jax.Array | None = None
    pair_mask: jax.Array | None = None
    policy_mismatched: jax.Array | None = None
    reference_mismatched: jax.Array | None = None
    chosen_present: jax.Array | None = None
    rejected_present: jax.Array | None = None

    @classmethod
    def from_concatenated(cls, policy_2B: jax.Array, tokens_2B: jax.Array, reference_2B: jax.Array | None = None,
                          **labels) -> "PreferenceScores":
        """Scores from one forward over [chosen; rejected] rows (``bfpo.logprobs.sequence_logprobs`` gives the
        summed log-probs and token counts, each [2B]); ``labels`` are the other fields, e.g. safety labels."""
        if jnp.shape(policy_2B)[0] % 2 or jnp.shape(policy_2B) != jnp.shape(tokens_2B):
            raise DataError(f"policy log-probs {jnp.shape(policy_2B)} and token counts {jnp.shape(tokens_2B)}: "
                            "expected the same shape [2B], chosen rows first")
        half = jnp.shape(policy_2B)[0] // 2
        reference = {} if reference_2B is None else {"reference_chosen": reference_2B[:half],
                                                     "reference_rejected": reference_2B[half:]}
        return cls(policy_chosen=policy_2B[:half], policy_rejected=policy_2B[half:], chosen_tokens=tokens_2B[:half],
                   rejected_tokens=tokens_2B[half:], **reference, **labels)

    @property
    def mask(self) -> jax.Array:
        if self.pair_mask is None:
            return jnp.ones(jnp.shape(self.policy_chosen), bool)
        return jnp.asarray(self.pair_mask).astype(bool)

    @property
    def safety(self) -> tuple[jax.Array, jax.Array]:
        """(s_w, s_l) as float32, safe/safe where no labels were given."""
        ones = jnp.ones(jnp.shape(self.policy_chosen), jnp.float32)
        s_w = ones if self.chosen_safe is None else jnp.asarray(self.chosen_safe, jnp.float32)
        s_l = ones if self.rejected_safe is None else jnp.asarray(self.rejected_safe, jnp.float32)
        return s_w, s_l


def require(scores: PreferenceScores, fields: tuple[str, ...], objective: str) -> None:
    """Raises ``DataError`` naming each field that ``objective`` needs and ``scores`` lacks."""
    missing = [f for f in fields if getattr(scores, f) is None]
    if missing:
        raise DataError(f"objective {objective!r} needs PreferenceScores.{', '.join(missing)}; got None")


def length(tokens: jax.Array) -> jax.Array:
    """|y| as float32, at least 1 so that an empty (masked) row divides safely."""
    return jnp.maximum(jnp.asarray(tokens, jnp.float32), 1.0)


def log_ratios(scores: PreferenceScores, *, average: bool = False) -> tuple[jax.Array, jax.Array]:
    """(Delta(y_w), Delta(y_l)), each divided by its response length when ``average``."""
    d_w = jnp.asarray(scores.policy_chosen, jnp.float32) - jnp.asarray(scores.reference_chosen, jnp.float32)
    d_l = jnp.asarray(scores.policy_rejected, jnp.float32) - jnp.asarray(scores.reference_rejected, jnp.float32)
    if average:
        d_w, d_l = d_w / length(scores.chosen_tokens), d_l / length(scores.rejected_tokens)
    return d_w, d_l


def masked_loss(per_pair: jax.Array, mask: jax.Array) -> tuple[jax.Array, Metric]:
    """(total / count, Metric(total, count)) over the masked entries; 0 when nothing is masked in."""
    metric = Metric.from_values(per_pair, mask)
    # An all-padding micro-batch has count 0: return 0 rather than 0/0 so gradients stay finite.
    return metric.total / jnp.maximum(metric.count, 1.0), metric


def reward_metrics(reward_chosen: jax.Array, reward_rejected: jax.Array, mask: jax.Array) -> dict[str, Metric]:
    """Implicit rewards of each side, their margin and how often chosen beats rejected (gradient-free)."""
    r_w, r_l = jax.lax.stop_gradient(reward_chosen), jax.lax.stop_gradient(reward_rejected)
    return {
        "rewards/chosen": Metric.from_values(r_w, mask),
        "rewards/rejected": Metric.from_values(r_l, mask),
        "rewards/margin": Metric.from_values(r_w - r_l, mask),
        "rewards/accuracy": Metric.from_values((r_w > r_l).astype(jnp.float32), mask),
    }


def safety_metrics(margin: jax.Array, target_sign: jax.Array, scores: PreferenceScores,
                   mask: jax.Array) -> dict[str, Metric]:
    """For safety-aware objectives: how often sign(h) agrees with the sign of the pair's target (so a reversed
    unsafe/safe pair counts as right when h < 0), overall and per pair type, and the mean margin per pair type.

    ``target_sign`` is +1, -1, or 0 where the objective states no preference (those pairs are left out of the
    accuracy but not of the per-type margin).
    """
    h = jax.lax.stop_gradient(jnp.asarray(margin, jnp.float32))
    sign = jnp.asarray(target_sign, jnp.float32)
    agrees = (jnp.sign(h) == sign).astype(jnp.float32)
    decided = mask & (sign != 0)
    kind = pair_type_index(*scores.safety)
    out = {"safety/accuracy": Metric.from_values(agrees, decided)}
    for index, name in enumerate(PAIR_TYPES):
        of_type = kind == index
        out[f"safety/margin/{name}"] = Metric.from_values(h, mask & of_type)
        out[f"safety/accuracy/{name}"] = Metric.from_values(agrees, decided & of_type)
    return out
