"""Tokenized pairs: ids follow the chat template, the per-side budgets truncate the prompt from the left and the
responses from the right (and are counted), batches follow the preference-batch contract, and the fingerprint
tracks ids, labels and settings."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bfpo import DataError
from bfpo.data import TokenizeConfig, load_pairs, tokenize_pairs
from bfpo.data import synthetic
from bfpo.tokenize import Tokenizer, truncate_prompt_response

FIXTURES = Path(__file__).resolve().parents[2] / "bfpo" / "data" / "fixtures"
WIDE = TokenizeConfig(max_length=512, max_prompt_length=256, buckets=(128, 512))
TIGHT = TokenizeConfig(max_length=96, max_prompt_length=40, buckets=(48, 64, 96))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.byte_level()


@pytest.fixture(scope="module")
def pairs():
    pku, _ = load_pairs(FIXTURES / "pku_saferlhf.jsonl")
    hh, _ = load_pairs(FIXTURES / "hh_rlhf.jsonl")
    return pku + hh + synthetic.make_pairs(24, seed=3)


@pytest.fixture(scope="module")
def wide(pairs, tok):
    return tokenize_pairs(pairs, tok, WIDE)


@pytest.fixture(scope="module")
def tight(pairs, tok):
    return tokenize_pairs(pairs, tok, TIGHT)


def test_ids_are_the_chat_template_rendering(pairs, wide, tok):
    assert wide.report.prompts_truncated == wide.report.chosen_truncated == wide.report.rejected_truncated == 0
    for i, pair in enumerate(pairs):
        for side, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            full = tok.chat_text(list(pair.prompt) + [{"role": "assistant", "content": response}],
                                 add_generation_prompt=False)
            ids = getattr(wide, side)(i)
            assert wide.prompt(i).tolist() + ids.tolist() == tok.encode(full)
            # The response carries the template's end-of-turn marker, so the model learns to stop.
            assert tok.decode(ids, skip_special_tokens=False) == response + "<|im_end|>\n"
        assert tok.decode(wide.prompt(i), skip_special_tokens=False) == tok.chat_text(pair.prompt)
        assert (wide.chosen_safe[i], wide.rejected_safe[i]) == (pair.chosen_safe, pair.rejected_safe)


def test_budgets_keep_the_prompt_end_and_the_response_start(pairs, wide, tight):
    p_max, r_max = TIGHT.max_prompt_length, TIGHT.max_response_length
    full = [(wide.prompt(i).tolist(), wide.chosen(i).tolist(), wide.rejected(i).tolist()) for i in range(len(pairs))]
    assert tight.prompt(0).tolist() == full[0][0][-p_max:] and len(full[0][0]) > p_max
    for i, (p, c, r) in enumerate(full):
        assert tight.prompt(i).tolist() == p[-p_max:]
        assert (tight.chosen(i).tolist(), tight.rejected(i).tolist()) == (c[:r_max], r[:r_max])
        longer = c if len(c) >= len(r) else r
        if len(p) + len(longer) > TIGHT.max_length:
            # Where the official per-pair rule truncates, the budgets give its result.
            assert (tight.prompt(i).tolist(), tight.chosen(i).tolist() if longer is c else tight.rejected(i).tolist()
                    ) == truncate_prompt_response(p, longer, max_prompt_length=p_max, max_length=TIGHT.max_length)
    report = tight.report
    assert report.prompts_truncated == sum(len(p) > p_max for p, _, _ in full) > 0
    assert report.chosen_truncated == sum(len(c) > r_max for _, c, _ in full) > 0
    assert report.rejected_truncated == sum(len(r) > r_max for _, _, r in full)
    assert tight.lengths.max() <= TIGHT.max_length


@pytest.mark.parametrize("indices, rows", [([0, 1, 2, 3, 4, 5], None), ([7, 29, 12], 5), ([29], 2)])
def test_batches_follow_the_contract(tight, indices, rows):
    batch = tight.batch(indices, rows=rows)
    b, n = rows or len(indices), len(indices)
    length = batch["chosen"]["tokens"].shape[1]
    assert length in TIGHT.buckets and length >= tight.lengths[indices].max()
    # The smallest bucket that fits: every bucket below it is too short for the prompt + response split.
    prompt_len = max(len(tight.prompt(i)) for i in indices)
    response_len = max(max(len(tight.chosen(i)), len(tight.rejected(i))) for i in indices)
    assert length == min(x for x in TIGHT.buckets if x >= prompt_len + response_len)
    for side in ("chosen", "rejected"):
        leaves = batch[side]
        assert {k: (v.shape, v.dtype) for k, v in leaves.items()} == {
            "tokens": ((b, length), np.int32), "mask": ((b, length), np.bool_), "score_mask": ((b, length), np.bool_)}
        for row, i in enumerate(indices):
            tokens, mask, score = leaves["tokens"][row], leaves["mask"][row], leaves["score_mask"][row]
            response = getattr(tight, side)(i)
            np.testing.assert_array_equal(tokens[mask], np.concatenate([tight.prompt(i), response]))
            np.testing.assert_array_equal(tokens[score], response)
            # Prompts end at the shared split P, responses start there; both are contiguous.
            real = np.flatnonzero(mask)
            assert real[-1] - real[0] + 1 == real.size and real[0] == prompt_len - len(tight.prompt(i))
            assert np.flatnonzero(score)[0] == prompt_len and not (score & ~mask).any()
            assert (tokens[~mask] == tight.pad_id).all()
        assert not leaves["mask"][n:].any() and not leaves["score_mask"][n:].any()
    np.testing.assert_array_equal(batch["example_id"], indices + [-1] * (b - n))
    np.testing.assert_array_equal(batch["pair_mask"], [True] * n + [False] * (b - n))
    assert batch["example_id"].dtype == np.int32 and batch["chosen_safe"].dtype == np.float32
    np.testing.assert_array_equal(batch["chosen_safe"][:n], tight.chosen_safe[indices].astype(np.float32))
    np.testing.assert_array_equal(batch["rejected_safe"][:n], tight.rejected_safe[indices].astype(np.float32))


def test_fingerprint_tracks_ids_labels_and_settings(pairs, tok, tight):
    again = tokenize_pairs(pairs, tok, TIGHT)
    assert again.fingerprint() == tight.fingerprint() and len(tight.fingerprint()) == 64
    flipped = list(pairs)
    flipped[5] = dataclasses.replace(pairs[5], rejected_safe=not pairs[5].rejected_safe)
    assert tokenize_pairs(flipped, tok, TIGHT).fingerprint() != tight.fingerprint()
    shorter = dataclasses.replace(TIGHT, max_prompt_length=39)
    assert tokenize_pairs(pairs, tok, shorter).fingerprint() != tight.fingerprint()
    rebucketed = dataclasses.replace(TIGHT, buckets=(64, 96))
    assert tokenize_pairs(pairs, tok, rebucketed).fingerprint() != tight.fingerprint()
    swapped = list(pairs)
    swapped[0] = dataclasses.replace(pairs[0], chosen=pairs[0].rejected, rejected=pairs[0].chosen)
    assert tokenize_pairs(swapped, tok, TIGHT).fingerprint() != tight.fingerprint()


def test_config_and_index_errors(tight):
    with pytest.raises(DataError, match=r"max_length=2048: expected an integer in \[2, 1024\]"):
        TokenizeConfig(max_length=2048)
    with pytest.raises(DataError, match="buckets=.*strictly increasing"):
        TokenizeConfig(buckets=(256, 128))
    with pytest.raises(DataError, match=r"max_prompt_length=1024"):
        TokenizeConfig(max_length=1024, max_prompt_length=1024)
    with pytest.raises(DataError, match=r"within \[0, 30\)"):
        tight.batch([30])
    with pytest.raises(DataError, match="rows=1 is fewer"):
        tight.batch([0, 1], rows=1)


def test_mismatched_side_pairs_each_prompt_with_the_next_examples_response(tight):
    indices = [7, 29, 12]
    batch = tight.batch(indices, rows=5, mismatched=True)
    side = batch["mismatched"]
    assert side["tokens"].shape == batch["chosen"]["tokens"].shape
    for row, (i, j) in enumerate(zip(indices, indices[1:] + indices[:1])):
        mask, score = side["mask"][row], side["score_mask"][row]
        np.testing.assert_array_equal(side["tokens"][row][mask], np.concatenate([tight.prompt(i), tight.chosen(j)]))
        np.testing.assert_array_equal(side["tokens"][row][score], tight.chosen(j))
    assert not side["mask"][3:].any()
    explicit = tight.batch([4], mismatched=True, partners=[9])["mismatched"]
    np.testing.assert_array_equal(explicit["tokens"][0][explicit["score_mask"][0]], tight.chosen(9))
    with pytest.raises(DataError, match="at least 2 examples"):
        tight.batch([4], mismatched=True)
    with pytest.raises(DataError, match="partners must give one other example"):
        tight.batch([4, 5], mismatched=True, partners=[5, 5])


def test_evaluation_batches_give_a_lone_last_example_a_mismatched_partner(tight):
    from bfpo.data import evaluation_batches

    batches = list(evaluation_batches(tight, len(tight) - 1, mismatched=True))
    last = batches[-1]
    assert last["pair_mask"].sum() == 1 and last["example_id"][0] == len(tight) - 1
    np.testing.assert_array_equal(last["mismatched"]["tokens"][0][last["mismatched"]["score_mask"][0]], tight.chosen(0))


def test_tokenizer_identity_is_its_contents_not_its_directory(tmp_path):
    """The same tokenizer files moved to another directory give the same identity (a resume from there keeps its
    data fingerprint); another vocabulary does not."""
    import shutil

    from bfpo.data.tokenized import tokenizer_identity

    Tokenizer.byte_level().hf.save_pretrained(str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    here, moved = Tokenizer.from_directory(tmp_path / "a"), Tokenizer.from_directory(tmp_path / "moved")
    assert tokenizer_identity(here) == tokenizer_identity(moved)
    moved.hf.add_tokens(["<extra>"])
    assert tokenizer_identity(here) != tokenizer_identity(moved)
