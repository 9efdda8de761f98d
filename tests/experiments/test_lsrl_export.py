"""``python -m experiments.lsrl_export`` end to end on a small dictionary: both checkpoints written, the chain read
back equal, transformers' forward answering every query, the cached path agreeing, the report complete; bad
settings refused with the launcher's error and an existing export kept unless --overwrite."""

import json

import pytest

from experiments.lsrl_export import ExportConfig, main
from recurrent import CompileError

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_small_dictionary_export_is_checked_and_reported(tmp_path):
    cfg = ExportConfig(key_length=2, pairs=6, vocab=6, batch=4, out_dir=str(tmp_path))
    report = main(cfg)
    assert report["answers_right"] == report["queries"] == 6
    assert report["chain_round_trip_equal"] and report["streaming_argmax_equal"]
    assert report["max_abs_output_error_at_answers"] < 1e-4
    assert json.loads((tmp_path / "report.json").read_text())["answers_right"] == 6
    assert "6 / 6" in (tmp_path / "report.md").read_text()
    for f in ("chain/chain.json", "chain/chain.safetensors", "hf_mamba/config.json", "hf_mamba/model.safetensors",
              "hf_mamba/lsrl_layout.json"):
        assert (tmp_path / f).is_file(), f
    with pytest.raises(CompileError, match="exists"):
        main(cfg)
    assert main(ExportConfig(key_length=2, pairs=6, vocab=6, queries=2, overwrite=True,
                             out_dir=str(tmp_path)))["queries"] == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "nope"}, "--mode 'nope'"),
    ({"vocab": 2}, "--vocab 2"),
    ({"queries": 0}, "--queries 0"),
    ({"pairs": 0}, "at least 1"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(CompileError, match=message):
        ExportConfig(**kwargs)
