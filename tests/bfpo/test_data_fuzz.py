"""Every data schema under a hypothesis fuzzer: preference files (PKU-SafeRLHF, red-teaming, chosen/rejected) and
evaluation files (multiple-choice tasks, prompt sets, the published datasets) with fields dropped, replaced by any
JSON value, nested values broken, and undecodable lines mixed in. Each load either gives exactly what the records
say (checked against the schemas' rules, written out here independently) or raises the package's DataError naming
the file; skip mode keeps every good record and counts every bad one."""

import csv
import io
import json
import numbers
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bfpo.data import load_pairs
from bfpo.errors import BFPOError, DataError
from bfpo.eval import generative as gen
from bfpo.eval.generative import FIXTURES as EVAL_FIXTURES
from bfpo.eval.published import load_published
from bfpo.eval.tasks import load_task

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
    | st.sampled_from(["", "   ", "0", "1", "true", "\x00", "\ud7ff\u202e"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
JUNK_LINES = st.sampled_from([b'{"prompt": ', b"\xff\xfe\x00", b"[1, 2]", b"null", b'"text"', b"{}",
                              b'{"prompt": "a", "prompt": "b"}', b"NaN", b'{"a": 1}}'])
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def mutate(value, data, depth: int = 0):
    """``value`` with one node replaced by any JSON value or removed from its container."""
    children = list(value) if isinstance(value, dict) else list(range(len(value))) if isinstance(value, list) else []
    if not children or depth > 2 or data.draw(st.booleans(), label="here"):
        return data.draw(JSON_VALUES, label="value")
    key = data.draw(st.sampled_from(children), label="key")
    out = dict(value) if isinstance(value, dict) else list(value)
    if data.draw(st.integers(0, 3), label="how") == 0:
        del out[key]
    else:
        out[key] = mutate(value[key], data, depth + 1)
    return out


# ---- preference schemas: the rules of bfpo.data.schemas, written out again as the oracle ----

def _text(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _flag(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, numbers.Integral) and v in (0, 1):
        return bool(v)
    raise ValueError


def _id(v, ids):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v not in ids:
        raise ValueError
    return ids.index(v)


def two_response_oracle(fields):
    prompt, r0, r1, s0, s1, better, ids, extra = fields

    def expect(record):
        """(prompt, chosen, rejected, chosen_safe, rejected_safe), or None for a bad record."""
        try:
            if not isinstance(record, dict) or not all(_text(record.get(k)) for k in (prompt, r0, r1)):
                return None
            safe = (_flag(record[s0]), _flag(record[s1]))
            w = _id(record[better], ids)
            if extra and extra in record:
                _id(record[extra], ids)
        except (KeyError, ValueError):
            return None
        texts = (record[r0], record[r1])
        return ({"role": "user", "content": record[prompt]},), texts[w], texts[1 - w], safe[w], safe[1 - w]

    return expect


PREFERENCE = {
    "pku_saferlhf": ({"prompt": "Where is the station?", "response_0": "North.", "response_1": "Go away.",
                      "is_response_0_safe": True, "is_response_1_safe": False, "better_response_id": 0,
                      "safer_response_id": 0},
                     two_response_oracle(("prompt", "response_0", "response_1", "is_response_0_safe",
                                          "is_response_1_safe", "better_response_id", (0, 1), "safer_response_id"))),
    "red_teaming": ({"prompt": "Insult my friend.", "modeloutput1": "No.", "modeloutput2": "You fool.",
                     "better_modelout": 1, "is_modelout1_safe": True, "is_modelout2_safe": False},
                    two_response_oracle(("prompt", "modeloutput1", "modeloutput2", "is_modelout1_safe",
                                         "is_modelout2_safe", "better_modelout", (1, 2), None))),
    "chosen_rejected": ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}]},
                        None),
}


def observed(pair):
    return pair.prompt, pair.chosen, pair.rejected, pair.chosen_safe, pair.rejected_safe


@SETTINGS
@given(st.data())
def test_preference_files(tmp_path, data):
    schema = data.draw(st.sampled_from(sorted(PREFERENCE)), label="schema")
    base, expect = PREFERENCE[schema]
    lines, records = [], []  # records[i]: the i-th line's object, or None for junk
    for _ in range(data.draw(st.integers(1, 4), label="lines")):
        if data.draw(st.integers(0, 4), label="kind") == 0:
            lines.append(data.draw(JUNK_LINES, label="junk"))
            records.append(None)
        else:
            record = mutate(base, data) if data.draw(st.booleans(), label="mutate") else base
            lines.append(json.dumps(record).encode())
            records.append(record)
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    # What each line must give: a pair's fields, None for a bad line, or "?" where this file states no oracle
    # (a mutated chat record: only the bookkeeping is checked).
    wanted = [None if r is None else expect(r) if expect else observed_base(base) if r is base else "?"
              for r in records]
    exact = "?" not in wanted
    good = [(i, w) for i, w in enumerate(wanted) if w is not None]

    try:
        pairs, report = load_pairs(path, schema=schema, on_bad_record="skip")
    except DataError as e:
        assert str(path) in str(e) and "no usable records" in str(e), e
        assert not exact or not good
    else:
        assert report.records == len(lines) and report.kept + report.dropped == report.records
        assert report.kept == len(pairs)
        if exact:  # exactly the good records, unaltered, in order, each at its own line
            assert [observed(p) for p in pairs] == [w for _, w in good]
            assert [p.source for p in pairs] == [f"{path}:{i + 1}" for i, _ in good]

    try:
        pairs, _ = load_pairs(path, schema=schema, on_bad_record="error")
    except DataError as e:
        assert str(path) in str(e), e
        assert not exact or len(good) < len(lines)
    else:
        assert len(pairs) == len(lines)
        if exact:
            assert [observed(p) for p in pairs] == [w for _, w in good]


