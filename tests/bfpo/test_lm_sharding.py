"""The tiny LM's parameters shard as pinned; forward and a gradient step on (fsdp 8) and (fsdp 2 x tensor 4)
meshes equal one device running the layers unrolled and rematerialised, with chunked attention."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from bfpo.logprobs import sequence_logprobs
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import LlamaForCausalLM
from runtime import make_mesh
from runtime import sharding as sh
from runtime.batches import batch_axes, batch_shardings, put_batch
from runtime.metrics import Metric
from runtime.step import make_train_step
from runtime.train_state import init_train_state, leaf_paths

CFG = LlamaConfig.tiny(attention_bias=True, tie_word_embeddings=False)
PINNED = {
    "embed_tokens/embedding": P("tensor", "fsdp"),
    "layers/input_layernorm/scale": P(None, None),
    "layers/mlp/down_proj/kernel": P(None, "tensor", "fsdp"),
    "layers/mlp/gate_proj/kernel": P(None, "fsdp", "tensor"),
    "layers/mlp/up_proj/kernel": P(None, "fsdp", "tensor"),
    "layers/post_attention_layernorm/scale": P(None, None),
    "layers/self_attn/k_proj/bias": P(None, "tensor", None),
    "layers/self_attn/k_proj/kernel": P(None, "fsdp", "tensor", None),
    "layers/self_attn/o_proj/kernel": P(None, "tensor", None, "fsdp"),
    "layers/self_attn/q_proj/bias": P(None, "tensor", None),
    "layers/self_attn/q_proj/kernel": P(None, "fsdp", "tensor", None),
    "layers/self_attn/v_proj/bias": P(None, "tensor", None),
    "layers/self_attn/v_proj/kernel": P(None, "fsdp", "tensor", None),
    "lm_head": P("fsdp", "tensor"),
    "norm/scale": P(None),
}


def init(cfg):
    return lambda: nnx.state(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)), nnx.Param)


def batch():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, CFG.vocab_size, (8, 12)).astype(np.int32)
    mask = np.ones_like(tokens, bool)
    mask[:3, :4] = False  # left padding
    mask[5:, 9:] = False  # right padding
    score = np.zeros_like(mask)
    score[:, 6:] = True
    return {"tokens": tokens, "mask": mask, "score": score}


def make_loss(cfg):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))))

    def loss(params, b, rng):
        del rng
        total, count = sequence_logprobs(nnx.merge(graphdef, params), b["tokens"], b["mask"], b["score"], chunk=4)
        metric = Metric(total=-jnp.sum(total), count=jnp.sum(count))
        return metric.total / metric.count, {"loss": metric}

    return graphdef, loss


def run(axes, cfg=CFG):
    mesh = make_mesh(axes)
    tx = optax.sgd(1.0)
    state, shardings = init_train_state(init(cfg), tx, mesh, seed=0)
    graphdef, loss = make_loss(cfg)
    host = batch()
    bsh = batch_shardings(host, batch_axes(host), mesh)
    chex.clear_trace_counter()  # counts are kept per code object, across runs
    step = jax.jit(chex.assert_max_traces(make_train_step(loss, tx), n=1),
                   in_shardings=(shardings, bsh), out_shardings=(shardings, sh.replicated(mesh)))
    with sh.activate(mesh):
        losses = []
        for _ in range(2):
            state, metrics = step(state, put_batch(host, bsh))
            losses.append(jax.device_get(metrics)["loss"].compute())
    return state, losses


@pytest.fixture(scope="module")
def reference():
    return _single_device()


def _single_device():
    """The reference also runs its layers unrolled and rematerialised, and its attention 5 queries at a time
    (12 = 5 + 5 + 2 padded): none of these may change the numbers."""
    cfg = CFG.with_execution(scan_layers=False, remat="full", attention_query_chunk=5)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx = optax.sgd(1.0)
    state, shardings = init_train_state(init(cfg), tx, mesh, seed=0)
    graphdef, loss = make_loss(cfg)
    host = {k: jnp.asarray(v) for k, v in batch().items()}
    step = jax.jit(make_train_step(loss, tx))
    losses = []
    with sh.activate(mesh):
        for _ in range(2):
            state, metrics = step(state, host)
            losses.append(jax.device_get(metrics)["loss"].compute())
    return state, losses


def test_partition_specs_are_pinned():
    abstract = jax.eval_shape(init(CFG))
    shardings = sh.state_shardings(abstract, make_mesh({"fsdp": 2, "tensor": 4}))
    specs = {p: s.get_value().spec for p, s in zip(
        leaf_paths(abstract), jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, nnx.Variable)))}
    assert specs == PINNED


@pytest.mark.parametrize("axes", [{"fsdp": 8}, {"fsdp": 2, "tensor": 4}])
def test_sharded_forward_and_step_equal_one_device(axes, reference):
    state, losses = run(axes)
    ref_state, ref_losses = reference
    # The first loss is the sharded forward pass; the second follows a sharded gradient step, which lowers it.
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert losses[1] < losses[0]
    chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(ref_state.params), rtol=1e-4,
                                atol=1e-5)
    kernel = state.params["layers"]["self_attn"]["q_proj"]["kernel"].get_value()
    assert kernel.sharding.spec == PINNED["layers/self_attn/q_proj/kernel"]


@pytest.mark.unsharded
def test_chunked_attention_never_holds_all_scores():
    cfg = CFG.with_execution(attention_query_chunk=4)
    _, loss = make_loss(cfg)
    host = {k: jnp.asarray(v) for k, v in batch().items()}
    text = str(jax.make_jaxpr(jax.grad(lambda p: loss(p, host, None)[0]))(jax.eval_shape(init(cfg))))
    b, t, k, g = 8, 12, cfg.num_kv_heads, cfg.num_groups
    # scores are [batch, kv head, G query heads x queries, keys]
    assert f"f32[{b},{k},{g * 4},{t}]" in text
    assert f"f32[{b},{k},{g * t},{t}]" not in text


def test_bfloat16_tied_head_steps_alike_on_both_meshes():
    """bfloat16 compute with float32 weights and a tied head takes the vocabulary-major log-prob path (its
    logits [V, B, C] sharded over the vocabulary and the batch): FSDP and FSDP x tensor runs agree."""
    cfg = LlamaConfig.tiny().with_execution(dtype="bfloat16")
    fsdp_state, fsdp_losses = run({"fsdp": 8}, cfg)
    tp_state, tp_losses = run({"fsdp": 2, "tensor": 4}, cfg)
    np.testing.assert_allclose(tp_losses, fsdp_losses, rtol=1e-3)
    assert tp_losses[1] < tp_losses[0]
    chex.assert_trees_all_close(jax.device_get(tp_state.params), jax.device_get(fsdp_state.params), rtol=2e-2,
                                atol=2e-3)
