"""RepNoise (Rosati et al., "Representation Noising: A Defence Mechanism Against Harmful Finetuning", NeurIPS
2024): an alignment-stage defence that pushes the model's representations of harmful text towards Gaussian noise
while it learns to refuse, so that little harmful information is left for a later fine-tuning to recover.

With h_l the (masked) outputs of layer l's MLP on the harmful batch, CE the refusal loss on the paired harmless
batch and CE_lens,l the harmful answers' cross-entropy read from layer l's hidden state through the final norm and
the head (layers l = 0..L, the last one being the model's own output):

    L = CE + beta * mean_l MMD(h_l, N(0, I)) - alpha * log(1 + mean_l CE_lens,l).

MMD between the rows x_i (i < B) and y_j (j < B), each a flattened example, is the biased estimate with a sum of
Gaussian kernels over all 2B rows z:

    k(z, z') = sum_{m=0}^{M-1} exp(-||z - z'||^2 / (s q^m)),   s = mean_{a != b} ||z_a - z_b||^2 / q^{floor(M/2)},
    MMD = mean_{i,j} [k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(y_i, x_j)],

with q = 2 and M = 5, and s a constant (no gradient flows through the bandwidth). Followed from the official code
(domenicrosati/representation-noising, ``representation_noising/loss.py``): the kernel sum and its bandwidths, the
noise drawn with the hidden states' shape and masked like them, the mask (the harmful tokens, where the harmful
and the harmless sequences differ), and 1 added to the averaged lens term inside the log. One difference: the
official code adds the output's own loss to the sum of the L + 1 lens losses and still divides by L + 1; here
the lens term is the plain mean of the terms given.

``repnoise_lm_loss`` is the loss of the train step on the LM: a batch of pairs whose chosen side is the refusal
(harmless) and rejected side the harmful answer to the same prompt; h_l are the MLP blocks' outputs
(``LlamaForCausalLM.layer_taps``) at the harmful answer's tokens, and the lens reads the embeddings, each layer's
output but the last through the final norm, and the model's own final hidden states (L + 1 terms).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from bfpo.logprobs import chunked_logprob_sums, concatenated_rows, model_graphdef, sequence_logprobs
from bfpo.model.llama import rms_norm
from bfpo.objectives.checks import non_negative
from bfpo.train_params import ParamLayout, policy_params
from runtime.metrics import Metric

KERNEL_MUL = 2.0
KERNEL_NUM = 5


@dataclass(frozen=True, kw_only=True)
class RepNoiseConfig:
    """``beta``: the weight of the noise (MMD) term; ``alpha``: the weight of the harmful-answer lens term."""

    beta: float = 0.001
    alpha: float = 1.0

    def __post_init__(self):
        non_negative("RepNoiseConfig", "beta", self.beta)
        non_negative("RepNoiseConfig", "alpha", self.alpha)


def gaussian_mmd(x: jax.Array, y: jax.Array, *, kernel_mul: float = KERNEL_MUL,
                 kernel_num: int = KERNEL_NUM) -> jax.Array:
    """The biased MMD between the rows of x [B, ...] and y [B, ...] with the kernel sum of the module docstring."""
    b = x.shape[0]
    z = jnp.concatenate([x.reshape(b, -1), y.reshape(b, -1)]).astype(jnp.float32)
    sq = jnp.sum(z * z, axis=-1)
    dist = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    n = 2 * b
    bandwidth = jax.lax.stop_gradient(jnp.sum(dist) / (n * n - n)) / kernel_mul ** (kernel_num // 2)
    kernel = sum(jnp.exp(-dist / (bandwidth * kernel_mul ** m)) for m in range(kernel_num))
    xx, yy, xy, yx = kernel[:b, :b], kernel[b:, b:], kernel[:b, b:], kernel[b:, :b]
    return jnp.mean(xx + yy - xy - yx)


def noise_term(hidden: Sequence[jax.Array], mask_BxT: jax.Array, key: jax.Array) -> jax.Array:
    """mean_l MMD(h_l * mask, N(0, I) * mask): ``hidden`` holds one [B, T, H] array per layer."""
    total = jnp.zeros((), jnp.float32)
    for layer, h in enumerate(hidden):
        m = mask_BxT[:, :, None].astype(h.dtype)
        noise = jax.random.normal(jax.random.fold_in(key, layer), h.shape, jnp.float32).astype(h.dtype)
        total = total + gaussian_mmd(h * m, noise * m)
    return total / len(hidden)


def repnoise_loss(harmless_ce: jax.Array, hidden: Sequence[jax.Array], mask_BxT: jax.Array,
                  lens_ces: Sequence[jax.Array], key: jax.Array, cfg: RepNoiseConfig) -> tuple[jax.Array, dict]:
    """(L, parts): L of the module docstring from the model's per-layer quantities (``lens_ces``: the harmful
    answers' cross-entropy read from each hidden state, the model's own output included)."""
    noise = noise_term(hidden, mask_BxT, key)
    lens = sum(lens_ces) / len(lens_ces)
    loss = harmless_ce + cfg.beta * noise - cfg.alpha * jnp.log(1.0 + lens)
    return loss, {"harmless_ce": harmless_ce, "noise_mmd": noise, "harmful_lens_ce": lens}


def lens_nll(model, h_BxTxD: jax.Array, tokens_BxT: jax.Array, weights_BxT: jax.Array, chunk: int) -> jax.Array:
    """Token-mean NLL of ``tokens`` where ``weights`` is set, read from hidden states ``h`` through the head
    (position t predicts token t + 1)."""
    w, vocab_major = model.head_weight()
    weights = weights_BxT[:, 1:]
    total, count = chunked_logprob_sums(h_BxTxD[:, :-1], w, tokens_BxT[:, 1:], weights, chunk, vocab_major,
                                        model.config.execution.kernels)
    return -jnp.sum(total) / jnp.maximum(jnp.sum(count), 1.0)


def repnoise_lm_loss(model_cfg, layout: ParamLayout, chunk: int, cfg: RepNoiseConfig, stream: str = "sft"
                     ) -> Callable:
    """``loss_fn(params, batch, rng)``: RepNoise's L on ``batch[stream]`` (chosen: the refusal, rejected: the harmful
    answer), its count the real pairs (the loss is a mean over the batch's tokens and layers); ``rng`` draws the
    noise."""
    graphdef = model_graphdef(model_cfg)

    def loss_fn(params, batch, rng):
        model = nnx.merge(graphdef, policy_params(layout, params))
        rows_of = batch[stream]
        where = f"batch[{stream!r}]"
        harmless = concatenated_rows(rows_of, ("chosen",), where)
        harmful = concatenated_rows(rows_of, ("rejected",), where)
        real = jnp.asarray(rows_of["pair_mask"], jnp.float32)
        logp, counts = sequence_logprobs(model, harmless["tokens"], harmless["mask"], harmless["score_mask"], chunk)
        harmless_ce = -jnp.sum(logp * real) / jnp.maximum(jnp.sum(counts * real), 1.0)
        tokens = jnp.asarray(harmful["tokens"])
        answer = (jnp.asarray(harmful["score_mask"]).astype(bool) & jnp.asarray(harmful["mask"]).astype(bool)
                  & (real[:, None] > 0))
        taps = model.layer_taps(tokens, harmful["mask"])
        layers = model_cfg.num_layers
        normed = [taps["embeddings"]] + [taps["residual"][i] for i in range(layers - 1)]
        lens = [lens_nll(model, rms_norm(h, model.norm.scale[...], model_cfg.rms_norm_eps), tokens, answer, chunk)
                for h in normed] + [lens_nll(model, taps["final"], tokens, answer, chunk)]
        hidden = [taps["mlp"][i] for i in range(layers)]
        loss, parts = repnoise_loss(harmless_ce, hidden, answer, lens, rng, cfg)
        pairs = jnp.sum(real)
        metrics = {name: Metric.scalar(jax.lax.stop_gradient(v)) for name, v in parts.items()}
        metrics["loss"] = Metric(total=jax.lax.stop_gradient(loss) * pairs, count=pairs)
        return loss, metrics

    return loss_fn
