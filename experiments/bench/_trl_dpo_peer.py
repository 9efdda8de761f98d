"""The PyTorch peer of ``experiments.bench.preference_step``: TRL's ``DPOTrainer`` on the same model and pairs.

Runs in its own process, in an environment where ``trl`` is installed (a side virtual environment: TRL is a
benchmark peer, not a dependency of this project). It reads what ``preference_step`` wrote into ``--work``:

* ``model/``: the tiny Llama in the Hugging Face layout (``bfpo.model.load_hf.save_hf``), float32;
* ``tokenizer/``: the byte-level tokenizer (``transformers`` fast-tokenizer files);
* ``pairs.json``: ``[{"prompt": str, "chosen": str, "rejected": str}, ...]`` whose byte-level token counts are
  exactly the benchmark's prompt and response lengths,

trains ``--steps`` optimizer steps of ``--batch`` pairs (TRL's reference model: a frozen copy, its default
without PEFT) and writes ``--out`` as JSON: the median step time over the steps after ``--warmup``, pairs/s,
and the process's peak resident memory. Each step includes collation, the policy and reference forwards,
backward and the AdamW update, as ours does.

Run by ``preference_step`` with ``--peer-python`` (the leading underscore keeps ``python -m experiments.bench``
from treating it as a benchmark); not imported by the project.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _host_memory import peak_rss_mib  # run by path: this directory is on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--loss", default="sigmoid", help="TRL loss_type: sigmoid (DPO) or ipo")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(f"{args.work}/pairs.json") as f:
        pairs = json.load(f)
    model = AutoModelForCausalLM.from_pretrained(f"{args.work}/model", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(f"{args.work}/tokenizer")

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimes()
    config = DPOConfig(
        output_dir=f"{args.work}/trl_out", per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=1e-5, beta=args.beta, loss_type=[args.loss], logging_steps=10**9, save_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, max_length=None, seed=0,
        gradient_checkpointing=False,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                         processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    timed = timer.times[args.warmup:]
    step = statistics.median(timed)
    result = {
        "peer": f"trl {trl.__version__} DPOTrainer (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "loss_type": args.loss, "batch": args.batch, "steps_timed": len(timed), "step_seconds": step,
        "pairs_per_second": args.batch / step,
        "peak_rss_mib": peak_rss_mib(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
