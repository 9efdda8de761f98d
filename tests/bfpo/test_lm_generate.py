"""KV-cache generation equals argmax decoding by repeated full forward passes, sharded or not; stop tokens,
top-p and temperature behave as specified; a bucket compiles once; chat replies decode."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bfpo import DataError
from bfpo.generate import SamplingConfig, generate, generate_chat, left_pad, sample_token, top_p_filter
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import LlamaForCausalLM, shard_model
from bfpo.tokenize import Tokenizer
from runtime import make_mesh
from runtime import sharding as sh

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

N_NEW = 6


@pytest.fixture(scope="module")
def model():
    # A sliding window shorter than prompt + generation also checks the window through the cache.
    return LlamaForCausalLM(LlamaConfig.tiny(sliding_window=7, initializer_range=0.2), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [list(rng.integers(0, 256, n)) for n in (5, 9, 1, 7)]


@jax.jit
def _forward(model, tokens, mask):
    return model(tokens, mask)


def full_forward_greedy(model, prompt, steps, width=64):
    """Argmax decoding of one prompt by re-running the whole sequence each step (right-padded to one width,
    which causal attention ignores, so that it compiles once)."""
    seq = list(prompt)
    for _ in range(steps):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :len(seq)] = seq
        logits = _forward(model, jnp.asarray(tokens), jnp.asarray(np.arange(width) < len(seq))[None])
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt):]


@pytest.fixture(scope="module")
def greedy(model, prompts):
    tokens, mask = left_pad(prompts, pad_id=256, length=12)
    return generate(model, tokens, mask, SamplingConfig(max_new_tokens=N_NEW))


def test_greedy_with_cache_equals_full_forward_argmax(model, prompts, greedy):
    for i, prompt in enumerate(prompts):
        assert list(np.asarray(greedy.tokens[i])) == full_forward_greedy(model, prompt, N_NEW)
    np.testing.assert_array_equal(greedy.lengths, N_NEW)


def test_sharded_generation_equals_one_device(model, prompts, greedy):
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    sharded = shard_model(model, mesh)
    assert sharded.layers.mlp.up_proj.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    tokens, mask = left_pad(prompts, pad_id=256, length=12)
    with sh.activate(mesh):
        out = generate(sharded, tokens, mask, SamplingConfig(max_new_tokens=N_NEW))
    np.testing.assert_array_equal(out.tokens, greedy.tokens)


def test_stop_tokens_end_rows_and_pad_after(model, prompts, greedy):
    stop = int(greedy.tokens[0, 2])
    tokens, mask = left_pad(prompts, pad_id=256, length=12)
    out = generate(model, tokens, mask, SamplingConfig(max_new_tokens=N_NEW, stop_tokens=(stop,), pad_id=256))
    for i in range(len(prompts)):
        row = list(np.asarray(greedy.tokens[i]))
        expected_len = row.index(stop) + 1 if stop in row else N_NEW
        assert int(out.lengths[i]) == expected_len
        assert list(np.asarray(out.tokens[i, :expected_len])) == row[:expected_len]
        assert (np.asarray(out.tokens[i, expected_len:]) == 256).all()


def test_top_p_keeps_the_smallest_nucleus():
    logits = jnp.log(jnp.asarray([[0.05, 0.4, 0.1, 0.3, 0.15], [0.2, 0.2, 0.2, 0.2, 0.2]]))
    kept = np.isfinite(np.asarray(top_p_filter(logits, 0.75)))
    # 0.4 + 0.3 = 0.7 < 0.75, so the 0.15 token joins; uniform rows keep 4 of 5 (0.6 < 0.75 <= 0.8).
    np.testing.assert_array_equal(kept[0], [False, True, False, True, True])
    assert kept[1].sum() == 4
    np.testing.assert_array_equal(np.isfinite(np.asarray(top_p_filter(logits, 0.01)))[0],
                                  [False, True, False, False, False])


def test_temperature_sampling_follows_the_tempered_softmax():
    logits = jnp.asarray([[1.0, 0.0, -1.0, 0.5]])
    cfg = SamplingConfig(temperature=2.0, top_p=1.0)
    draws = jax.vmap(lambda k: sample_token(logits, k, cfg))(jax.random.split(jax.random.key(1), 20000))[:, 0]
    freq = np.bincount(np.asarray(draws), minlength=4) / 20000
    np.testing.assert_allclose(freq, np.asarray(jax.nn.softmax(logits[0] / 2.0)), atol=0.015)


def test_one_compilation_per_bucket(model, prompts):
    from bfpo import generate as gen

    chex.clear_trace_counter()
    counted = jax.jit(chex.assert_max_traces(gen.generate_tokens, n=1), static_argnames=("graphdef", "cfg"))
    graphdef, params = nnx.split(model)
    cfg = SamplingConfig(max_new_tokens=3, temperature=0.7, top_p=0.9)
    for seed in range(3):
        shuffled = [prompts[j] for j in np.random.default_rng(seed).permutation(len(prompts))]
        tokens, mask = left_pad(shuffled, pad_id=256, length=12)
        counted(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(seed), cfg=cfg)


def test_generate_chat_decodes_each_reply(model):
    tok = Tokenizer.byte_level()
    chats = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "A longer question?"}]]
    replies = generate_chat(model, tok, chats, SamplingConfig(max_new_tokens=4), batch_bucket=4)
    for chat, reply in zip(chats, replies):
        expected = full_forward_greedy(model, tok.encode_chat(chat), 4)
        cut = next((i + 1 for i, t in enumerate(expected) if t in tok.stop_ids), 4)
        assert reply == tok.decode(expected[:cut])


def test_prompts_must_be_left_padded(model):
    with pytest.raises(DataError, match="left-padded"):
        generate(model, np.zeros((1, 4), np.int32), np.array([[1, 1, 0, 0]], bool), SamplingConfig())
