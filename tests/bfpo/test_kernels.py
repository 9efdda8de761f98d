"""Every kernel family against the reference kernels (``bfpo.model.kernels.reference``): the linear map, the
grouped-query attention under left and right padding, a sliding window and rows that see no key, and the head's
chunked log-probs, in value and gradient, float32 and bfloat16. The TPU kernel runs in the Pallas interpreter;
the GPU kernel's padding logic runs through XLA's attention here, and its cuDNN call is checked in the program
compiled for an H100."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bfpo.errors import ModelError
from bfpo.model import kernels
from bfpo.model.execution import ExecutionConfig
from bfpo.model.kernels import AttentionMask, gpu, reference, tpu, xla_cpu

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

RNG = np.random.default_rng(0)
F32, BF16 = jnp.float32, jnp.bfloat16


def _valid(t: int) -> np.ndarray:
    """Rows: no padding; left padding; right padding; both; all padding but one token; no real token at all."""
    v = np.ones((6, t), bool)
    v[1, :5] = False
    v[2, t - 4:] = False
    v[3, :3] = False
    v[3, t - 6:] = False
    v[4, :t - 1] = False
    v[5] = False
    return v


def _qkv(t: int, h: int, kv: int, e: int, dtype):
    b = 6
    q = jnp.asarray(RNG.normal(size=(b, t, h, e)), dtype)
    k = jnp.asarray(RNG.normal(size=(b, t, kv, e)), dtype)
    v = jnp.asarray(RNG.normal(size=(b, t, kv, e)), dtype)
    g = jnp.asarray(RNG.normal(size=(b, t, h, e)), F32)
    return q, k, v, g


def _compare(attend, cfg, dtype, window=None, t=24, h=4, kv=2, e=16):
    """Value at the real tokens' queries, and gradients with the upstream gradient zero at the padding queries
    (in the model their outputs are padding, which no real token reads and no loss weighs); every output and
    gradient finite, the rows that see no key (left padding, an empty row) included."""
    q, k, v, g = _qkv(t, h, kv, e, dtype)
    mask = AttentionMask.full_sequence(jnp.asarray(_valid(t)), window)
    assert not bool(jnp.all(jnp.any(mask.allowed(), axis=-1)))  # some query sees nothing
    seen = mask.valid[:, :, None, None]
    g = jnp.where(seen, g, 0.0)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask, cfg).astype(F32) * g)

    out, ref = attend(q, k, v, mask, cfg), reference.attention(q, k, v, mask, cfg)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert bool(jnp.all(jnp.isfinite(out.astype(F32))))
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == BF16 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.where(seen, out.astype(F32), 0), np.where(seen, ref.astype(F32), 0), **tol)
    grads = jax.grad(loss(attend), (0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(reference.attention), (0, 1, 2))(q, k, v)
    for a, b in zip(grads, ref_grads):
        assert bool(jnp.all(jnp.isfinite(a.astype(F32))))
        np.testing.assert_allclose(a.astype(F32), b.astype(F32), **tol)


CFG = ExecutionConfig()


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("window", [None, 7], ids=["causal", "window7"])
@pytest.mark.parametrize("family", ["xla_cpu", "xla_cpu_chunks_blocks", "gpu_padding", "tpu_splash"])
def test_attention_equals_the_reference(family, window, dtype):
    cfg = CFG
    if family == "xla_cpu":
        attend = xla_cpu.attention
    elif family == "xla_cpu_chunks_blocks":
        attend, cfg = xla_cpu.attention, ExecutionConfig(attention_query_chunk=8, causal_blocks=4)
    elif family == "gpu_padding":
        # The rotation to cuDNN's sequence lengths, run through XLA's attention with the same arguments.
        attend = lambda q, k, v, m, c: gpu.attention(q, k, v, m, c, implementation="xla")  # noqa: E731
    else:
        def attend(q, k, v, m, c):
            with tpu.interpreted():
                return tpu.attention(q, k, v, m, c)
    _compare(attend, cfg, dtype, window)


def test_the_gpu_kernel_refuses_a_row_with_a_hole_by_poisoning_it():
    q, k, v, _ = _qkv(12, 2, 1, 8, F32)
    valid = np.ones((6, 12), bool)
    valid[2, 5:7] = False  # real tokens on both sides of a gap
    out = gpu.attention(q, k, v, AttentionMask.full_sequence(jnp.asarray(valid)), CFG, implementation="xla")
    rows_nan = np.asarray(jnp.any(jnp.isnan(out), axis=(1, 2, 3)))
    assert rows_nan.tolist() == [False, False, True, False, False, False]


def test_decoding_attention_is_the_reference_on_every_family():
    q, k, v, _ = _qkv(12, 4, 2, 8, F32)
    q = q[:, -1:]
    valid = jnp.asarray(_valid(12))
    mask = AttentionMask(q_slots=jnp.asarray([11], jnp.int32), k_slots=jnp.arange(12, dtype=jnp.int32), valid=valid)
    ref = reference.attention(q, k, v, mask, CFG)
    for fn in (gpu.attention, tpu.attention, xla_cpu.attention):
        np.testing.assert_allclose(fn(q, k, v, mask, CFG), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_dense_equals_the_reference(dtype):
    x = jnp.asarray(RNG.normal(size=(2, 3, 4, 5)), F32)
    w = jnp.asarray(RNG.normal(size=(4, 5, 6)), F32)
    g = jnp.asarray(RNG.normal(size=(2, 3, 6)), F32)
    ref = jax.value_and_grad(lambda x, w: jnp.sum(reference.dense(x, w, 2, dtype).astype(F32) * g), (0, 1))(x, w)
    np.testing.assert_allclose(ref[0], jnp.sum(jnp.einsum("bthe,hed->btd", x, w, precision="highest") * g),
                               rtol=2e-2 if dtype == BF16 else 1e-5)
    tol = dict(rtol=2e-2, atol=5e-2) if dtype == BF16 else dict(rtol=1e-5, atol=1e-5)
    for fn in (xla_cpu.dense, gpu.dense, tpu.dense):
        ours = jax.value_and_grad(lambda x, w: jnp.sum(fn(x, w, 2, dtype).astype(F32) * g), (0, 1))(x, w)
        chex.assert_trees_all_close(ours, ref, **tol)


@pytest.mark.parametrize("vocab_major", [False, True], ids=["DxV", "VxD"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_logprob_sums_equal_the_reference(vocab_major, dtype):
    b, t, d, v = 3, 10, 8, 17
    h = jnp.asarray(RNG.normal(size=(b, t, d)), dtype)
    w = jnp.asarray(RNG.normal(size=(v, d) if vocab_major else (d, v)), F32)
    targets = jnp.asarray(RNG.integers(0, v, (b, t)), jnp.int32)
    weights = jnp.asarray(RNG.integers(0, 2, (b, t)), F32)
    gb = jnp.asarray([0.5, -1.0, 2.0], F32)

    def run(fn):
        return jax.value_and_grad(lambda h, w: jnp.sum(gb * fn(h, w, targets, weights, 4, vocab_major)), (0, 1))(h, w)

    ref = run(reference.logprob_sums)
    logp = jax.nn.log_softmax(jnp.einsum("btd,vd->btv" if vocab_major else "btd,dv->btv", h.astype(F32),
                                         w.astype(dtype).astype(F32)), axis=-1)
    direct = jnp.sum(gb * jnp.sum(jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights, -1))
    np.testing.assert_allclose(ref[0], direct, rtol=2e-2 if dtype == BF16 else 1e-5)
    tol = dict(rtol=2e-2, atol=5e-2) if dtype == BF16 else dict(rtol=1e-5, atol=1e-5)
    for fn in (xla_cpu.logprob_sums, gpu.logprob_sums, tpu.logprob_sums):
        chex.assert_trees_all_close(run(fn), ref, **tol)


def test_auto_picks_by_the_platform_the_program_is_compiled_for():
    from runtime import sharding as sharding_lib
    from runtime.accelerators import compile_only_devices
    from runtime.mesh import make_mesh

    assert kernels.resolve("auto") == "xla_cpu"
    assert kernels.resolve("reference") == "reference"
    with pytest.raises(ModelError, match="the gpu kernels need a GPU backend, but this program runs on cpu"):
        kernels.resolve("gpu")
    with pytest.raises(ModelError, match="expected one of"):
        kernels.resolve("flash")
    with tpu.interpreted():
        assert kernels.resolve("tpu") == "tpu"
    for target, expected in (("tpu-v5e-4", "tpu"), ("h100x8", "gpu")):
        mesh = make_mesh({"fsdp": -1}, compile_only_devices(target), whole_topology=True)
        with sharding_lib.activate(mesh):
            assert kernels.resolve("auto") == expected


def test_a_pallas_kernel_is_counted_once_per_grid_step():
    """Splash attention's forward pass runs one [block, block] tile per grid step; counted over its grid it does
    the dense attention's products (the planner's FLOPs of a TPU step)."""
    from runtime.flops import count_flops

    q = jax.ShapeDtypeStruct((2, 256, 4, 64), F32)
    k = jax.ShapeDtypeStruct((2, 256, 2, 64), F32)
    mask = AttentionMask.full_sequence(jnp.ones((2, 256), bool))

    def splash(q, k, v):
        with tpu.interpreted():
            return tpu.attention(q, k, v, mask, ExecutionConfig(attention_block=128))

    dense_flops = 2 * 2 * (2 * 4 * 256 * 256 * 64)  # QK^T and PV, 2 FLOPs per multiply-add
    assert count_flops(splash, q, k, k).matmul == dense_flops
    assert count_flops(lambda q, k, v: reference.attention(q, k, v, mask, CFG), q, k, k).matmul == dense_flops


def test_auto_compiles_cudnn_attention_for_an_h100_and_splash_for_a_tpu():
    """The attention of a full-sequence pass, compiled for compile-only devices: the H100 program calls cuDNN's
    fused attention, the TPU program the Pallas kernel, and neither holds a [T, S] score array."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from runtime import sharding as sharding_lib
    from runtime.accelerators import compile_only_devices
    from runtime.mesh import make_mesh

    b, t, h, kv, e = 8, 1024, 8, 2, 128
    for target, call in (("h100x8", "__cudnn$fmha"), ("tpu-v5e-4", "tpu_custom_call")):
        mesh = make_mesh({"fsdp": -1}, compile_only_devices(target), whole_topology=True)
        rows = NamedSharding(mesh, P("fsdp"))
        q = jax.ShapeDtypeStruct((b, t, h, e), BF16, sharding=rows)
        k = jax.ShapeDtypeStruct((b, t, kv, e), BF16, sharding=rows)
        valid = jax.ShapeDtypeStruct((b, t), jnp.bool_, sharding=rows)
        cfg = ExecutionConfig()

        def loss(q, k, v, valid):
            mask = AttentionMask.full_sequence(valid)
            return jnp.sum(kernels.select("auto").attention(q, k, v, mask, cfg).astype(F32))

        with sharding_lib.activate(mesh):
            text = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, k, valid).compile().as_text()
        assert call in text, target
        assert f"f32[{b // mesh.size},{kv},{h // kv * t},{t}]" not in text and f",{t},{t}]" not in text, target


