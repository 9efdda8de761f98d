"""Loading a GGUF model onto a mesh: how many tensors are dequantised and how long the load takes. Each source
tensor should be dequantised once however many devices hold a slice of it (``bfpo.model.load_hf.place_params``).

Run: ``XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m experiments.bench.gguf_load``
(default: the bundled SmolLM2-135M-Instruct on an 8-device data 2 x fsdp 4 mesh).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from pathlib import Path

import jax
import tyro

from bfpo.model.gguf_file import GGUFFile
from bfpo.model.load_gguf import load_gguf, smollm2_gguf_path
from runtime.mesh import make_mesh


@dataclasses.dataclass(frozen=True)
class Config:
    path: str = ""
    """A GGUF file (empty: the bundled SmolLM2-135M-Instruct)."""
    data: int = 2
    fsdp: int = 4
    out: str = "runs/bench/gguf_load.json"


def main(cfg: Config) -> dict[str, float]:
    path = cfg.path or str(smollm2_gguf_path())
    calls: collections.Counter[str] = collections.Counter()
    real = GGUFFile.dequantized

    def counted(self, name):
        calls[name] += 1
        return real(self, name)

    GGUFFile.dequantized = counted
    try:
        start = time.perf_counter()
        model = load_gguf(path, make_mesh({"data": cfg.data, "fsdp": cfg.fsdp}))
        jax.block_until_ready(jax.tree.leaves(model))
        seconds = time.perf_counter() - start
    finally:
        GGUFFile.dequantized = real
    out = {"tensors": len(calls), "dequantisations": sum(calls.values()), "seconds": seconds}
    print(f"{path} on data={cfg.data} x fsdp={cfg.fsdp}: {out['tensors']} tensors, {out['dequantisations']} "
          f"dequantisations, {seconds:.1f} s")
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps({"path": path, "mesh": {"data": cfg.data, "fsdp": cfg.fsdp}, **out},
                                        indent=2) + "\n")
    return out


if __name__ == "__main__":
    main(tyro.cli(Config))
