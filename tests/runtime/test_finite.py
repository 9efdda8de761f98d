"""first_nonfinite names the first leaf holding NaN or Inf, on sharded arrays too, and ignores integer leaves."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from runtime import make_mesh
from runtime.finite import first_nonfinite
from runtime.sharding import replicated


def test_names_the_first_bad_leaf_in_tree_order():
    tree = {"a": jnp.ones((4,)), "b": {"w": jnp.ones((8, 2)), "step": jnp.array(3)}, "c": jnp.ones(())}
    assert first_nonfinite(tree) is None
    assert first_nonfinite({**tree, "c": jnp.array(jnp.nan)}) == "c"
    bad = tree["b"]["w"].at[5, 1].set(-jnp.inf)
    assert first_nonfinite({**tree, "b": {"w": bad, "step": tree["b"]["step"]}, "c": jnp.array(jnp.nan)}) == "b/w"
    assert first_nonfinite({}) is None


def test_works_on_arrays_sharded_over_the_mesh():
    mesh = make_mesh({"data": 8})
    x = jax.device_put(np.ones((16, 4), np.float32), NamedSharding(mesh, PartitionSpec("data")))
    assert first_nonfinite({"x": x, "k": jax.device_put(jnp.ones(2), replicated(mesh))}) is None
    x = jax.device_put(np.where(np.arange(64).reshape(16, 4) == 61, np.nan, 1.0).astype(np.float32), x.sharding)
    assert first_nonfinite({"x": x}) == "x"
