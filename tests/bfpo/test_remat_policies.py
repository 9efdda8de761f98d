"""Each named remat policy takes effect with every kernel family: the backward pass recomputes exactly what the
policy does not keep (FLOPs counted on the gradient's jaxpr) and the compiled step holds less than without remat.
In particular the policies see the products inside the ``xla_cpu`` kernels' hand-written backward passes."""

import contextlib

import jax
import jax.numpy as jnp
import pytest

from bfpo.logprobs import sequence_logprobs
from bfpo.model.config import LlamaConfig
from bfpo.model.execution import REMAT_MODES
from bfpo.model.kernels import tpu
from bfpo.model.llama import init_params, model_from_params
from runtime.flops import count_flops

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

TOKENS = jax.ShapeDtypeStruct((4, 64), jnp.int32)


def _grad(kernels: str, remat: str):
    cfg = LlamaConfig.tiny().with_execution(kernels=kernels, remat=remat)

    def loss(params, tokens):
        mask = jnp.ones_like(tokens, bool)
        return jnp.sum(sequence_logprobs(model_from_params(cfg, params), tokens, mask, mask)[0])

    return jax.grad(loss), jax.eval_shape(lambda: init_params(cfg))


def _flops(kernels: str, remat: str) -> float:
    grad, params = _grad(kernels, remat)
    with tpu.interpreted() if kernels == "tpu" else contextlib.nullcontext():
        return count_flops(grad, params, TOKENS).total


@pytest.mark.parametrize("kernels", ["reference", "xla_cpu", "tpu"])
def test_every_policy_recomputes_what_it_does_not_keep(kernels):
    f = {mode: _flops(kernels, mode) for mode in REMAT_MODES}
    # Keeping none recomputes the whole forward pass; keeping the linear maps' outputs recomputes attention only.
    assert f["none"] < f["dots"] < f["full"]
    # Keeping every product's output recomputes no product, except a fused kernel's (a Pallas call is no dot).
    assert f["dots_saveable"] == (f["dots"] if kernels == "tpu" else f["none"])
    # The attention's output kept: the linear maps are recomputed, and of attention's forward products (each
    # 2 B H T T E per layer) the reference recomputes Q K^T (its backward needs the probabilities again), the
    # xla_cpu kernel, which keeps the probabilities too, neither.
    cfg = LlamaConfig.tiny()
    b, t = TOKENS.shape
    product = cfg.num_layers * 2 * b * cfg.num_heads * t * t * cfg.head_dim
    assert f["none"] < f["save_attention_out"] < f["full"]
    if kernels != "tpu":  # splash's block grid pads T = 64 to one 128 block
        assert f["full"] - f["save_attention_out"] == {"reference": 1, "xla_cpu": 2}[kernels] * product


@pytest.mark.parametrize("kernels", ["reference", "xla_cpu"])
def test_remat_lowers_the_compiled_step_memory(kernels):
    temp = {}
    for mode in ("none", "save_attention_out", "full"):
        grad, params = _grad(kernels, mode)
        temp[mode] = jax.jit(grad).lower(params, TOKENS).compile().memory_analysis().temp_size_in_bytes
    assert max(temp["full"], temp["save_attention_out"]) < temp["none"], temp
