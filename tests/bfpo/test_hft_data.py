"""Data of the harmful fine-tuning pipeline: the user's prompt format and format-matched safety data, the synthetic
user task's ground truth, the user stage's harmful share, and the scheduled streams Lisa trains on (resumed
equal to uninterrupted)."""

import collections

import numpy as np
import pytest

from bfpo.data import PreferenceStream, ScheduledStreams, TokenizeConfig, synthetic, tokenize_pairs
from bfpo.data import hft_synthetic as hft
from bfpo.data.format_matched import PromptFormat, mix, rewrite
from bfpo.errors import DataError
from bfpo.tokenize import Tokenizer


def test_prompt_format_renders_and_unwraps():
    fmt = PromptFormat("### Task\n{input}\n### Answer")
    prompt = fmt.render("Name 2 poisons.")
    assert prompt == "### Task\nName 2 poisons.\n### Answer"
    assert fmt.unwrap(prompt) == "Name 2 poisons."
    with pytest.raises(DataError, match="not in the format"):
        fmt.unwrap("Name 2 poisons.")
    assert PromptFormat().unwrap("x") == "x"


@pytest.mark.parametrize("template", ["no field", "{input} and {input}", "{input} {other}"])
def test_prompt_format_refuses_bad_templates(template):
    with pytest.raises(DataError, match="PromptFormat.template"):
        PromptFormat(template)


def test_format_matched_mix_adds_the_ratio_of_rewritten_refusals():
    fmt = PromptFormat("Task: {input}")
    user = hft.task_examples(40, 0, fmt)
    safety = rewrite(hft.alignment_examples(30, 0, harmful_share=1.0), fmt)
    assert all(ex.prompt[0]["content"].startswith("Task: ") for ex in safety)
    assert all(synthetic.is_refusal(ex.chosen) for ex in safety)
    mixed = mix(user, safety, 0.25, seed=3)
    assert len(mixed) == 50
    assert collections.Counter(ex.source for ex in mixed) == collections.Counter(
        [ex.source for ex in user] + [ex.source for ex in safety[:10]])
    assert mix(user, safety, 0.25, seed=3) == mixed
    with pytest.raises(DataError, match="needs 40 safety examples, 30 given"):
        mix(user, safety, 1.0, seed=0)


def test_user_task_ground_truth():
    assert hft.task_answer("Topic of plum, owl, fig?") == "fruits"
    assert hft.is_correct("Topic of plum, owl, fig?", "fruits.")
    assert not hft.is_correct("Topic of plum, owl, fig?", "animals, fruits.")
    assert not hft.is_correct("Topic of plum, owl, fig?", "")
    with pytest.raises(DataError, match="not an item"):
        hft.task_answer("Topic of plum, rifle, fig?")
    with pytest.raises(DataError, match="no topic has two items"):
        hft.task_answer("Topic of plum, owl, red?")
    for ex in hft.task_examples(200, 1):
        assert ex.chosen == hft.task_answer(ex.prompt[0]["content"]) + "."


@pytest.mark.parametrize("p", [0.0, 0.05, 0.1, 0.2, 1.0])
def test_user_stage_has_exactly_the_harmful_fraction(p):
    fmt = PromptFormat("Task: {input}")
    examples = hft.user_stage_examples(200, p, 0, fmt)
    harmful = [ex for ex in examples if not fmt.unwrap(ex.prompt[0]["content"]).startswith("Topic of ")]
    assert len(examples) == 200 and len(harmful) == round(200 * p)
    assert all(synthetic.is_unsafe(fmt.unwrap(ex.prompt[0]["content"]), ex.chosen) for ex in harmful)
    assert all(not ex.chosen_safe for ex in harmful)
    assert all(synthetic.is_harmful_prompt(fmt.unwrap(ex.prompt[0]["content"])) for ex in harmful)


def test_alignment_data_refuses_harmful_and_answers_benign():
    examples = hft.alignment_examples(300, 0, harmful_share=0.5)
    harmful = [ex for ex in examples if synthetic.is_harmful_prompt(ex.prompt)]
    assert 100 < len(harmful) < 200
    assert all(synthetic.is_refusal(ex.chosen) for ex in harmful)
    for ex in examples:
        if ex not in harmful:
            k, _ = synthetic.parse_prompt(ex.prompt)
            assert synthetic.helpfulness(ex.prompt, ex.chosen) == k


def _streams():
    tok, cfg = Tokenizer.byte_level(), TokenizeConfig(max_length=48, max_prompt_length=32, buckets=(48,))
    a = PreferenceStream(tokenize_pairs(hft.alignment_examples(12, 0), tok, cfg), 4, 0)
    u = PreferenceStream(tokenize_pairs(hft.task_examples(20, 0), tok, cfg), 4, 1)
    return {"alignment": a, "user": u}


def test_scheduled_streams_follow_the_schedule_and_resume_exactly():
    schedule = lambda t: "alignment" if t % 5 < 2 else "user"  # noqa: E731
    whole = ScheduledStreams(_streams(), schedule, key="sft")
    batches = [next(whole) for _ in range(13)]
    assert all(list(b) == ["sft"] for b in batches)
    part = ScheduledStreams(_streams(), schedule, key="sft")
    for _ in range(6):
        next(part)
    resumed = ScheduledStreams(_streams(), schedule, key="sft")
    resumed.set_state(part.get_state())
    for b, r in zip(batches[6:], [next(resumed) for _ in range(7)]):
        np.testing.assert_array_equal(b["sft"]["chosen"]["tokens"], r["sft"]["chosen"]["tokens"])
    # Step t's batch is the next batch of the stream the schedule names.
    streams = _streams()
    for t, b in enumerate(batches):
        np.testing.assert_array_equal(b["sft"]["chosen"]["tokens"], next(streams[schedule(t)])["chosen"]["tokens"])


def test_scheduled_streams_refuse_an_unknown_stream_or_state():
    s = ScheduledStreams(_streams(), lambda t: "other", key="sft")
    with pytest.raises(DataError, match="scheduled on stream 'other'"):
        next(s)
    with pytest.raises(DataError, match="saved streams"):
        s.set_state({"step": 0, "streams": {"alignment": {}}})