def observed_base(record):
    """The chat base record's pair, read by hand."""
    return ({"role": "user", "content": "Hi"},), "Hello.", "Go.", True, True


# ---- evaluation files: every loader, on its own fixture with one record broken ----

def jsonl_loaders():
    return {
        "mc2.jsonl": lambda p: load_task(p, axis="helpfulness", metric="mc2"),
        "mc3.jsonl": lambda p: load_task(p, axis="helpfulness"),
        "partial.jsonl": lambda p: load_task(p, axis="helpfulness"),
        "truthfulqa_mc.jsonl": lambda p: load_published("truthfulqa_mc2", p),
        "winogrande.jsonl": lambda p: load_published("winogrande", p),
        "ethics_deontology.jsonl": lambda p: load_published("ethics_deontology", p),
        "toxigen_annotated.jsonl": lambda p: load_published("toxigen", p),
        "bbq.jsonl": lambda p: load_published("bbq", p),
        "hhh_alignment.jsonl": lambda p: load_published("hhh_alignment", p),
        "alert.jsonl": gen.load_alert,
        "pku_test.jsonl": gen.load_pku_prompts,
        "benign_prompts.jsonl": lambda p: gen.load_prompt_file(p, axis="over_refusal"),
    }


def csv_loaders():
    return {
        "crows_pairs.csv": lambda p: load_published("crows_pairs", p),
        "ethics_commonsense.csv": lambda p: load_published("ethics_cm", p),
        "ethics_utilitarianism.csv": lambda p: load_published("ethics_utilitarianism", p),
        "ethics_virtue.csv": lambda p: load_published("ethics_virtue", p),
        "advbench.csv": gen.load_advbench,
        "xstest.csv": lambda p: gen.load_prompt_file(p, axis="over_refusal"),
    }


def loads_or_names_the_file(load, path: Path) -> None:
    try:
        load(path)
    except BFPOError as e:
        assert isinstance(e, DataError) and str(path) in str(e), e


def test_every_loader_reads_its_own_fixture():
    for name, load in {**jsonl_loaders(), **csv_loaders()}.items():
        load(EVAL_FIXTURES / name)


@SETTINGS
@given(st.data())
def test_evaluation_jsonl_files(tmp_path, data):
    name = data.draw(st.sampled_from(sorted(jsonl_loaders())), label="file")
    records = [json.loads(line) for line in (EVAL_FIXTURES / name).read_text().splitlines() if line.strip()]
    at = data.draw(st.integers(0, len(records) - 1), label="record")
    lines = [json.dumps(r).encode() for r in records]
    if data.draw(st.integers(0, 4), label="junk") == 0:
        lines[at] = data.draw(JUNK_LINES, label="line")
    else:
        lines[at] = json.dumps(mutate(records[at], data)).encode()
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    loads_or_names_the_file(jsonl_loaders()[name], path)


@SETTINGS
@given(st.data())
def test_evaluation_csv_files(tmp_path, data):
    name = data.draw(st.sampled_from(sorted(csv_loaders())), label="file")
    rows = list(csv.reader(io.StringIO((EVAL_FIXTURES / name).read_text())))
    at = data.draw(st.integers(0, len(rows) - 1), label="row")
    change = data.draw(st.sampled_from(["cell", "short", "long", "drop"]), label="change")
    if change == "cell" and rows[at]:
        column = data.draw(st.integers(0, len(rows[at]) - 1), label="column")
        rows[at][column] = data.draw(st.text(max_size=12) | st.sampled_from(["", "-1", "2", "1.5", "nan"]),
                                     label="text")
    elif change == "short":
        rows[at] = rows[at][:-1]
    elif change == "long":
        rows[at] = rows[at] + ["extra"]
    else:
        del rows[at]
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    path = tmp_path / name
    path.write_text(out.getvalue())
    loads_or_names_the_file(csv_loaders()[name], path)


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"", b"\n\n", b"a,b\n\x00,1\n"])
def test_undecodable_or_empty_csv_files_are_named(tmp_path, raw):
    for name, load in csv_loaders().items():
        path = tmp_path / name
        path.write_bytes(raw)
        loads_or_names_the_file(load, path)
