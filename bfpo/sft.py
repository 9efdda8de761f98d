"""The supervised stage that makes a base model before preference training: synthetic chat targets and the
token-mean negative log-likelihood of the answers,

    L_SFT(theta) = - (1 / sum_i |y_i|) sum_i sum_t log pi_theta(y_i,t | x_i, y_i,<t)

(the SFT stage that precedes BFPO in the paper's recipe). Targets are answers to the synthetic safety task's
prompts: helpful listings for benign requests (some partial, a few refusals) and, for harmful requests, a listing
of harmful items (unsafe compliance) or a refusal, in the shares of ``SFTConfig``, so the base is helpful and
complies with a share of the harmful requests: the room in which preference objectives differ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from bfpo.data import PreferencePair, synthetic
from bfpo.errors import ConfigError
from bfpo.logprobs import concatenated_rows, model_graphdef, row_logprobs
from bfpo.optim import OptimizerConfig
from bfpo.train_params import ParamLayout, policy_params
from runtime.metrics import Metric

SFT_STREAM = "sft"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """The SFT stage: how long, on how many targets, and their mix.

    A benign request gets all k items with probability 1 - ``benign_partial`` - ``benign_refusal``, fewer items
    with ``benign_partial``, a refusal with ``benign_refusal``; a harmful request gets a listing of harmful items
    (unsafe compliance) with ``harmful_compliance``, a refusal otherwise."""

    steps: int = 400
    """0 skips the stage: the base is the model itself."""
    examples: int = 2048
    batch_size: int = 32
    harmful_share: float = 0.4
    """Share of harmful prompts among the SFT examples."""
    harmful_compliance: float = 0.5
    benign_partial: float = 0.15
    benign_refusal: float = 0.05
    trainable: str = ""
    """Regex over parameter paths of what trains (empty: everything)."""
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.05)

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"SFTConfig.steps={self.steps}: must be >= 0 (0 skips the SFT stage)")
        for name in ("examples", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SFTConfig.{name}={getattr(self, name)}: must be at least 1")
        if self.examples < self.batch_size:
            raise ConfigError(f"SFTConfig.examples={self.examples}: fewer than batch_size={self.batch_size}")
        for name in ("harmful_share", "harmful_compliance", "benign_partial", "benign_refusal"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ConfigError(f"SFTConfig.{name}={value}: expected a share in [0, 1]")
        if self.benign_partial + self.benign_refusal > 1.0:
            raise ConfigError(f"SFTConfig.benign_partial + benign_refusal = "
                              f"{self.benign_partial + self.benign_refusal}: must be at most 1")


def sft_examples(n: int, seed: int, cfg: SFTConfig) -> list[PreferencePair]:
    """``n`` SFT targets in the shares of ``cfg`` (a "partial" answer to a request for k = 1 item stays complete,
    as fewer than one item is a refusal). Each is a pair with chosen = rejected = the target: the batch layout the
    data streams already produce; the loss reads the chosen side only."""
    rng = synthetic.split_rng(seed, "train", stream=5)  # streams 0-3 belong to bfpo.data.synthetic
    out = []
    for i in range(n):
        harmful = bool(rng.random() < cfg.harmful_share)
        topics = sorted(synthetic.HARMFUL_TOPICS if harmful else synthetic.BENIGN_TOPICS)
        prompt = synthetic.make_prompt(rng, topics)
        k, topic = synthetic.parse_prompt(prompt)
        items = synthetic.TOPICS[topic]
        u = rng.random()
        if harmful:
            reply = synthetic.listing(rng, items, k) if u < cfg.harmful_compliance else synthetic.refusal(rng)
        elif u < cfg.benign_refusal:
            reply = synthetic.refusal(rng)
        elif u < cfg.benign_refusal + cfg.benign_partial and k > 1:
            reply = synthetic.listing(rng, items, int(rng.integers(1, k)))
        else:
            reply = synthetic.listing(rng, items, k)
        safe = not synthetic.is_unsafe(prompt, reply)
        out.append(PreferencePair(prompt=({"role": "user", "content": prompt},), chosen=reply, rejected=reply,
                                  chosen_safe=safe, rejected_safe=safe, source=f"sft:{seed}:{i}"))
    return out


def sft_loss(model_cfg, layout: ParamLayout, chunk: int, stream: str = SFT_STREAM) -> Callable:
    """``loss_fn(params, batch, rng, offsets=None)``: L_SFT over the real rows of ``batch[stream]``, with the token
    count as the metric's count so that gradient accumulation stays the exact token mean. ``offsets``
    [layers, rows, tokens, hidden] are added to the attention blocks' outputs (``sft_offsets_shape``)."""
    graphdef = model_graphdef(model_cfg)

    def loss_fn(params, batch, rng, offsets=None):
        del rng
        rows_of = batch[stream]
        rows = concatenated_rows(rows_of, ("chosen",), where=f"batch[{stream!r}]")
        logp, counts = row_logprobs(graphdef, policy_params(layout, params), rows, chunk, offsets)
        real = jnp.asarray(rows_of["pair_mask"], jnp.float32)
        tokens = jnp.sum(counts * real)
        total = -jnp.sum(logp * real)
        loss = total / jnp.maximum(tokens, 1.0)
        return loss, {"loss": Metric(total=jax.lax.stop_gradient(total), count=tokens)}

    return loss_fn


def sft_offsets_shape(model_cfg, stream: str = SFT_STREAM) -> Callable:
    """``shape(batch)``: the attention offsets' shape [layers, rows, tokens, hidden] for ``sft_loss``'s rows."""

    def shape(batch):
        rows, tokens = batch[stream]["chosen"]["tokens"].shape
        return (model_cfg.num_layers, rows, tokens, model_cfg.hidden_size)

    return shape
