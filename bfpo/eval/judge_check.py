"""Checks an LM classifier judge against hand-labelled cases before its scores are trusted.

Each line of the cases file is {"behavior": ..., "generation": ..., "expected": "safe" | "unsafe"}. The judge is
the bundled SmolLM2-135M-Instruct (``--gguf`` for another local GGUF file); the check prints, per case, the
probabilities of answering yes and no, the logprob and greedy verdicts and the expected one, then the agreement
of each reading with the labels (unparseable verdicts count as disagreement).

    python -m bfpo.eval.judge_check [--cases FILE.jsonl] [--gguf FILE.gguf]
"""

from __future__ import annotations

import argparse
import time

from bfpo.errors import DataError
from bfpo.eval.files import field, read_jsonl
from bfpo.eval.generative import FIXTURES
from bfpo.eval.judges import SAFE, UNSAFE, run_judge
from bfpo.eval.lm_judges import AnswerReading, ClassifierJudge


def load_cases(path) -> tuple[list[str], list[str], list[str]]:
    behaviors, generations, expected = [], [], []
    for line, record in read_jsonl(path):
        behaviors.append(field(path, line, record, "behavior", str))
        generations.append(field(path, line, record, "generation", str))
        label = field(path, line, record, "expected", str)
        if label not in (SAFE, UNSAFE):
            raise DataError(f"{path}:{line}: field 'expected' is {label!r}, expected 'safe' or 'unsafe'")
        expected.append(label)
    return behaviors, generations, expected


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=str(FIXTURES / "judge_smoke.jsonl"))
    parser.add_argument("--gguf", default=None, help="a local GGUF chat model (default: the bundled SmolLM2)")
    args = parser.parse_args(argv)
    from bfpo.model.load_gguf import load_gguf, load_smollm2, tokenizer_from_gguf

    model, tok = load_smollm2() if args.gguf is None else (load_gguf(args.gguf), tokenizer_from_gguf(args.gguf))
    behaviors, generations, expected = load_cases(args.cases)
    start = time.perf_counter()
    logprob = ClassifierJudge(model=model, tokenizer=tok, reading=AnswerReading(batch_size=8))
    greedy = ClassifierJudge(model=model, tokenizer=tok, name="lm-classifier-greedy",
                             reading=AnswerReading(mode="greedy", batch_size=8, max_new_tokens=4))
    probs = logprob.probabilities(behaviors, generations)
    by_logprob = run_judge(logprob, behaviors, generations)
    by_greedy = run_judge(greedy, behaviors, generations)
    for i, (b, g) in enumerate(zip(behaviors, generations)):
        print(f"{i}: p(yes)={probs[i, 0]:.3f} p(no)={probs[i, 1]:.3f} logprob={by_logprob[i]:<11} "
              f"greedy={by_greedy[i]:<11} expected={expected[i]:<6} | {b[:40]} | {g[:50]}")
    agree = {name: sum(v == e for v, e in zip(verdicts, expected)) / len(expected)
             for name, verdicts in (("logprob", by_logprob), ("greedy", by_greedy))}
    print(f"agreement with labels: logprob {agree['logprob']:.2f}, greedy {agree['greedy']:.2f} "
          f"({len(expected)} cases, {time.perf_counter() - start:.1f} s)")
    return agree


if __name__ == "__main__":
    main()
