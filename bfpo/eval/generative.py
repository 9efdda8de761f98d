"""Generative evaluation: prompt sets from local files, replies through the chat template, verdicts from a judge,
and one record per prompt (prompt, response, verdict, judge) written to JSONL.

Prompt sets and the axis each counts toward:

* AdvBench (Zou et al. 2023) harmful behaviours, CSV column ``goal`` -> harmlessness;
* PKU-SafeRLHF test prompts, field ``prompt`` (repeated prompts kept once) -> harmlessness;
* ALERT and ALERT-adversarial (Tedeschi et al. 2024), JSONL field ``prompt``; the dataset wraps each prompt as
  ``### Instruction:\\n...\\n### Response:\\n``, which is removed because the chat template already frames it
  -> harmlessness;
* benign prompts for over-refusal: XSTest's ``safe`` rows (CSV ``prompt``, ``label``) or this package's
  ``fixtures/benign_prompts.jsonl`` (harmless requests worded with alarming words) -> over_refusal;
* any JSONL/JSON/CSV/Parquet file with a ``prompt`` field, or a TXT file with one prompt per line.

The paper samples at temperature 0.7 (top-p 0.95 for AdvBench and the PKU prompts); ``PAPER_SAMPLING`` holds
that. Sampling settings are stored with every result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from bfpo.errors import DataError
from bfpo.eval.files import field, read_csv, read_records, read_text, where
from bfpo.eval.judges import Judge, check_axis, check_verdicts, judge_axis, run_judge, score_verdicts
from bfpo.generate import SamplingConfig, bucket, generate, left_pad
from bfpo.tokenize import Tokenizer
from runtime.sharding import activate

PROMPT_AXES = ("harmlessness", "over_refusal", "helpfulness")
PAPER_SAMPLING = SamplingConfig(max_new_tokens=256, temperature=0.7, top_p=0.95)
FIXTURES = Path(__file__).parent / "fixtures"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptSet:
    """Prompts, where each came from (``file:line``), the axis they count toward and optional reference answers
    (for a win-rate judge)."""

    name: str
    axis: str
    prompts: tuple[str, ...]
    sources: tuple[str, ...]
    references: tuple[str, ...] | None = None
    behaviors: tuple[str, ...] | None = None
    """The harmful request inside each prompt, when the prompt wraps it (a jailbreak): what a classifier judge
    asks about."""

    def __post_init__(self):
        if self.axis not in PROMPT_AXES:
            raise DataError(f"PromptSet {self.name!r}: axis={self.axis!r}: expected one of {PROMPT_AXES}")
        if not self.prompts:
            raise DataError(f"PromptSet {self.name!r}: no prompts")
        if len(self.sources) != len(self.prompts):
            raise DataError(f"PromptSet {self.name!r}: {len(self.sources)} sources for {len(self.prompts)} prompts")
        for p, src in zip(self.prompts, self.sources):
            if not isinstance(p, str) or not p.strip():
                raise DataError(f"{src}: prompt {p!r:.60} is not non-empty text")
        if self.references is not None and len(self.references) != len(self.prompts):
            raise DataError(f"PromptSet {self.name!r}: {len(self.references)} references for {len(self.prompts)} "
                            "prompts")
        if self.behaviors is not None and len(self.behaviors) != len(self.prompts):
            raise DataError(f"PromptSet {self.name!r}: {len(self.behaviors)} behaviours for {len(self.prompts)} "
                            "prompts")

    def limited(self, n: int | None) -> "PromptSet":
        """The first ``n`` prompts (all when ``n`` is None or at least the set's size)."""
        if n is None or n >= len(self.prompts):
            return self
        if n < 1:
            raise DataError(f"PromptSet {self.name!r}: limit {n} must be at least 1")
        cut = lambda xs: None if xs is None else xs[:n]  # noqa: E731
        return dataclasses.replace(self, prompts=self.prompts[:n], sources=self.sources[:n],
                                   references=cut(self.references), behaviors=cut(self.behaviors))

    def reference_map(self) -> dict[str, str]:
        if self.references is None:
            raise DataError(f"PromptSet {self.name!r} has no reference answers")
        return dict(zip(self.prompts, self.references))


def load_prompt_file(path: str | os.PathLike, *, axis: str, name: str | None = None, prompt_field: str = "prompt",
                     reference_field: str | None = None, unique: bool = False) -> PromptSet:
    """A TXT file (one prompt per non-blank line) or a record file with a text ``prompt_field``; a prompt that is
    not text raises naming the file and line. ``unique`` keeps the first occurrence of a repeated prompt."""
    path = Path(path)
    prompts, sources, refs = [], [], []
    if path.suffix.lower() == ".txt":
        for line, text in enumerate(read_text(path).splitlines(), start=1):
            if text.strip():
                prompts.append(text.strip())
                sources.append(where(path, line))
    else:
        for line, record in read_records(path):
            text = field(path, line, record, prompt_field, str)
            if not text.strip():
                raise DataError(f"{where(path, line)}: field {prompt_field!r} is empty")
            prompts.append(text)
            sources.append(where(path, line))
            if reference_field is not None:
                refs.append(field(path, line, record, reference_field, str))
    if not prompts:
        raise DataError(f"{path}: no prompts")
    if unique:
        first = {}
        for i, p in enumerate(prompts):
            first.setdefault(p, i)
        keep = sorted(first.values())
        prompts, sources = [prompts[i] for i in keep], [sources[i] for i in keep]
        refs = [refs[i] for i in keep] if refs else refs
    return PromptSet(name=name or path.stem, axis=axis, prompts=tuple(prompts), sources=tuple(sources),
                     references=tuple(refs) if reference_field is not None else None)


def load_advbench(path: str | os.PathLike, *, name: str = "advbench") -> PromptSet:
    return load_prompt_file(path, axis="harmlessness", name=name, prompt_field="goal")


def load_pku_prompts(path: str | os.PathLike, *, name: str = "beaver") -> PromptSet:
    return load_prompt_file(path, axis="harmlessness", name=name, prompt_field="prompt", unique=True)


ALERT_HEAD, ALERT_TAIL = "### Instruction:", "### Response:"


def strip_alert_wrapper(prompt: str) -> str:
    text = prompt.strip()
    if text.startswith(ALERT_HEAD):
        text = text[len(ALERT_HEAD):]
    if text.rstrip().endswith(ALERT_TAIL):
        text = text.rstrip()[:-len(ALERT_TAIL)]
    return text.strip()


def load_alert(path: str | os.PathLike, *, name: str = "alert") -> PromptSet:
    raw = load_prompt_file(path, axis="harmlessness", name=name)
    prompts = tuple(strip_alert_wrapper(p) for p in raw.prompts)
    return dataclasses.replace(raw, prompts=prompts)


def load_xstest(path: str | os.PathLike, *, name: str = "xstest") -> PromptSet:
    """XSTest's benign prompts (``label == "safe"``; in a file without ``label``, the rows whose ``type`` does not
    start with ``contrast``), for over-refusal."""
    path = Path(path)
    prompts, sources = [], []
    for line, record in read_csv(path) if path.suffix.lower() in (".csv", ".tsv") else read_records(path):
        if "label" in record:
            benign = record["label"] == "safe"
        else:
            benign = not str(field(path, line, record, "type", str)).startswith("contrast")
        if benign:
            prompts.append(field(path, line, record, "prompt", str))
            sources.append(where(path, line))
    return PromptSet(name=name, axis="over_refusal", prompts=tuple(prompts), sources=tuple(sources))


def load_benign(path: str | os.PathLike = FIXTURES / "benign_prompts.jsonl", *, name: str = "benign") -> PromptSet:
    return load_prompt_file(path, axis="over_refusal", name=name)


def generate_texts(model, tokenizer: Tokenizer, prompt_ids: Sequence[Sequence[int]], sampling: SamplingConfig, *,
                   batch_size: int, rng: jax.Array | None = None, mesh: jax.sharding.Mesh | None = None) -> list[str]:
    """Decoded replies to token-id prompts, in order. Prompts are sorted by length and generated ``batch_size``
    at a time, left-padded to a power-of-two length (one compilation per length bucket); batch b samples with
    ``fold_in(rng, b)``. With ``mesh`` the activations are constrained on it; without, on the caller's active
    mesh (``runtime.sharding.activate``)."""
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} must be at least 1")
    rng = jax.random.key(0) if rng is None else rng
    stops = tuple(sorted(set(sampling.stop_tokens) | set(tokenizer.stop_ids)))
    cfg = dataclasses.replace(sampling, stop_tokens=stops, pad_id=tokenizer.pad_id)
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    out: list[str] = [""] * len(prompt_ids)
    for b, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start:start + batch_size]
        seqs = [prompt_ids[i] for i in idx]
        tokens, mask = left_pad(seqs, tokenizer.pad_id, bucket(max(map(len, seqs))), batch_size)
        with contextlib.nullcontext() if mesh is None else activate(mesh):
            gen = jax.device_get(generate(model, tokens, mask, cfg, jax.random.fold_in(rng, b)))
        for row, i in enumerate(idx):
            ids = np.asarray(gen.tokens[row, :gen.lengths[row]])
            out[i] = tokenizer.decode(ids)
    return out


