import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from runtime import ShardingError, make_mesh
from runtime import sharding as sh


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def test_logical_to_spec_uses_the_table():
    assert sh.logical_to_spec(("batch", "seq", "act_embed")) == P(("data", "fsdp"), None, None)
    assert sh.logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert sh.logical_to_spec((None, "mlp")) == P(None, "tensor")


def test_unknown_logical_name_raises():
    with pytest.raises(ShardingError, match="unknown logical axis name 'embd'"):
        sh.logical_to_spec(("embd", "mlp"))


def test_mesh_axis_used_twice_raises():
    with pytest.raises(ShardingError, match="mesh axis 'tensor' is used twice .* 'heads' and 'mlp'"):
        sh.logical_to_spec(("heads", "mlp"))
    with pytest.raises(ShardingError, match="mesh axis 'fsdp' is used twice"):
        sh.logical_to_spec(("batch", "embed"))


def test_indivisible_dimension_raises(mesh):
    with pytest.raises(ShardingError, match=r"layer/kernel: dimension 1 \('mlp'\) has size 3, not divisible"):
        sh.logical_to_sharding(("embed", "mlp"), mesh, (4, 3), what="layer/kernel")
    with pytest.raises(ShardingError, match="rank 1 but logical axes"):
        sh.logical_to_sharding(("embed", "mlp"), mesh, (4,))


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(
            4, 6,
            kernel_init=sh.logical(nnx.initializers.lecun_normal(), "embed", "mlp"),
            bias_init=sh.logical(nnx.initializers.zeros_init(), "mlp"),
            rngs=rngs,
        )
        self.norm = nnx.LayerNorm(6, rngs=rngs)  # unannotated: replicated by design


def test_nnx_state_shardings_follow_annotations(mesh):
    abstract = nnx.state(nnx.eval_shape(lambda: Tiny(nnx.Rngs(0))), nnx.Param)
    with pytest.raises(ShardingError, match=r"dense/bias: dimension 0 \('mlp'\) has size 6"):
        sh.state_shardings(abstract, make_mesh({"tensor": 4, "data": 2}))
    shardings = sh.state_shardings(abstract, mesh)
    assert shardings["dense"]["kernel"].get_value().spec == P("fsdp", "tensor")
    assert shardings["dense"]["bias"].get_value().spec == P("tensor")
    assert shardings["norm"]["scale"].get_value().spec == P()
    params = jax.jit(lambda: nnx.state(Tiny(nnx.Rngs(0)), nnx.Param), out_shardings=shardings)()
    kernel = params["dense"]["kernel"].get_value()
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (2, 3)


def test_constrain_places_activations_only_under_activate(mesh, monkeypatch):
    x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
    assert sh._ACTIVE.get() is None
    # The test configuration is strict: outside activate, constrain raises unless unsharded() says one device.
    with pytest.raises(ShardingError, match="outside an active mesh"):
        jax.jit(lambda x: sh.constrain(x * 2, ("batch", "act_mlp")))(x)
    with sh.unsharded():
        np.testing.assert_array_equal(jax.jit(lambda x: sh.constrain(x * 3, ("batch", "act_mlp")))(x), x * 3)
    monkeypatch.delenv(sh.STRICT_ENV)  # a notebook: no mesh active is a no-op
    np.testing.assert_array_equal(jax.jit(lambda x: sh.constrain(x * 4, ("batch", "act_mlp")))(x), x * 4)
    monkeypatch.setenv(sh.STRICT_ENV, "1")
    with sh.activate(mesh):
        y = jax.jit(lambda x: sh.constrain(x * 2, ("batch", "act_mlp")))(x)
    assert y.sharding.spec == P(("data", "fsdp"), "tensor")
    np.testing.assert_array_equal(y, x * 2)
    with sh.activate(mesh), pytest.raises(ShardingError, match="activation: dimension 0"):
        jax.jit(lambda x: sh.constrain(x, ("batch", None)))(jnp.ones((6, 2)))