def test_cudnn_attention_is_counted_as_the_dense_products_it_runs():
    from jax.sharding import NamedSharding, PartitionSpec as P

    from runtime import sharding as sharding_lib
    from runtime.accelerators import compile_only_devices
    from runtime.flops import count_flops
    from runtime.mesh import make_mesh

    mesh = make_mesh({"fsdp": -1}, compile_only_devices("h100x8"), whole_topology=True)
    rows = NamedSharding(mesh, P("fsdp"))
    b, t, h, kv, e = 8, 256, 8, 2, 64
    q = jax.ShapeDtypeStruct((b, t, h, e), BF16, sharding=rows)
    k = jax.ShapeDtypeStruct((b, t, kv, e), BF16, sharding=rows)
    valid = jax.ShapeDtypeStruct((b, t), jnp.bool_, sharding=rows)

    def loss(q, k, v, valid):
        out = gpu.attention(q, k, v, AttentionMask.full_sequence(valid), CFG)
        return jnp.sum(out.astype(F32))

    product = 2 * b * h * t * t * e
    with sharding_lib.activate(mesh):
        assert count_flops(loss, q, k, k, valid).matmul == 2 * product
        assert count_flops(jax.grad(loss, (0, 1, 2)), q, k, k, valid).matmul == (2 + 5) * product
