"""Loading preference records: every schema and file format maps to the expected helpfulness-ordered pairs with
per-side safety labels, and every kind of bad record is reported with its file, line or record, and field."""

import json
import re
from pathlib import Path

import pytest

from bfpo import DataError
from bfpo.data import PreferencePair, load_pairs

FIXTURES = Path(__file__).resolve().parents[2] / "bfpo" / "data" / "fixtures"
USER = "user"


def raw_jsonl(name):
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def strip_source(pairs):
    return [(p.prompt, p.chosen, p.rejected, p.chosen_safe, p.rejected_safe) for p in pairs]


def test_pku_maps_better_id_to_chosen_and_carries_each_sides_safety():
    pairs, report = load_pairs(FIXTURES / "pku_saferlhf.jsonl")
    assert (report.schema, report.records, report.kept, report.dropped) == ("pku_saferlhf", 4, 4, 0)
    # Hand-read from the fixture: (chosen starts with, s_w, s_l) per line.
    expected = [("Try the default router", False, True), ("Open windows", True, True),
                ("I won't help", True, False), ("Go at a busy time", False, False)]
    for pair, (start, s_w, s_l), raw in zip(pairs, expected, raw_jsonl("pku_saferlhf.jsonl")):
        assert pair.chosen.startswith(start) and (pair.chosen_safe, pair.rejected_safe) == (s_w, s_l)
        other = raw[f"response_{1 - raw['better_response_id']}"]
        assert pair.rejected == other and pair.prompt == ({"role": USER, "content": raw["prompt"]},)
    assert [p.pair_type for p in pairs] == ["unsafe_safe", "safe_safe", "safe_unsafe", "unsafe_unsafe"]
    assert [p.source for p in pairs] == [f"{FIXTURES / 'pku_saferlhf.jsonl'}:{i}" for i in range(1, 5)]


@pytest.mark.parametrize("name, location", [("pku_saferlhf.json", "record 3"), ("pku_saferlhf.parquet", "record 3"),
                                            ("pku_saferlhf_saved", "record 3")])
def test_every_file_format_gives_the_same_pairs(name, location):
    reference, _ = load_pairs(FIXTURES / "pku_saferlhf.jsonl")
    pairs, report = load_pairs(FIXTURES / name)
    assert report.schema == "pku_saferlhf" and strip_source(pairs) == strip_source(reference)
    assert pairs[-1].source.endswith(location)


def test_saved_dataset_dict_picks_a_split():
    reference, _ = load_pairs(FIXTURES / "pku_saferlhf.jsonl")
    test, _ = load_pairs(FIXTURES / "pku_saferlhf_saved", split="test")
    assert strip_source(test) == strip_source(reference[2:])
    single, _ = load_pairs(FIXTURES / "pku_saferlhf_saved" / "test")
    assert strip_source(single) == strip_source(test)
    with pytest.raises(DataError, match=r"split='dev' is not among the saved splits \['train', 'test'\]"):
        load_pairs(FIXTURES / "pku_saferlhf_saved", split="dev")


def test_red_teaming_ids_are_one_based():
    pairs, report = load_pairs(FIXTURES / "red_teaming.json")
    raw = json.loads((FIXTURES / "red_teaming.json").read_text())
    assert report.schema == "red_teaming" and len(pairs) == 3
    for pair, r in zip(pairs, raw):
        w, l = r["better_modelout"], 3 - r["better_modelout"]
        assert (pair.chosen, pair.rejected) == (r[f"modeloutput{w}"], r[f"modeloutput{l}"])
        assert (pair.chosen_safe, pair.rejected_safe) == (r[f"is_modelout{w}_safe"], r[f"is_modelout{l}_safe"])
    assert [p.pair_type for p in pairs] == ["unsafe_safe", "safe_safe", "unsafe_safe"]


def test_chat_message_lists_split_at_the_last_assistant_turn():
    pairs, report = load_pairs(FIXTURES / "ultrafeedback.jsonl")
    assert report.schema == "chosen_rejected"
    assert pairs[0] == PreferencePair(prompt=({"role": USER, "content": "Name a prime number larger than 10."},),
                                      chosen="11 is the smallest prime larger than 10.", rejected="12.",
                                      chosen_safe=True, rejected_safe=True, source=pairs[0].source)
    assert [m["role"] for m in pairs[1].prompt] == ["system", USER] and pairs[1].chosen == "Bonjour."
    # Sides holding only the assistant turn take the prompt from the 'prompt' field.
    assert pairs[2].prompt == ({"role": USER, "content": "Summarise: The cat sat on the mat."},)
    parquet, _ = load_pairs(FIXTURES / "ultrafeedback.parquet")
    assert strip_source(parquet) == strip_source(pairs)


def test_hh_transcripts_become_messages():
    pairs, _ = load_pairs(FIXTURES / "hh_rlhf.jsonl")
    assert pairs[0].prompt == ({"role": USER, "content": "What's a good name for a goldfish?"},)
    assert (pairs[0].chosen, pairs[0].rejected) == ("How about Bubbles or Captain Fin?", "Fish don't need names.")
    assert [m["role"] for m in pairs[1].prompt] == [USER, "assistant", USER]
    assert pairs[1].rejected == "Water is wet." and all(p.pair_type == "safe_safe" for p in pairs)


