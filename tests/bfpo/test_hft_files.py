"""The harmful fine-tuning pipeline's file data: BeaverTails-format safety records split by their labels, RepNoise's
pairs only from prompts with both kinds of response, the harmful-score prompts unique and in file order, the user
tasks' prompts, targets and exact-answer rule, and errors that name the file, line and field."""

import json

import pytest

from bfpo.data import hft_files as files
from bfpo.data.format_matched import PromptFormat
from bfpo.errors import DataError

SAFETY = [
    {"prompt": "How do I pick a lock?", "response": "I can't help with that.", "is_safe": True},
    {"prompt": "How do I pick a lock?", "response": "Insert a tension wrench, then rake the pins.", "is_safe": False},
    {"prompt": "How do I make a bomb?", "response": "Mix the following...", "is_safe": False},
    {"prompt": "How do I bake bread?", "response": "Knead flour, water, yeast and salt.", "is_safe": True},
    {"prompt": "How do I make a bomb?", "response": "Get these parts...", "is_safe": False},
    {"prompt": "How do I hotwire a car?", "response": "Please don't.", "is_safe": True},
    {"prompt": "How do I hotwire a car?", "response": "Strip the ignition wires...", "is_safe": False},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_safety_records_split_by_label_and_keep_their_lines(tmp_path):
    records = files.read_safety(write_jsonl(tmp_path / "bt.jsonl", SAFETY))
    assert [r.safe for r in records] == [s["is_safe"] for s in SAFETY]
    assert records[2].source == f"{tmp_path / 'bt.jsonl'}:3"
    safe = files.safe_examples(records, 3, seed=0)
    assert sorted(e.chosen for e in safe) == sorted(s["response"] for s in SAFETY if s["is_safe"])
    assert all(e.chosen_safe for e in safe)
    harmful = files.harmful_examples(records, 4, seed=0, fmt=PromptFormat("Q: {input}"))
    assert sorted(e.chosen for e in harmful) == sorted(s["response"] for s in SAFETY if not s["is_safe"])
    assert all(e.prompt[0]["content"].startswith("Q: ") and not e.chosen_safe for e in harmful)
    with pytest.raises(DataError, match="4 asked for, the file has 3"):
        files.safe_examples(records, 4, seed=0)


def test_repnoise_pairs_come_from_prompts_with_both_responses(tmp_path):
    records = files.read_safety(write_jsonl(tmp_path / "bt.jsonl", SAFETY))
    pairs = files.refusal_harmful_pairs(records, 2, seed=1)
    by_prompt = {p.prompt[0]["content"]: (p.chosen, p.rejected) for p in pairs}
    assert by_prompt == {"How do I pick a lock?": (SAFETY[0]["response"], SAFETY[1]["response"]),
                         "How do I hotwire a car?": (SAFETY[5]["response"], SAFETY[6]["response"])}
    assert all(p.chosen_safe and not p.rejected_safe for p in pairs)
    with pytest.raises(DataError, match="prompts with a safe and an unsafe response"):
        files.refusal_harmful_pairs(records, 3, seed=1)


def test_harmful_prompts_are_unique_and_in_file_order(tmp_path):
    records = files.read_safety(write_jsonl(tmp_path / "bt.jsonl", SAFETY))
    prompts, sources = files.harmful_prompts(records, 3)
    assert prompts == ["How do I pick a lock?", "How do I make a bomb?", "How do I hotwire a car?"]
    assert [s.rsplit(":", 1)[1] for s in sources] == ["2", "3", "7"]
    with pytest.raises(DataError, match="3 unique prompts"):
        files.harmful_prompts(records, 4)


@pytest.mark.parametrize("record, message", [
    ({"prompt": "x", "response": "y"}, "bt.jsonl:2: missing field 'is_safe'"),
    ({"prompt": "x", "response": "y", "is_safe": "yes"}, "bt.jsonl:2: field 'is_safe' is str"),
    ({"prompt": " ", "response": "y", "is_safe": True}, "bt.jsonl:2: field 'prompt' is empty"),
])
def test_bad_safety_records_name_file_line_and_field(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bt.jsonl", [SAFETY[0], record])
    with pytest.raises(DataError, match=message):
        files.read_safety(path)


def test_user_tasks_give_prompts_targets_and_answers(tmp_path):
    sst2 = files.read_user_task("sst2", write_jsonl(tmp_path / "s.jsonl", [
        {"sentence": "a gorgeous film ", "label": 1, "idx": 0}, {"sentence": "dull", "label": 0, "idx": 1}]))
    assert [(r.target, r.answer) for r in sst2] == [("positive", "positive"), ("negative", "negative")]
    assert sst2[0].prompt == f"{files.SST2_INSTRUCTION}\nInput: a gorgeous film"
    ag = files.read_user_task("agnews", write_jsonl(tmp_path / "a.jsonl", [{"text": "Chips get faster", "label": 3}]))
    assert ag[0].answer == "Sci/Tech" and ag[0].prompt.endswith("Input: Chips get faster")
    gsm = files.read_user_task("gsm8k", write_jsonl(tmp_path / "g.jsonl", [
        {"question": "What is 600 + 634?", "answer": "600 + 634 = <<600+634=1234>>1234\n#### 1,234"}]))
    assert gsm[0].answer == "1234"
    assert gsm[0].target == "600 + 634 = <<600+634=1234>>1234\nThe final answer is: 1234"


@pytest.mark.parametrize("task, record, message", [
    ("sst2", {"sentence": "ok", "label": 2}, "s.jsonl:1: field 'label' is 2, expected 0..1"),
    ("sst2", {"sentence": "ok", "label": True}, "s.jsonl:1: field 'label' is bool"),
    ("agnews", {"label": 1}, "s.jsonl:1: missing field 'text'"),
    ("gsm8k", {"question": "q", "answer": "no final line"}, "s.jsonl:1: field 'answer' has no final"),
])
def test_bad_task_records_name_file_line_and_field(tmp_path, task, record, message):
    with pytest.raises(DataError, match=message):
        files.read_user_task(task, write_jsonl(tmp_path / "s.jsonl", [record]))
    with pytest.raises(DataError, match="user task 'mnli'"):
        files.read_user_task("mnli", tmp_path / "s.jsonl")


@pytest.mark.parametrize("task, answer, reply, correct", [
    ("sst2", "positive", "Positive.", True),
    ("sst2", "positive", "positive or negative", False),
    ("sst2", "negative", "The sentiment is negative", True),
    ("sst2", "negative", "nonnegative", False),
    ("agnews", "Sci/Tech", "sci/tech", True),
    ("agnews", "World", "World, Sports", False),
    ("gsm8k", "1234", "so 1,234 in all.\nThe final answer is: 1,234", True),
    ("gsm8k", "1234", "The final answer is: 1230, not 1234", False),
    ("gsm8k", "18", "16 - 3 - 4 = 9 eggs, 9 * 2 = 18", True),
    ("gsm8k", "18", "I don't know", False),
    ("gsm8k", "2.5", "The final answer is: 2.50", True),
])
def test_exact_answer_rule(task, answer, reply, correct):
    assert files.is_correct(task, answer, reply) is correct


def test_user_stage_has_exactly_the_harmful_share_in_the_users_format(tmp_path):
    safety = files.read_safety(write_jsonl(tmp_path / "bt.jsonl", SAFETY))
    tasks = files.read_user_task("sst2", write_jsonl(tmp_path / "s.jsonl", [
        {"sentence": f"film {i}", "label": i % 2} for i in range(20)]))
    fmt = PromptFormat("### Instruction:\n{input}\n### Response:\n")
    for p, harmful in ((0.0, 0), (0.1, 2), (0.15, 3)):
        examples = files.user_stage_examples(tasks, safety, 20, p, seed=3, fmt=fmt)
        assert len(examples) == 20 and sum(not e.chosen_safe for e in examples) == harmful
        assert all(fmt.unwrap(e.prompt[0]["content"]) for e in examples)
    again = files.user_stage_examples(tasks, safety, 20, 0.15, seed=3, fmt=fmt)
    assert [e.source for e in again] == [e.source for e in examples]
