"""The per-leaf content hash: the formula against a NumPy reference, the same on any mesh, and blind to no change
that keeps a sum of |x| (sign flips, permutations, swapped layers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec

from runtime import make_mesh
from runtime.content_hash import SEEDS, content_hashes


def _mix_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return x


def reference_hash(x: np.ndarray) -> str:
    """The module docstring's formula, entry by entry in Python integers over NumPy's bit views."""
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
    words = x.view(unsigned).astype(np.uint64)
    digits = ""
    for seed in SEEDS:
        total = 0
        for index in np.ndindex(*words.shape):
            position = np.uint64(seed)
            for i in index:
                position = _mix_np(np.asarray(position ^ np.uint64(i)))
            total += int(_mix_np(np.asarray(words[index] ^ position)))
        digits += f"{total % 2**32:08x}"
    return digits


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, np.float16])
def test_matches_the_reference_formula(dtype):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 5, 2)) * 50).astype(dtype)
    assert content_hashes([jnp.asarray(x)]) == [reference_hash(x)]
    assert content_hashes([jnp.asarray(x[0, 0, 0])]) == [reference_hash(x[0, 0, 0])]


def test_bfloat16_hashes_its_bits():
    x = jnp.linspace(-1, 1, 12, dtype=jnp.bfloat16).reshape(3, 4)
    bits = np.asarray(jax.lax.bitcast_convert_type(x, jnp.uint16))
    assert content_hashes([x]) == [reference_hash(bits)]


@pytest.mark.parametrize("axes, spec", [({"data": 8}, PartitionSpec("data")),
                                         ({"data": 8}, PartitionSpec(None, "data")),
                                         ({"data": 2, "fsdp": 4}, PartitionSpec("data", "fsdp"))])
def test_the_same_on_one_device_and_sharded(axes, spec):
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 24), jnp.float32)
    sharded = jax.device_put(x, NamedSharding(make_mesh(axes), spec))
    assert content_hashes([sharded]) == content_hashes([jax.device_put(x, jax.devices()[0])])


def _changes(w: jax.Array) -> dict[str, jax.Array]:
    """Changes a sum of |x| cannot see (each leaves every leaf's sum |x| exactly as it was)."""
    return {
        "one sign flipped": w.at[1, 2].set(-w[1, 2]),
        "the whole matrix negated": -w,
        "two entries swapped": w.at[0, 0].set(w[0, 1]).at[0, 1].set(w[0, 0]),
        "rows permuted": w[::-1],
        "transposed layout of a square block": w.at[:4, :4].set(w[:4, :4].T),
        "negative zero made zero": w.at[3, 3].set(0.0),
    }


def test_changes_that_keep_sum_abs_change_the_hash():
    w = jax.random.normal(jax.random.PRNGKey(2), (8, 8), jnp.float32)
    base = w.at[3, 3].set(-0.0)
    before = content_hashes([base])[0]
    for name, changed in _changes(base).items():
        assert float(jnp.sum(jnp.abs(changed))) == pytest.approx(float(jnp.sum(jnp.abs(base))), rel=1e-6), name
        assert content_hashes([changed])[0] != before, name


def test_two_layers_of_a_stacked_leaf_swapped():
    stacked = jax.random.normal(jax.random.PRNGKey(3), (4, 6, 5), jnp.float32)
    swapped = stacked.at[1].set(stacked[2]).at[2].set(stacked[1])
    assert content_hashes([stacked]) != content_hashes([swapped])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 10_000), st.integers(0, 31))
def test_any_single_bit_flip_changes_the_hash(size, where, bit):
    x = np.random.default_rng(size).normal(size=size).astype(np.float32)
    words = x.view(np.uint32).copy()
    words[where % size] ^= np.uint32(1 << bit)
    assert content_hashes([jnp.asarray(x)]) != content_hashes([jnp.asarray(words.view(np.float32))])
