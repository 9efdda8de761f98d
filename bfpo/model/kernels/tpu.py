"""TPU kernels: Pallas splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``) for full-sequence
passes, run per shard under ``jax.shard_map`` with the batch and heads split as the logical-axis table says; the
linear maps and the log-probs are the reference formulas, which XLA:TPU fuses onto the MXU.

Splash attention takes the mask as a static causal (or local, for a sliding window) block pattern and padding as
segment ids: each token's id is 1 when it is real and 0 when it is padding, and a query sees only keys of its
own id. A real query therefore sees exactly the real keys the definition allows; a padding query sees earlier
padding (never a row with nothing to see, which splash requires) and its output is padding downstream. The key
and value blocks are ``ExecutionConfig.attention_block`` long (default 512); the sequence is padded to a multiple of
the block with padding tokens. Each key/value head's G query heads run as one multi-query kernel, so keys and
values are never repeated. KV-cache decoding uses the reference kernel. Under ``interpreted()`` the kernel runs
in the Pallas interpreter, on any backend (the tests run it on the CPU).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from bfpo.errors import ModelError
from bfpo.model.kernels import reference
from bfpo.model.kernels.mask import AttentionMask
from runtime import sharding as sharding_lib

dense = reference.dense
logprob_sums = reference.logprob_sums

_INTERPRET: contextvars.ContextVar[bool] = contextvars.ContextVar("pallas_interpret", default=False)


@contextlib.contextmanager
def interpreted() -> Iterator[None]:
    """Within this context the TPU kernels run in the Pallas interpreter (and may be chosen on any backend)."""
    token = _INTERPRET.set(True)
    try:
        yield
    finally:
        _INTERPRET.reset(token)


def interpreting() -> bool:
    return _INTERPRET.get()


@functools.lru_cache(maxsize=64)
def _kernel(length: int, groups: int, block: int, window: int | None, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    shape = (length, length)
    one = masks.CausalMask(shape) if window is None else masks.LocalMask(shape, (window - 1, 0), offset=0)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    # The block tables are built from NumPy once per shape; made as concrete arrays, not as values of whichever
    # trace first asked, so the cached kernel serves every later trace.
    with jax.ensure_compile_time_eval():
        # Its residuals (output and log-sum-exp) carry the name the "save_attention_out" remat policy keeps.
        return splash.make_splash_mqa(masks.MultiHeadMask([one] * groups), block_sizes=sizes, head_shards=1,
                                      q_seq_shards=1, interpret=interpret, residual_checkpoint_name="attention_out")


def _local(q_BxTxHxE, k_BxTxKxE, v_BxTxKxE, segments_BxT, *, block: int, window: int | None, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    b, t, h, e = q_BxTxHxE.shape
    kv = k_BxTxKxE.shape[2]
    g = h // kv
    block = min(block, -(-t // 128) * 128)
    pad = -t % block
    if pad:
        widen = lambda a: jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))  # noqa: E731
        q_BxTxHxE, k_BxTxKxE, v_BxTxKxE, segments_BxT = map(widen, (q_BxTxHxE, k_BxTxKxE, v_BxTxKxE, segments_BxT))
    length = t + pad
    # Splash does not scale the queries.
    q = (q_BxTxHxE.astype(jnp.float32) * e ** -0.5).astype(q_BxTxHxE.dtype)
    q = q.reshape(b, length, kv, g, e).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, E]
    k = k_BxTxKxE.transpose(0, 2, 1, 3)  # [B, K, T, E]
    v = v_BxTxKxE.transpose(0, 2, 1, 3)
    kernel = _kernel(length, g, block, window, interpret)
    per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
    out = jax.vmap(per_head, in_axes=(0, 0, 0, 0))(q, k, v, SegmentIds(q=segments_BxT, kv=segments_BxT))
    return out.transpose(0, 3, 1, 2, 4).reshape(b, length, h, e)[:, :t]


def attention(q_BxTxHxE: jax.Array, k_BxSxKxE: jax.Array, v_BxSxKxE: jax.Array, mask: AttentionMask,
              execution) -> jax.Array:
    if not mask.self_attention:
        return reference.attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, mask, execution)
    segments = mask.valid.astype(jnp.int32)
    fn = functools.partial(_local, block=execution.attention_block, window=mask.window, interpret=interpreting())
    mesh = sharding_lib.active_mesh()
    if mesh is None:
        return fn(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, segments)
    q_spec = sharding_lib.active_spec(("batch", "seq", "act_heads", None))
    kv_spec = sharding_lib.active_spec(("batch", "seq", "act_kv_heads", None))
    if q_spec[1] is not None:
        raise ModelError("kernels='tpu': splash attention needs whole sequences per device, but the logical axis "
                         f"'seq' is split over mesh axes {q_spec[1]}")
    seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec,
                         check_vma=False)(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, segments)
