"""Memory tools: compiled-memory accounting, residual counting, and the ordering that makes recomputation pay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from local_learning.memory import compiled_memory, device_peak_bytes, residual_bytes, tree_bytes
from local_learning.ordering import after, ordered_checkpoint

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

B, D, LAYERS = 512, 64, 8
ACT = B * D * 4


def block(w, x):
    for _ in range(4):
        x = jnp.tanh(x @ w)
    return x


def loss(ws, x, remat):
    for w in ws:
        x = ordered_checkpoint(block)(w, x) if remat else block(w, x)
    return jnp.sum(x)


def test_ordered_checkpoint_keeps_block_inputs_only():
    ws = [jnp.full((D, D), 0.01) for _ in range(LAYERS)]
    x = jnp.ones((B, D))
    plain = residual_bytes(lambda ws, x: loss(ws, x, False), ws, x)
    remat = residual_bytes(lambda ws, x: loss(ws, x, True), ws, x)
    assert plain >= 4 * LAYERS * ACT  # four tanh outputs per block
    assert remat <= LAYERS * ACT  # the block inputs
    # Same gradients, and the compiled program really uses less temporary memory.
    g_plain = jax.jit(jax.grad(lambda ws, x: loss(ws, x, False)))
    g_remat = jax.jit(jax.grad(lambda ws, x: loss(ws, x, True)))
    np.testing.assert_allclose(g_plain(ws, x)[3], g_remat(ws, x)[3], rtol=1e-6)
    m_plain = compiled_memory(g_plain.lower(ws, x).compile())
    m_remat = compiled_memory(g_remat.lower(ws, x).compile())
    if m_plain is not None:
        assert m_remat.temp < 0.6 * m_plain.temp, (m_remat.temp / ACT, m_plain.temp / ACT)
        assert m_plain.peak == m_plain.argument + m_plain.output - m_plain.alias + m_plain.temp


def test_after_changes_no_value_and_keeps_integers():
    x = {"a": jnp.arange(3.0), "i": jnp.arange(3)}
    y = jax.jit(lambda x, d: after(x, d))(x, [jnp.ones(2), jnp.zeros((2, 2))])
    np.testing.assert_array_equal(y["a"], x["a"])
    assert y["i"].dtype == x["i"].dtype


def test_tree_bytes_and_device_peak():
    assert tree_bytes({"a": jnp.zeros((3, 4)), "b": jnp.zeros(5, jnp.int8)}) == 3 * 4 * 4 + 5
    assert device_peak_bytes() is None or device_peak_bytes() > 0



def test_materialize_survives_compilation_and_lowers_memory_of_a_residual_step():
    """The module boundary goes through a conditional that XLA keeps (an optimization barrier or a one-trip loop
    would be removed), and on a residual network the compiled step needs no more temporary memory with it; the
    values are those of ``after`` (a non-finite dependency still poisons them)."""
    import optax

    from local_learning import network
    from local_learning import train_step as ts
    from local_learning.models import ResNetConfig
    from local_learning.ordering import materialize
    from local_learning.partition import PartitionConfig
    from local_learning.step_memory import step_memory
    from runtime.mesh import make_mesh
    from runtime.train_state import init_train_state

    model = ResNetConfig(stage_blocks=(3,), widths=(8,), stem_width=8, image_size=16)
    plan = network.plan_partition(model, PartitionConfig(num_modules=2))
    netdef, _ = network.abstract_network(model, plan)
    tx = optax.sgd(0.1)
    state = init_train_state(lambda: network.build(model, plan)[1], tx, make_mesh(devices=jax.devices()[:1]),
                             seed=0, trainable=lambda p: p.startswith("params/"))[0]
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.standard_normal((64, 16, 16, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 64), jnp.int32)}
    out = {}
    for mat in (False, True):
        mem, compiled = step_memory(ts.make_local_step(netdef, ts.LocalConfig(materialize=mat), tx), state, batch)
        out[mat] = (mem, compiled.as_text().count(" conditional("))
    assert out[True][1] == netdef.num_modules - 1 and out[False][1] == 0
    if out[True][0] is not None:
        assert out[True][0].temp <= out[False][0].temp, (out[True][0].temp, out[False][0].temp)
    ok = jax.jit(lambda h, g: materialize(h, g))(jnp.arange(3.0), jnp.ones(2))
    np.testing.assert_array_equal(ok, np.arange(3.0))
    bad = jax.jit(lambda h, g: materialize(h, g))(jnp.ones(3), jnp.array([jnp.nan]))
    assert np.all(np.isnan(np.asarray(bad)))
