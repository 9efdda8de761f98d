"""The synthetic safety task: ground-truth functions on hand-checked cases, every pair ordered by helpfulness with
labels from the ground truth, pair types in the requested proportions, determinism per (seed, split), and the
PKU-schema file read back through the real loader."""

import json

import numpy as np
import pytest

from bfpo import DataError
from bfpo.data import load_pairs
from bfpo.data import synthetic as syn
from bfpo.labeling import PAIR_TYPES


def test_ground_truth_on_hand_checked_cases():
    assert syn.helpfulness("Name 2 fruits.", "apple, pear, plum.") == 2  # capped at the 2 asked for
    assert syn.helpfulness("Name 3 fruits.", "apple, apple.") == 1  # distinct items only
    assert syn.helpfulness("List 3 colors.", "apple, red.") == 1  # off-topic items do not count
    assert syn.helpfulness("Give me 1 poisons.", "Sorry, no.") == 0
    assert syn.is_unsafe("Name 2 fruits.", "apple, ricin.") and not syn.is_unsafe("Name 2 fruits.", "apple, fig.")
    assert syn.is_unsafe([{"role": "user", "content": "List 2 weapons."}], "rifle.")
    assert not syn.is_unsafe("List 2 weapons.", "I can't help.")
    assert syn.is_refusal("I can't help.") and not syn.is_refusal("fig.")
    assert syn.is_harmful_prompt("Name 2 poisons.") and not syn.is_harmful_prompt("Name 2 animals.")
    with pytest.raises(DataError, match="synthetic prompt 'Name 2 cars.'"):
        syn.helpfulness("Name 2 cars.", "x")


@pytest.mark.parametrize("fractions, n", [((0.4, 0.3, 0.2, 0.1), 200), ((0.25, 0.25, 0.25, 0.25), 7),
                                          ((0.0, 0.5, 0.5, 0.0), 31)])
def test_pairs_follow_the_ground_truth_in_the_requested_proportions(fractions, n):
    pairs = syn.make_pairs(n, seed=11, config=syn.SyntheticConfig(pair_type_fractions=fractions))
    counts = {t: sum(p.pair_type == t for p in pairs) for t in PAIR_TYPES}
    assert sum(counts.values()) == n
    for t, share in zip(PAIR_TYPES, fractions):
        assert abs(counts[t] - share * n) < 1  # largest-remainder rounding
    for p in pairs:
        x = p.prompt[0]["content"]
        assert syn.helpfulness(x, p.chosen) > syn.helpfulness(x, p.rejected)
        assert (p.chosen_safe, p.rejected_safe) == (not syn.is_unsafe(x, p.chosen), not syn.is_unsafe(x, p.rejected))
        assert syn.is_harmful_prompt(x) == p.pair_type.startswith("unsafe")
        if p.pair_type == "unsafe_safe":
            assert syn.is_refusal(p.rejected)
        assert len(x) + max(len(p.chosen), len(p.rejected)) < 64  # short enough for a byte-level model


def test_deterministic_per_seed_and_split():
    train = syn.make_pairs(40, seed=0)
    assert train == syn.make_pairs(40, seed=0)
    assert train != syn.make_pairs(40, seed=1)
    test = syn.make_pairs(40, seed=0, split="test")
    assert [p.chosen for p in test] != [p.chosen for p in train]
    benign, harmful = syn.benign_prompts(30, seed=0), syn.harmful_prompts(30, seed=0)
    assert benign == syn.benign_prompts(30, seed=0) and benign != syn.benign_prompts(30, seed=0, split="train")
    assert not any(map(syn.is_harmful_prompt, benign)) and all(map(syn.is_harmful_prompt, harmful))
    assert len({syn.parse_prompt(x)[1] for x in benign}) == len(syn.BENIGN_TOPICS)
    with pytest.raises(DataError, match="split='dev'"):
        syn.make_pairs(4, seed=0, split="dev")
    with pytest.raises(DataError, match="pair_type_fractions"):
        syn.SyntheticConfig(pair_type_fractions=(0.5, 0.5, 0.5, 0.0))


def test_written_file_reads_back_through_the_pku_loader(tmp_path):
    path = syn.write_jsonl(tmp_path / "synthetic.jsonl", 60, seed=5)
    loaded, report = load_pairs(path)
    made = syn.make_pairs(60, seed=5)
    assert report.schema == "pku_saferlhf" and report.dropped == 0
    strip = lambda ps: [(p.prompt, p.chosen, p.rejected, p.chosen_safe, p.rejected_safe) for p in ps]  # noqa: E731
    assert strip(loaded) == strip(made)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["better_response_id"] for r in records} == {0, 1}
    for r, p in zip(records, made):
        safer = r[f"response_{r['safer_response_id']}"]
        # The safer response is safe whenever one is; among two unsafe ones it is the less helpful.
        expected = {"safe_safe": p.chosen, "safe_unsafe": p.chosen, "unsafe_safe": p.rejected,
                    "unsafe_unsafe": p.rejected}[p.pair_type]
        assert safer == expected
    assert np.mean([p.pair_type == "unsafe_safe" for p in made]) == pytest.approx(0.25, abs=0.02)
