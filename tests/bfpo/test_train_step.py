"""The preference step: its loss equals a NumPy BFPO computation from full logits; accumulating 2 micro-batches on
a (data 2, fsdp 2, tensor 2) mesh equals one full batch on one device; frozen and reference leaves never move;
no retrace; the optimizer schedule; configuration and KTO errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bfpo import BFPOError
from bfpo.errors import DataError
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import init_params, model_from_params
from bfpo.optim import OptimizerConfig, learning_rate_schedule, make_optimizer
from bfpo.tokenize import pack_prompt_response
from bfpo.train_params import ParamLayout, trainable_predicate
from bfpo.train_step import PreferenceConfig, StreamSpec, make_preference_loss, make_preference_step
from runtime import make_mesh
from runtime import sharding as sh
from runtime.batches import batch_axes, batch_shardings, put_batch, split_microbatches
from runtime.train_state import init_train_state, leaf_paths

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

CFG = LlamaConfig.tiny()
LAYOUT = ParamLayout(reference="frozen", trainable="down_proj")
PREF = PreferenceConfig(objective="bfpo", streams=(StreamSpec(name="safety"), StreamSpec(name="buffer", weight=0.5)),
                        layout=LAYOUT)
TX = make_optimizer(OptimizerConfig(learning_rate=1e-3, schedule="constant"), total_steps=10)


def preference_stream(seed: int, pairs: int = 8, prompt_len: int = 6, response_len: int = 5, padded: int = 0,
                      safe_labels: bool = True) -> dict:
    """A stream batch in the bfpo.data contract from random byte tokens; the last ``padded`` rows are padding."""
    rng = np.random.default_rng(seed)
    draw = lambda low, high: [list(rng.integers(0, 256, rng.integers(low, high + 1))) for _ in range(pairs)]  # noqa
    prompts, chosen, rejected = draw(2, prompt_len), draw(1, response_len), draw(1, response_len)
    ids = np.arange(pairs, dtype=np.int32)
    ids[pairs - padded:] = -1
    labels = (lambda: rng.integers(0, 2, pairs).astype(np.float32)) if safe_labels else (lambda: np.ones(pairs,
                                                                                                     np.float32))
    return {"chosen": pack_prompt_response(prompts, chosen, 0, prompt_len, response_len),
            "rejected": pack_prompt_response(prompts, rejected, 0, prompt_len, response_len),
            "chosen_safe": labels(), "rejected_safe": labels(), "pair_mask": ids >= 0, "example_id": ids}


@jax.jit
def full_logits(params, tokens, mask):
    return model_from_params(CFG, params)(tokens, mask)


def numpy_logprobs(params, side) -> np.ndarray:
    """Summed response log-probs from the full [B, T, V] logits (not the chunked path the step uses)."""
    logits = np.asarray(full_logits(params, side["tokens"], side["mask"]), np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp[:, :-1], side["tokens"][:, 1:, None].astype(np.int64), -1)[..., 0]
    return (picked * (side["score_mask"] & side["mask"])[:, 1:]).sum(-1)


def numpy_bfpo(policy, reference, stream, tau=0.01, b1=3.0, alpha=0.5) -> float:
    """Mean over real pairs of (h - g / tau)^2, g = (b1 s_w - s_l) / (b1 - 1) - alpha."""
    h = (numpy_logprobs(policy, stream["chosen"]) - numpy_logprobs(reference, stream["chosen"])) \
        - (numpy_logprobs(policy, stream["rejected"]) - numpy_logprobs(reference, stream["rejected"]))
    g = (b1 * stream["chosen_safe"] - stream["rejected_safe"]) / (b1 - 1) - alpha
    per_pair = (h - g / tau) ** 2
    return float(per_pair[stream["pair_mask"]].mean())


def init_fn():
    # A policy that differs from its frozen reference, so the reference forward matters.
    return {"policy": init_params(CFG, seed=1), "reference": init_params(CFG, seed=0)}


BATCHES = [{"safety": preference_stream(10 + i, padded=2), "buffer": preference_stream(20 + i, safe_labels=False)}
           for i in range(2)]


def run(mesh, grad_accum):
    state, shardings = init_train_state(init_fn, TX, mesh, seed=0, trainable=trainable_predicate(LAYOUT))
    hosts = [split_microbatches(b, grad_accum) for b in BATCHES]
    bsh = batch_shardings(hosts[0], batch_axes(hosts[0], grad_accum), mesh)
    chex.clear_trace_counter()
    step = chex.assert_max_traces(make_preference_step(CFG, PREF, TX, grad_accum=grad_accum), n=1)
    step = jax.jit(step, in_shardings=(shardings, bsh), out_shardings=(shardings, sh.replicated(mesh)),
                   donate_argnums=0)
    initial = jax.device_get(state.params)
    metrics = []
    with sh.activate(mesh):
        for host in hosts:
            state, m = step(state, put_batch(host, bsh))
            metrics.append(jax.device_get(m))
    return initial, jax.device_get(state), metrics


@pytest.fixture(scope="module")
def single():
    return run(make_mesh({"data": 1}, devices=jax.devices()[:1]), grad_accum=1)


@pytest.fixture(scope="module")
def sharded():
    return run(make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), grad_accum=2)


def test_loss_and_stream_metrics_equal_numpy_bfpo(single):
    initial, _, metrics = single
    m = metrics[0]
    safety = numpy_bfpo(initial["policy"], initial["reference"], BATCHES[0]["safety"])
    buffer = numpy_bfpo(initial["policy"], initial["reference"], BATCHES[0]["buffer"])
    np.testing.assert_allclose(m["safety/loss"].total / m["safety/loss"].count, safety, rtol=2e-4)
    np.testing.assert_allclose(m["buffer/loss"].total / m["buffer/loss"].count, buffer, rtol=2e-4)
    np.testing.assert_allclose(m["loss"].total / m["loss"].count, safety + 0.5 * buffer, rtol=2e-4)
    assert float(m["loss"].count) == 6 == float(m["safety/loss"].count)  # real pairs of the main stream
    assert {"safety/safety/accuracy", "safety/rewards/margin", "buffer/logps/chosen", "grad_norm"} <= set(m)


def test_accumulated_sharded_step_equals_full_batch_on_one_device(single, sharded):
    _, ref_state, ref_metrics = single
    _, state, metrics = sharded
    chex.assert_trees_all_close(state.params, ref_state.params, rtol=2e-5, atol=2e-6)
    chex.assert_trees_all_close(state.opt_state, ref_state.opt_state, rtol=2e-4, atol=1e-8)  # moments ~1e-3; summation order differs
    for m, r in zip(metrics, ref_metrics):
        for key in ("loss", "safety/loss", "buffer/loss", "safety/safety/accuracy", "buffer/rewards/margin"):
            np.testing.assert_allclose(m[key].total / m[key].count, r[key].total / r[key].count, rtol=1e-4,
                                       err_msg=key)
    assert int(state.step) == 2


def test_only_policy_down_proj_moves(single):
    initial, state, _ = single
    before = dict(zip(leaf_paths(initial), jax.tree.leaves(initial)))
    after = dict(zip(leaf_paths(state.params), jax.tree.leaves(state.params)))
    for path, value in after.items():
        moved = not np.array_equal(value, before[path])
        assert moved == (path == "policy/layers/mlp/down_proj/kernel"), path
    assert state.num_trainable == CFG.num_layers * CFG.intermediate_size * CFG.hidden_size


def test_schedule_is_linear_warmup_then_cosine_to_zero():
    lr = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, warmup_ratio=0.1), total_steps=100)
    np.testing.assert_allclose([float(lr(t)) for t in (0, 5, 10, 55, 100)],
                               [0.0, 0.5, 1.0, 0.5 * (1 + np.cos(np.pi * 45 / 90)), 0.0], atol=1e-6)
    # Clipping comes before AdamW: a huge gradient moves the parameter by about lr, not more.
    tx = make_optimizer(OptimizerConfig(learning_rate=0.1, schedule="constant", clip_norm=1.0), 10)
    params = {"w": jnp.zeros(3)}
    updates, _ = tx.update({"w": jnp.array([1e6, 0.0, 0.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1, 0.0, 0.0], rtol=1e-4)


def test_kto_without_mismatched_side_and_missing_reference_raise():
    params = jax.eval_shape(init_fn)
    batch = jax.tree.map(jnp.asarray, {"safety": BATCHES[0]["safety"]})
    kto = PreferenceConfig(objective="kto", layout=LAYOUT)
    with pytest.raises(BFPOError, match="mismatched"):
        jax.eval_shape(make_preference_loss(CFG, kto), params, batch, None)
    cached = PreferenceConfig(layout=ParamLayout(reference="batch"))
    with pytest.raises(DataError, match=r"lacks \['reference_chosen', 'reference_rejected'\]"):
        jax.eval_shape(make_preference_loss(CFG, cached), {"policy": params["policy"]}, batch, None)


def test_config_errors_name_the_field():
    from bfpo.objectives import DPOConfig

    with pytest.raises(BFPOError, match="objective 'bfpo' takes a BFPOConfig, got DPOConfig"):
        PreferenceConfig(objective="bfpo", objective_config=DPOConfig())
    with pytest.raises(BFPOError, match="stream names must differ"):
        PreferenceConfig(streams=(StreamSpec(name="a"), StreamSpec(name="a")))
    with pytest.raises(BFPOError, match="reference='base'"):
        ParamLayout(reference="base")
    with pytest.raises(BFPOError, match="layout.reference='none'"):
        PreferenceConfig(objective="dpo", layout=ParamLayout(reference="none"))
    with pytest.raises(BFPOError, match="OptimizerConfig.warmup_ratio"):
        OptimizerConfig(warmup_ratio=1.5)
