"""The evaluation launcher end to end on the tiny model: every task type through the CLI (registry tasks, the
packaged HarmBench prompts, multiple choice, YAML task files from a temp dir), results.json as standard JSON with
each score's judge, version, axis and direction; an interrupted evaluation resumed skips its finished prompts and
ends as an uninterrupted one; a training run's directory evaluates the same from its export, its config.json or
its checkpoint's record; ``--config`` reads a run's config.json back."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bfpo.errors import BFPOError
from bfpo.model.llama import model_from_params
from bfpo.model.load_hf import save_hf
from bfpo.model import source as model_source
from experiments import bfpo_eval, bfpo_train
from experiments.configs.bfpo_eval import BFPOEvalConfig
from experiments.run import EXIT_REFUSED, cli
from experiments.tasks import bfpo_eval as eval_task
from runtime import make_mesh

FAST = ["--model.kind", "tiny", "--max-new-tokens", "6", "--batch-size", "8"]


def run_eval(out_dir, *args):
    return cli(BFPOEvalConfig, bfpo_eval.main, expected_errors=(BFPOError,), writes_config=True,
               args=[*FAST, "--run.out-dir", str(out_dir), *args])


def strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{path}: non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def samples(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    """The tiny model saved as a Hugging Face directory, to stand in for a local judge model."""
    cfg, params, tok = model_source.load_or_init("tiny", "", make_mesh(), seed=1)
    return save_hf(model_from_params(cfg, params), tmp_path_factory.mktemp("judge") / "hf", tokenizer=tok)


def test_every_task_type_through_the_cli(tmp_path, tiny_judge_dir):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"Is {i} even?", "answer": i % 2}) + "\n" for i in range(5)))
    (tmp_path / "mc.yaml").write_text("task: parity\naxis: helpfulness\ndataset_path: qa.jsonl\n"
                                      "doc_to_text: 'Q: {{q}}\\nA:'\ndoc_to_choice: [\"yes\", \"no\"]\ndoc_to_target: answer\n")
    (tmp_path / "gen.yaml").write_text("task: asks\naxis: harmlessness\noutput_type: generate_until\n"
                                       "dataset_path: qa.jsonl\ndoc_to_text: '{{q}}'\n")
    out = tmp_path / "eval"
    results = run_eval(out, "--tasks", "synthetic_harmful", "benign", "harmbench", "synthetic_safe_preference",
                       str(tmp_path / "mc.yaml"), str(tmp_path / "gen.yaml"), "--limit", "8",
                       "--judges", "refusal-phrases", "lm-classifier", "ground-truth",
                       "--judge-model.kind", "hf", "--judge-model.path", str(tiny_judge_dir))
    on_disk = strict_json(out / "results.json")
    assert on_disk == json.loads(json.dumps(results))
    rows = {(r["task"], r["judge"]): r for r in on_disk["results"]}
    lm = "lm-classifier:hf"
    assert set(rows) == {("synthetic_harmful", "synthetic-ground-truth-safety"), ("benign", "refusal-phrases"),
                         ("harmbench", "refusal-phrases-on-harmful"), ("harmbench", lm),
                         ("synthetic_safe_preference", "loglikelihood-multiple-choice"),
                         ("parity", "loglikelihood-multiple-choice"), ("asks", "refusal-phrases-on-harmful"),
                         ("asks", lm)}
    for r in on_disk["results"]:
        assert {"n", "score", "stderr", "judge", "judge_version", "axis", "direction", "higher_is_better"} <= set(r)
        assert 0.0 <= r["score"] <= 1.0 and r["direction"] == ("higher is better" if r["higher_is_better"]
                                                                else "lower is better")
    assert rows[("benign", "refusal-phrases")]["axis"] == "over_refusal"
    assert rows[("benign", "refusal-phrases")]["higher_is_better"] is False
    assert rows[("harmbench", lm)]["axis"] == "harmlessness" and rows[("parity", "loglikelihood-multiple-choice")][
        "n"] == 5
    assert on_disk["axes"]["harmlessness"]["higher_is_better"] is True
    # Every prompt and question once, with its reply and every judge's verdict.
    lines = samples(out)
    assert len(lines) == 8 + 8 + 8 + 8 + 5 + 5
    harm = [s for s in lines if s["task"] == "harmbench"]
    assert all(set(s["verdicts"]) == {"refusal-phrases-on-harmful", lm} and s["prompt"] and "reply" in s
               for s in harm)
    assert sorted(s["index"] for s in harm) == list(range(8))
    text = (out / "results.md").read_text()
    assert "refusal_rate ↓" in text and "harmless_rate ↑" in text and "garak" in text
    # The run directory's config.json reads back with --config (and a flag after it still overrides).
    config = strict_json(out / "config.json")
    assert config["tasks"][:2] == ["synthetic_harmful", "benign"] and config["limit"] == 8
    again = cli(BFPOEvalConfig, lambda c: c, args=["--config", str(out / "config.json"), "--limit", "2"])
    assert again.limit == 2 and again.tasks == tuple(config["tasks"]) and again.judge_model.kind == "hf"


def test_config_file_errors_name_the_field(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("model:\n  kind: tiny\nlimit: lots\n")
    with pytest.raises(SystemExit) as e:
        cli(BFPOEvalConfig, lambda c: c, args=["--config", str(bad)])
    assert e.value.code == EXIT_REFUSED and "c.yaml.limit: expected int" in capsys.readouterr().err
    bad.write_text("model:\n  kind: tiny\n  size: 7\n")
    with pytest.raises(SystemExit):
        cli(BFPOEvalConfig, lambda c: c, args=["--config", str(bad)])
    assert "unknown field(s) ['size']" in capsys.readouterr().err


def test_a_resumed_evaluation_skips_finished_prompts_and_matches_an_uninterrupted_one(tmp_path, monkeypatch,
                                                                                    capsys):
    args = ("--tasks", "synthetic_harmful", "benign", "--limit", "16", "--seed", "3")
    whole = run_eval(tmp_path / "whole", *args)
    calls = []
    real = eval_task.generate_texts
    monkeypatch.setattr(eval_task, "generate_texts", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    # Interrupted after the first chunk of the first task, mid-way through writing the next line.
    out = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", out)
    kept = (out / "samples.jsonl").read_text().splitlines(keepends=True)[:8]
    (out / "samples.jsonl").write_text("".join(kept) + '{"task": "synthetic_harm')
    with pytest.raises(SystemExit) as e:
        run_eval(out, *args)
    assert e.value.code == EXIT_REFUSED and "--run.resume" in capsys.readouterr().err
    resumed = run_eval(out, *args, "--run.resume")
    assert calls == [8, 8]  # the second chunk of synthetic_harmful, and benign (8 prompts)
    assert resumed["results"] == whole["results"]
    key = lambda s: (s["task"], s["index"])  # noqa: E731
    assert sorted(samples(out), key=key) == sorted(samples(tmp_path / "whole"), key=key)
    # The side-by-side table reads both directories; a pooled row counts the verdicts of every task it pools.
    from experiments import bfpo_eval_table

    text = bfpo_eval_table.main(bfpo_eval_table.TableConfig(
        runs=(f"whole={tmp_path / 'whole'}", f"resumed={out}"), pool=("harm=synthetic_",), out=str(tmp_path / "t.md")))
    row = next(line for line in text.splitlines() if line.startswith("| benign |"))
    assert row.count("0.000 ± 0.000") == 2 and (tmp_path / "t.csv").is_file()
    pooled = [line for line in text.splitlines() if line.startswith("| harm |")]
    assert len(pooled) == 1 and "| 16 |" in pooled[0] and pooled[0].count("1.000 ± 0.000") == 2
    # Other sampling settings cannot continue these samples.
    with pytest.raises(SystemExit):
        run_eval(out, *args, "--run.resume", "--temperature", "0")
    assert "temperature was 0.7, now 0.0" in capsys.readouterr().err


def test_a_training_run_evaluates_the_same_from_its_export_config_and_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    cli(bfpo_train.config_type(), bfpo_train.main, args=[
        "tiny", "--trainable=", "--streams", "safety=synthetic,pairs=32,batch_size=8",
        "buffer=synthetic,pairs=16,batch_size=8,fractions=1/0/0/0",
        "--eval-pairs", "8", "--run.steps", "3", "--run.log-every", "1", "--run.mesh.data", "1", "--run.mesh.fsdp",
        "8", "--run.no-progress", "--run.no-tensorboard", "--run.no-plot", "--run.out-dir", str(run_dir)])
    assert (run_dir / "hf" / "config.json").is_file() and (run_dir / "config.json").is_file()
    from_checkpoint = tmp_path / "no_export"
    shutil.copytree(run_dir, from_checkpoint, ignore=shutil.ignore_patterns("hf"))
    from_meta = tmp_path / "no_config"
    shutil.copytree(from_checkpoint, from_meta)
    (from_meta / "config.json").unlink()
    lls = {}
    for name, path in (("export", run_dir), ("config", from_checkpoint), ("meta", from_meta)):
        out = tmp_path / f"eval_{name}"
        res = cli(BFPOEvalConfig, bfpo_eval.main, args=[
            "--model.kind", "run", "--model.path", str(path), "--tasks", "synthetic_safe_preference", "--limit", "6",
            "--batch-size", "8", "--run.out-dir", str(out)])
        assert res["model"].startswith("run ")
        lls[name] = np.array([s["loglikelihoods"] for s in sorted(samples(out), key=lambda s: s["index"])])
    assert "export" in strict_json(tmp_path / "eval_export" / "results.json")["model"]
    assert "checkpoints/3" in strict_json(tmp_path / "eval_config" / "results.json")["model"]
    np.testing.assert_allclose(lls["config"], lls["export"], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(lls["meta"], lls["config"])
