"""Memory figures from the TPU compiler: by default libtpu moves buffers that fit into the chip's on-chip memory
(memory space S(1) in the compiled HLO) and ``memory_analysis`` counts HBM alone; with
``all_buffers_in_hbm`` every buffer stays in HBM and the temp is the program's whole live set."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from runtime.accelerators import all_buffers_in_hbm, compile_only_devices, get_target


def _mlp_gradient(options):
    mesh = Mesh(np.asarray(compile_only_devices("tpu-v5e-4")[:1]), ("x",))
    one = NamedSharding(mesh, P())
    w = jax.ShapeDtypeStruct((1024, 1024), jnp.float32, sharding=one)
    x = jax.ShapeDtypeStruct((512, 1024), jnp.float32, sharding=one)

    def loss(w, x):
        h = x
        for _ in range(4):
            h = jnp.tanh(h @ w)
        return jnp.sum(h ** 2)

    return jax.jit(jax.grad(loss)).lower(w, x).compile(compiler_options=options)


def test_every_buffer_in_hbm_counts_the_whole_live_set():
    on_chip = _mlp_gradient(None)
    in_hbm = _mlp_gradient(all_buffers_in_hbm(get_target("tpu-v5e-4")))
    assert "S(1)" in on_chip.as_text() and "S(1)" not in in_hbm.as_text()
    # Four 2 MiB activations are saved for the backward pass; on chip they leave no HBM temp at all.
    assert on_chip.memory_analysis().temp_size_in_bytes == 0
    assert in_hbm.memory_analysis().temp_size_in_bytes >= 4 * 512 * 1024 * 4


def test_gpus_need_no_option():
    assert all_buffers_in_hbm(get_target("h100x1")) == {}