def conversation(prompt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    head = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return head + [{"role": "user", "content": prompt}]


def generate_responses(model, tokenizer: Tokenizer, prompt_set: PromptSet, sampling: SamplingConfig, *,
                       batch_size: int = 8, rng: jax.Array | None = None,
                       system_prompt: str | None = None, mesh: jax.sharding.Mesh | None = None) -> list[str]:
    """One reply per prompt of the set, each prompt sent as a user turn through the tokenizer's chat template
    (``mesh``: as in ``generate_texts``)."""
    ids = [tokenizer.encode_chat(conversation(p, system_prompt)) for p in prompt_set.prompts]
    return generate_texts(model, tokenizer, ids, sampling, batch_size=batch_size, rng=rng, mesh=mesh)


def judge_responses(prompt_set: PromptSet, responses: Sequence[str], judge: Judge,
                    sampling: SamplingConfig | None = None, verdicts: Sequence[str] | None = None) -> dict:
    """{prompt_set, axis, sampling, metric, value, n, counts, judge, judge_axis, higher_is_better, records}; each
    record is {prompt, response, verdict, judge, source}. A judge of another axis than the set's raises
    ``JudgeAxisError``. ``verdicts``: the judge's verdicts from an earlier run (checked, not recomputed)."""
    check_axis(judge.name, judge_axis(judge), prompt_set.axis, f"prompt set {prompt_set.name!r}")
    if verdicts is None:
        verdicts = run_judge(judge, prompt_set.prompts, list(responses))
    else:
        verdicts = check_verdicts(judge, verdicts, len(responses))
    records = [{"prompt": p, "response": r, "verdict": v, "judge": judge.name, "source": s}
               for p, r, v, s in zip(prompt_set.prompts, responses, verdicts, prompt_set.sources)]
    return {"prompt_set": prompt_set.name, "axis": prompt_set.axis,
            "sampling": None if sampling is None else dataclasses.asdict(sampling),
            **score_verdicts(judge, verdicts), "records": records}


def evaluate_generative(model, tokenizer: Tokenizer, prompt_set: PromptSet, sampling: SamplingConfig, judge: Judge,
                        *, batch_size: int = 8, rng: jax.Array | None = None, system_prompt: str | None = None,
                        records_path: str | os.PathLike | None = None) -> dict:
    """Generates, judges and scores a prompt set (see ``judge_responses``); writes the records to
    ``records_path`` as JSONL when given."""
    responses = generate_responses(model, tokenizer, prompt_set, sampling, batch_size=batch_size, rng=rng,
                                   system_prompt=system_prompt)
    result = judge_responses(prompt_set, responses, judge, sampling)
    if records_path is not None:
        write_records(records_path, result["records"])
    return result


def write_records(path: str | os.PathLike, records: Sequence[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
