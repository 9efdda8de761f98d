"""The approximation sweep launcher: results, plots, construction exact, approximation error falling with N."""

import json

from experiments.configs.lsrl_approx import LSRLApproxConfig
from experiments.lsrl_approx import main


def test_sweep_writes_results_and_plots(tmp_path):
    cfg = LSRLApproxConfig(
        out_dir=str(tmp_path), modes=("multiplicative",), grid_sizes=(2, 8, 32), targets=1, queries=8
    )
    summary = main(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    sweep = results["modes"]["multiplicative"]["sweep"]
    assert [p["tokens"] for p in sweep] == [3, 9, 33]
    assert all(p["construction_error"] < 1e-5 for p in sweep)
    errors = [p["approximation_error_mean"] for p in sweep]
    assert errors[0] > errors[1] > errors[2]
    assert (tmp_path / "error_vs_n.png").exists() and (tmp_path / "outputs.png").exists()
    assert summary.plot == str(tmp_path / "error_vs_n.png")


def test_config_names_the_bad_field():
    import pytest

    with pytest.raises(ValueError, match="LSRLApproxConfig.grid_sizes"):
        LSRLApproxConfig(grid_sizes=(500,))
    with pytest.raises(ValueError, match="LSRLApproxConfig.modes"):
        LSRLApproxConfig(modes=("gated",))
