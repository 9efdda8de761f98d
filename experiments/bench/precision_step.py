"""What float32 master weights cost per step: the BFPO preference step of a bfloat16 model with its trained weights
kept as float32 masters (cast to bfloat16 once per step, gradients accumulated in float32, float32 Adam moments)
against the same step training the bfloat16 weights in place (the rounding-away configuration, as the peer).

Both run in one process on the same weights and batch: a model stored in bfloat16 (``dtype`` and ``param_dtype``),
BFPO with the reference log-probs in the batch, AdamW + clipping, ``--trainable`` (default the paper's down_proj;
empty: every weight), ``--grad-accum`` micro-batches. Reports the median step time of each, their ratio, the
compiled step's memory, and how far each moved the trained weights in ``--steps`` updates at ``--learning-rate``
(the fraction of trained entries that changed at all). The two steps alternate, so drift of the machine hits both.

    XLA_FLAGS= python -m experiments.bench.precision_step                        # tiny Llama
    XLA_FLAGS= python -m experiments.bench.precision_step --model smollm2        # SmolLM2-135M from the GGUF
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from bfpo.labeling import LabelingConfig
from bfpo.model.config import LlamaConfig
from bfpo.model.execution import ExecutionConfig
from bfpo.model.llama import init_params
from bfpo.objectives import BFPOConfig
from bfpo.optim import OptimizerConfig, make_optimizer
from bfpo.train_params import ParamLayout, build_params, trainable_predicate
from bfpo.train_step import PreferenceConfig, make_preference_step
from runtime import make_mesh
from runtime.mesh import MeshConfig
from runtime.precision import Precision
from runtime.train_state import train_state_from_params


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    model: Literal["tiny", "smollm2"] = "tiny"
    pairs: int = 8
    prompt_length: int = 64
    response_length: int = 64
    grad_accum: int = 1
    trainable: str = "down_proj"
    learning_rate: float = 5e-7
    steps: int = 10
    """Timed steps of each configuration (twice this many, alternating)."""
    out: str = "runs/bench/precision_step.json"


BF16 = ExecutionConfig(dtype="bfloat16", param_dtype="bfloat16")


def model_params(cfg: Config) -> tuple[LlamaConfig, Any]:
    if cfg.model == "tiny":
        model_cfg = LlamaConfig.tiny(execution=BF16)
        return model_cfg, init_params(model_cfg, 0)
    from flax import nnx

    from bfpo.model.load_gguf import load_gguf, smollm2_gguf_path

    model = load_gguf(smollm2_gguf_path(), execution=BF16)
    return model.config, nnx.state(model, nnx.Param)


def batch(cfg: Config, vocab: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    b, p, r = cfg.pairs, cfg.prompt_length, cfg.response_length

    def side():
        tokens = rng.integers(1, vocab, (b, p + r), dtype=np.int32)
        score = np.zeros((b, p + r), bool)
        score[:, p:] = True
        return {"tokens": tokens, "mask": np.ones((b, p + r), bool), "score_mask": score}

    rows = {"chosen": side(), "rejected": side(), "chosen_safe": (np.arange(b) % 2).astype(np.float32),
            "rejected_safe": np.ones(b, np.float32), "pair_mask": np.ones(b, bool),
            "example_id": np.arange(b, dtype=np.int32), "reference_chosen": np.full(b, -300.0, np.float32),
            "reference_rejected": np.full(b, -300.0, np.float32)}
    if cfg.grad_accum > 1:
        rows = jax.tree.map(lambda x: x.reshape(cfg.grad_accum, -1, *x.shape[1:]), rows)
    return {"safety": rows}


class Prepared:
    """One configuration's compiled step, its state and the trained weights it started from."""

    def __init__(self, cfg: Config, model_cfg: LlamaConfig, params: Any, host_batch: dict, precision: Precision):
        mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1))
        layout = ParamLayout(reference="batch", trainable=cfg.trainable or None)
        objective = BFPOConfig(labeling=LabelingConfig(tau=0.01, b1=3.0, alpha=0.5))
        pcfg = PreferenceConfig(objective="bfpo", objective_config=objective, layout=layout)
        tx = make_optimizer(OptimizerConfig(learning_rate=cfg.learning_rate, schedule="constant"), 2 * cfg.steps + 2)
        built = build_params(layout, jax.tree.map(jnp.copy, params))
        self.precision = precision
        self.state, _ = train_state_from_params(built, tx, mesh, seed=0, trainable=trainable_predicate(layout),
                                                precision=precision)
        self.start = self.trained()
        self.step = jax.jit(make_preference_step(model_cfg, pcfg, tx, grad_accum=cfg.grad_accum), donate_argnums=0)
        self.batch = jax.device_put(host_batch)
        mem = self.step.lower(self.state, self.batch).compile().memory_analysis()
        self.mib = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                    + mem.temp_size_in_bytes) / 2**20
        self.times: list[float] = []
        self.run()  # compile and warm up
        self.times.clear()

    def trained(self) -> list[np.ndarray]:
        return [np.asarray(x, np.float32) for x, m in zip(jax.tree.leaves(self.state.params), self.state.trainable)
                if m]

    def run(self) -> None:
        t0 = time.perf_counter()
        self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready(metrics)
        self.times.append(time.perf_counter() - t0)

    def report(self) -> dict:
        end = self.trained()
        moved = sum(int(np.sum(a != b)) for a, b in zip(self.start, end)) / sum(a.size for a in self.start)
        dtypes = sorted({str(x.dtype) for x, m in zip(jax.tree.leaves(self.state.params), self.state.trainable) if m})
        return {"master": self.precision.master, "trained_dtypes": dtypes,
                "step_seconds": statistics.median(self.times), "compiled_step_mib": self.mib,
                "fraction_of_trained_entries_moved": moved, "steps": len(self.times) + 1}


def main(cfg: Config) -> dict:
    model_cfg, params = model_params(cfg)
    host_batch = batch(cfg, model_cfg.vocab_size)
    prepared = [Prepared(cfg, model_cfg, params, host_batch, Precision()),
                Prepared(cfg, model_cfg, params, host_batch, Precision(master="stored"))]
    for i in range(2 * cfg.steps):  # interleaved, alternating which goes first, so drift hits both alike
        for p in (prepared if i % 2 == 0 else prepared[::-1]):
            p.run()
    ours, peer = (p.report() for p in prepared)
    result = {"config": dataclasses.asdict(cfg), "device": str(jax.devices()[0].device_kind),
              "float32_masters": ours, "bfloat16_in_place": peer,
              "step_time_ratio": ours["step_seconds"] / peer["step_seconds"]}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in (("float32 masters", ours), ("bfloat16 in place", peer)):
        print(f"{name:18s} step {r['step_seconds'] * 1e3:8.2f} ms  compiled {r['compiled_step_mib']:8.1f} MiB  "
              f"trained entries moved in {r['steps']} steps: {r['fraction_of_trained_entries_moved']:.2%}")
    print(f"step time ratio (masters / in place): {result['step_time_ratio']:.3f}  ->  {out}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Config))
