"""What one attention call needs per device with each kernel family, compiled for a TPU v5p-8 and 8 H100s that
are not attached: forward + backward of Mistral-7B's attention (32 query heads, 8 key/value heads, head dim 128,
bfloat16, causal, padding mask), one sequence per device sharded on fsdp, at T = 1024 and 4096. Compared: the
``xla_cpu`` kernel (whole [G T, S] score arrays), the same with 512-query chunks, and ``auto`` (Pallas splash
attention on the TPU, cuDNN flash attention on the H100). Temp memory is the compiler's figure (a projection of
the program's buffers, not a measurement on the hardware).

Run: ``JAX_PLATFORMS=cpu python -m experiments.bench.attention_memory``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from bfpo.model import kernels
from bfpo.model.config import LlamaConfig
from bfpo.model.kernels import AttentionMask
from runtime import sharding as sharding_lib
from runtime.accelerators import compile_only_devices
from runtime.mesh import make_mesh

VARIANTS = {"xla_cpu": {"kernels": "xla_cpu"},
            "xla_cpu, 512-query chunks": {"kernels": "xla_cpu", "attention_query_chunk": 512},
            "auto": {"kernels": "auto"}}


@dataclasses.dataclass(frozen=True)
class Config:
    targets: tuple[str, ...] = ("tpu-v5p-8", "h100x8")
    lengths: tuple[int, ...] = (1024, 4096)
    out: str = "runs/bench/attention_memory.json"


def temp_bytes(target: str, length: int, overrides: dict) -> int:
    mesh = make_mesh({"fsdp": -1}, compile_only_devices(target), whole_topology=True)
    cfg = LlamaConfig.mistral_7b().with_execution(dtype="bfloat16", param_dtype="bfloat16", **overrides)
    rows = NamedSharding(mesh, P("fsdp"))
    b, h, kv, e = mesh.size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = jax.ShapeDtypeStruct((b, length, h, e), jnp.bfloat16, sharding=rows)
    k = jax.ShapeDtypeStruct((b, length, kv, e), jnp.bfloat16, sharding=rows)
    valid = jax.ShapeDtypeStruct((b, length), jnp.bool_, sharding=rows)

    def loss(q, k, v, valid):
        out = kernels.select(cfg.execution.kernels).attention(q, k, v, AttentionMask.full_sequence(valid),
                                                              cfg.execution)
        return jnp.sum(out.astype(jnp.float32))

    with sharding_lib.activate(mesh):
        compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, k, valid).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def main(cfg: Config) -> dict:
    results = {}
    for target in cfg.targets:
        for length in cfg.lengths:
            for name, overrides in VARIANTS.items():
                mib = temp_bytes(target, length, overrides) / 2 ** 20
                results[f"{target} T={length} {name}"] = mib
                print(f"{target} T={length} {name}: temp {mib:,.0f} MiB per device", flush=True)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Config))
