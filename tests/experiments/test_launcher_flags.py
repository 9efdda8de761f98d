"""Every launcher takes its run directory as ``--run.out-dir`` and (where it runs on a mesh) the mesh as
``--run.mesh.*``; the flags of earlier versions (``--out-dir``, ``lm_generate --mesh.*``, ``bfpo_compare
--compare.*``) still parse, with a deprecation line."""

import pytest

from experiments import bfpo_compare, bfpo_train, hft, local_learning_compare, local_learning_train, lsrl_stability
from experiments.config_file import out_dir_of
from experiments.configs.bfpo_compare import upgrade_compare_flags
from experiments.configs.bfpo_eval import BFPOEvalConfig
from experiments.configs.bfpo_train import upgraded_args
from experiments.configs.lm_generate import LMGenerateConfig, upgrade_flags
from experiments.configs.lsrl_approx import LSRLApproxConfig
from experiments.configs.mlp_regression import MLPRegressionConfig
from experiments.local_learning_deep_linear import DeepLinearCompareConfig
from experiments.lsrl_compat import CompatConfig
from experiments.lsrl_export import ExportConfig
from experiments.run import cli
from runtime.mesh import MeshConfig

MESH = ["--run.mesh.data", "1", "--run.mesh.fsdp", "8"]


def parse(config_type, args, upgrade=None):
    return cli(config_type, lambda c: c, args=args, upgrade=upgrade, writes_config=True)


def mesh_of(cfg):
    for path in ("run.mesh", "compare.run.mesh", "mesh"):
        value = cfg
        for name in path.split("."):
            value = getattr(value, name, None)
        if isinstance(value, MeshConfig):
            return value
    return None


@pytest.mark.parametrize("config_type, head, has_mesh", [
    (bfpo_train.config_type(), ["tiny"], True),
    (local_learning_train.config_type(), ["digits"], True),
    (MLPRegressionConfig, [], True),
    (BFPOEvalConfig, [], True),
    (LMGenerateConfig, [], True),
    (bfpo_compare.config_type(), ["synthetic"], True),
    (hft.config_type(), ["synthetic"], True),
    (local_learning_compare.CompareConfig, [], True),
    (LSRLApproxConfig, [], True),
    (lsrl_stability.config_type(), ["small"], False),
    (DeepLinearCompareConfig, [], False),
    (CompatConfig, ["--published", "/nowhere"], False),
    (ExportConfig, [], False),
])
def test_every_launcher_takes_run_out_dir_and_run_mesh(config_type, head, has_mesh, tmp_path):
    out = str(tmp_path / "run")
    cfg = parse(config_type, [*head, "--run.out-dir", out, *(MESH if has_mesh else [])])
    if hasattr(cfg, "compare"):
        cfg = cfg.compare
    if hasattr(cfg, "hft"):
        cfg = cfg.hft
    assert out_dir_of(cfg) == out
    if has_mesh:
        assert mesh_of(cfg) == MeshConfig(data=1, fsdp=8)


def test_old_flags_are_upgraded_with_a_deprecation_line(tmp_path, capsys):
    cfg = parse(LSRLApproxConfig, ["--out-dir", str(tmp_path)])
    assert cfg.out_dir == str(tmp_path) and "--out-dir is deprecated" in capsys.readouterr().err
    gen = parse(LMGenerateConfig, ["--mesh.fsdp", "4", "--mesh.data", "2"], upgrade=upgrade_flags)
    assert gen.run.mesh == MeshConfig(data=2, fsdp=4) and "--mesh.fsdp is deprecated" in capsys.readouterr().err
    cmp = parse(bfpo_compare.config_type(), ["synthetic", "--compare.objectives", "bfpo", "--compare.out-dir",
                                             str(tmp_path)],
                upgrade=lambda a: upgraded_args(upgrade_compare_flags(a)))
    assert cmp.compare.objectives == ("bfpo",) and cmp.compare.out_dir == str(tmp_path)
    assert "--compare.out-dir is deprecated: use --run.out-dir" in capsys.readouterr().err