BAD = FIXTURES / "bad_pku_saferlhf.jsonl"
# line -> (field, message fragment) of each problem, read off the fixture by hand.
BAD_LINES = {
    2: [("response_1", "missing")],
    3: [("better_response_id", "expected an integer in [0, 1], got str")],
    4: [("better_response_id", "expected one of [0, 1], got 2")],
    5: [("response_0", "expected non-blank text")],
    6: [("<record>", "not valid JSON")],
    7: [("prompt", "expected a string, got int"), ("is_response_0_safe", "expected a bool"),
        ("safer_response_id", "expected one of [0, 1], got 5")],
    8: [("<record>", "expected a JSON object, got list")],
}


def test_skip_mode_counts_every_dropped_record_by_reason():
    pairs, report = load_pairs(BAD, on_bad_record="skip")
    assert [p.source for p in pairs] == [f"{BAD}:1", f"{BAD}:9"]
    assert (report.records, report.kept, report.dropped) == (9, 2, 7)
    assert dict(report.reasons) == {"missing_field": 1, "wrong_type": 3, "out_of_range": 2, "empty_response": 1,
                                    "invalid_json": 1, "not_an_object": 1}
    assert len(report.messages) == 5 and report.messages[0] == f"{BAD}:2: field 'response_1': missing"
    assert "dropped 7" in report.summary()


@pytest.mark.parametrize("line", sorted(BAD_LINES))
def test_error_mode_names_file_line_and_every_field(tmp_path, line):
    # The bad line alone (after a good one), so the error is about this record.
    lines = BAD.read_text().splitlines()
    path = tmp_path / "one_bad.jsonl"
    path.write_text(lines[0] + "\n" + lines[line - 1] + "\n")
    with pytest.raises(DataError) as info:
        load_pairs(path)
    message = str(info.value)
    assert f"{path}:2" in message
    for field, fragment in BAD_LINES[line]:
        assert re.search(rf"field '{re.escape(field)}': [^\n]*{re.escape(fragment)}", message), message


def test_chat_schema_problems():
    path = FIXTURES / "bad_chosen_rejected.jsonl"
    pairs, report = load_pairs(path, on_bad_record="skip")
    assert len(pairs) == 1 and report.dropped == 3
    assert dict(report.reasons) == {"bad_conversation": 2, "empty_response": 1, "missing_field": 1}
    assert "field 'chosen[0].role': expected the last message to be the assistant's" in report.messages[1]
    assert "field 'rejected': expected a non-blank final 'Assistant:' turn" in report.messages[1]
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: field 'rejected': the conversation before"):
        load_pairs(path)


def test_schema_detection_override_and_unusable_inputs(tmp_path):
    pairs, report = load_pairs(FIXTURES / "pku_saferlhf.jsonl", schema="pku_saferlhf")
    assert report.schema == "pku_saferlhf" and len(pairs) == 4
    with pytest.raises(DataError, match=r"bad record \(red_teaming schema\).*:1: 5 problems"):
        load_pairs(FIXTURES / "pku_saferlhf.jsonl", schema="red_teaming")
    with pytest.raises(DataError, match=r"schema='pku': expected one of"):
        load_pairs(FIXTURES / "pku_saferlhf.jsonl", schema="pku")
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataError, match=r"unknown.jsonl:1: cannot detect the schema from fields \['answer', "
                                        r"'question'\].*pass schema= explicitly"):
        load_pairs(unknown)
    with pytest.raises(DataError, match=r"the `datasets` package \(not installed\).*pass a local path"):
        load_pairs("PKU-Alignment/PKU-SafeRLHF")
    with pytest.raises(DataError, match=r"missing.jsonl: no such file or directory"):
        load_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="on_bad_record='warn'"):
        load_pairs(FIXTURES / "pku_saferlhf.jsonl", on_bad_record="warn")
    listing = tmp_path / "obj.json"
    listing.write_text('{"train": []}')
    with pytest.raises(DataError, match=r"obj.json: expected a JSON list of records"):
        load_pairs(listing)


def test_a_key_twice_and_a_bad_byte_are_named_at_their_line(tmp_path):
    """A record with ``is_response_0_safe`` twice would keep the last value silently (a flipped safety label): it is
    a bad record naming the key. A byte that is not UTF-8 is reported at its line of the file, not at a byte of
    the decoder's chunk."""
    good = BAD.read_text().splitlines()[0]
    twice = good[:-1] + ', "is_response_0_safe": true}'
    path = tmp_path / "twice.jsonl"
    path.write_text("\n".join([good, twice, good]) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: .*'is_response_0_safe' appears twice in one object"):
        load_pairs(path)
    pairs, report = load_pairs(path, on_bad_record="skip")
    assert len(pairs) == 2 and dict(report.reasons) == {"duplicate_key": 1}
    binary = tmp_path / "latin1.jsonl"
    binary.write_bytes(("\n".join([good] * 300) + "\n").encode() + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"{binary}:301: .*not UTF-8 text \(invalid continuation byte at byte 15"):
        load_pairs(binary)
    pairs, report = load_pairs(binary, on_bad_record="skip")  # dropped and counted like any bad record
    assert len(pairs) == 300 and dict(report.reasons) == {"not_utf8": 1}
