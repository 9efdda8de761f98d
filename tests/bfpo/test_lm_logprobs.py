"""Chunked response log-probs equal a direct full-logits computation, are invariant to padding, have the same
gradient, and never build the [B, T, V] logits."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bfpo.logprobs import sequence_logprobs
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import LlamaForCausalLM
from bfpo.tokenize import pack_prompt_response

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

CFG = LlamaConfig.tiny()
RNG = np.random.default_rng(0)
# (prompt, response) pairs of different lengths
PAIRS = [(RNG.integers(3, 264, p), RNG.integers(3, 264, r)) for p, r in [(5, 4), (2, 7), (6, 1)]]


def pack(pairs, left: int, right: int):
    """Prompts left-padded to a common length plus ``left``, responses right-padded plus ``right``."""
    prompts, responses = [list(p) for p, _ in pairs], [list(r) for _, r in pairs]
    out = pack_prompt_response(prompts, responses, pad_id=0, prompt_length=max(map(len, prompts)) + left,
                               response_length=max(map(len, responses)) + right)
    return jnp.asarray(out["tokens"]), jnp.asarray(out["mask"]), jnp.asarray(out["score_mask"])


@pytest.fixture(scope="module")
def model():
    return LlamaForCausalLM(CFG, rngs=nnx.Rngs(0))


@jax.jit
def _logits(model, tokens):
    return model(tokens)


def direct(model, pairs, width=16):
    """log p(response | prompt) of each pair from its full logits (a row starting at position 0, right-padded,
    which causal attention ignores), with the log-softmax in float64 NumPy."""
    out = []
    for p, r in pairs:
        seq = np.zeros(width, np.int32)
        seq[:len(p) + len(r)] = np.concatenate([p, r])
        logits = np.asarray(_logits(model, jnp.asarray(seq[None])), np.float64)[0]
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        out.append(sum(logp[len(p) - 1 + j, tok] for j, tok in enumerate(r)))
    return np.array(out)


@pytest.fixture(scope="module")
def scored(model):
    fn = jax.jit(lambda m, t, k, s: sequence_logprobs(m, t, k, s, chunk=5))
    return fn


def test_equals_direct_computation_and_ignores_padding(model, scored):
    expected = direct(model, PAIRS)
    for left, right in [(0, 5), (3, 2), (5, 0)]:  # one shape (one compilation), different padding
        total, count = scored(model, *pack(PAIRS, left, right))
        np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(count, [len(r) for _, r in PAIRS])


def test_gradient_equals_full_logits_gradient(model):
    tokens, mask, score = pack(PAIRS, 1, 2)
    graphdef, params = nnx.split(model)

    def chunked(params):
        total, _ = sequence_logprobs(nnx.merge(graphdef, params), tokens, mask, score, chunk=4)
        return jnp.sum(total)

    def full(params):
        logits = nnx.merge(graphdef, params)(tokens, mask)
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(picked * (score & mask)[:, 1:])

    chex.assert_trees_all_close(jax.jit(jax.grad(chunked))(params), jax.jit(jax.grad(full))(params), rtol=2e-4,
                                atol=1e-6)

    b, t, v = tokens.shape[0], tokens.shape[1], CFG.vocab_size
    text = str(jax.make_jaxpr(jax.grad(chunked))(params))
    assert f"f32[{b},4,{v}]" in text  # one chunk of logits at a time...
    for length in range(5, t + 4):
        assert f"f32[{b},{length},{v}]" not in text  # ...never the whole sequence's


def test_causal_blocks_change_neither_scores_nor_gradients(model):
    """Causal blocks skip only score products that the mask zeroes, with left and right padding present."""
    tokens, mask, score = pack(PAIRS, 3, 2)  # 9 + 9 = 18 slots: 3 blocks of 6
    graphdef, params = nnx.split(model)

    def scores(params, blocks):
        merged = nnx.merge(graphdef, params)
        merged.config = merged.config.with_execution(causal_blocks=blocks)
        return sequence_logprobs(merged, tokens, mask, score, chunk=8)[0]

    fn = jax.jit(lambda p, blocks: (scores(p, blocks), jax.grad(lambda p: jnp.sum(scores(p, blocks)))(p)),
                 static_argnums=1)
    chex.assert_trees_all_close(fn(params, 3), fn(params, 1), rtol=1e-5, atol=1e-6)
