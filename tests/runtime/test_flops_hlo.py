"""FLOPs counted on jaxprs (every loop iteration) and traffic read from compiled HLO (loops per iteration), against
hand formulas and against XLA's own cost analysis of the same computation compiled unrolled for a TPU."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from runtime.accelerators import compile_only_devices
from runtime.flops import count_flops
from runtime.hlo_stats import _array_bytes, hlo_stats


def test_dot_and_conv_flops_match_the_formulas():
    a = jax.ShapeDtypeStruct((3, 5, 7), jnp.float32)
    b = jax.ShapeDtypeStruct((3, 7, 11), jnp.float32)
    assert count_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b).matmul == 2 * 3 * 5 * 7 * 11
    x = jax.ShapeDtypeStruct((2, 9, 9, 4), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 4, 6), jnp.float32)
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert count_flops(conv, x, w).conv == 2 * (2 * 9 * 9 * 6) * 4 * 9
    grouped = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=2,  # noqa: E731
                                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert count_flops(grouped, x, jax.ShapeDtypeStruct((3, 3, 2, 6), jnp.float32)).conv == 2 * (2 * 9 * 9 * 6) * 2 * 9


def layers(unroll: bool):
    def f(ws, x):
        def body(h, w):
            return jnp.tanh(h @ w), None

        if unroll:
            h = x
            for i in range(ws.shape[0]):
                h, _ = body(h, ws[i])
        else:
            h, _ = jax.lax.scan(body, x, ws)
        return jnp.sum(h.astype(jnp.float32) ** 2)

    return jax.grad(f, argnums=(0, 1))


def test_a_scan_counts_every_iteration_and_dead_code_is_not_counted():
    ws = jax.ShapeDtypeStruct((6, 32, 32), jnp.float32)
    x = jax.ShapeDtypeStruct((8, 32), jnp.float32)
    per_layer = 3 * 2 * 8 * 32 * 32  # forward product, dX and dW
    assert count_flops(layers(False), ws, x).matmul == 6 * per_layer
    assert count_flops(layers(True), ws, x).matmul == 6 * per_layer
    unused = lambda ws, x: (x @ ws[0], ws[0] @ ws[1])[0]  # noqa: E731
    assert count_flops(unused, ws, x).matmul == 2 * 8 * 32 * 32


def _until_small(w, x):
    # A loop the data stops: no static trip count.
    def body(carry):
        h, i = carry
        return jnp.tanh(h @ w), i + 1

    return jax.lax.while_loop(lambda c: (c[1] < 10) & (jnp.max(c[0]) > 1e-3), body, (x, 0))[0]


def test_a_loop_the_data_stops_is_counted_as_often_as_the_caller_bounds_it():
    w = jax.ShapeDtypeStruct((32, 32), jnp.float32)
    x = jax.ShapeDtypeStruct((8, 32), jnp.float32)
    once, bounded = count_flops(_until_small, w, x), count_flops(_until_small, w, x, unknown_trips=10)
    assert once.matmul == 2 * 8 * 32 * 32 and once.unknown_trip_loops == 1
    assert bounded.matmul == 10 * once.matmul and bounded.unknown_trip_loops == 1
    text = jax.jit(_until_small).lower(w, x).compile().as_text()
    one, ten = hlo_stats(text, 1), hlo_stats(text, 1, unknown_trips=10)
    assert one.unknown_trip_loops == 1 and ten.unknown_trip_loops == 1
    # Nine more iterations of a body that reads w and h and writes h at least.
    assert ten.bytes - one.bytes >= 9 * (32 * 32 + 2 * 8 * 32) * 4


def test_tpu_tile_padding_counts_the_stored_bytes():
    assert _array_bytes("f32[16,16]{1,0}") == 16 * 16 * 4
    assert _array_bytes("f32[16,16]{1,0:T(8,128)}") == 16 * 128 * 4
    assert _array_bytes("(s32[], bf16[3,128]{1,0:T(8,128)(2,1)})") == 4 + 8 * 128 * 2


@pytest.fixture(scope="module")
def tpu_compiles():
    """The 6-layer scan and its unrolled form, compiled for a TPU v5e-4 (data parallel over its 4 chips)."""
    mesh = Mesh(np.asarray(compile_only_devices("tpu-v5e-4")), ("x",))
    ws = jax.ShapeDtypeStruct((6, 512, 512), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
    x = jax.ShapeDtypeStruct((1024, 512), jnp.bfloat16, sharding=NamedSharding(mesh, P("x")))
    out = {}
    for unroll in (False, True):
        compiled = jax.jit(layers(unroll)).lower(ws, x).compile()
        out[unroll] = (compiled.cost_analysis(), hlo_stats(compiled.as_text(), 4), count_flops(layers(unroll), ws, x))
    return out


def test_loop_aware_flops_agree_with_xla_on_the_unrolled_program(tpu_compiles):
    xla_scanned, _, ours_scanned = tpu_compiles[False]
    xla_unrolled, _, _ = tpu_compiles[True]
    per_device = ours_scanned.total / 4
    # XLA counts elementwise work too (a few %); the scanned program's body is counted once by XLA.
    np.testing.assert_allclose(per_device, xla_unrolled["flops"], rtol=0.1)
    assert xla_scanned["flops"] < 0.5 * per_device


def test_loop_aware_bytes_agree_with_xla_on_the_unrolled_program(tpu_compiles):
    xla_scanned, scanned, _ = tpu_compiles[False]
    xla_unrolled, unrolled, _ = tpu_compiles[True]
    assert scanned.unknown_trip_loops == 0 and unrolled.unknown_trip_loops == 0
    np.testing.assert_allclose(unrolled.bytes, xla_unrolled["bytes accessed"], rtol=0.3)
    # The scanned program moves at least what the unrolled one does (carries, stacked residuals), and XLA's count
    # of it (one body) is far below.
    assert scanned.bytes > 0.9 * unrolled.bytes and xla_scanned["bytes accessed"] < scanned.bytes
    # Gradients of the replicated weights are all-reduced over the 4 chips: 2 (n - 1) / n of their bytes on the wire.
    chex.assert_trees_all_close(unrolled.collective_bytes, 6 * 512 * 512 * 2.0, rtol=0.05)
