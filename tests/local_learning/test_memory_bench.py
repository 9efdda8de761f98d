"""The local-memory benchmark: a variant measured in a fresh process gives the same compiled figures as in this
one, the fresh process gets the parent's settings, and every ratio (to BP and to checkpointed BP) is filled."""

import dataclasses

import tyro

from experiments.bench import local_memory as bench

TINY = bench.Config(arch="resnet8", batch_size=8, image_size=8, modules=(2,), iters=1, host_loop=False,
                    json_out="")


def test_fresh_process_gets_the_same_settings():
    flags = bench._flags(TINY, "local K=2", "/tmp/x.json")
    parsed = tyro.cli(bench.Config, args=flags)
    assert dataclasses.replace(parsed, only="", json_out="", fresh_process="auto") == TINY
    assert parsed.only == "local K=2" and parsed.fresh_process == "no"


def test_fresh_process_measures_what_this_process_measures_and_ratios_are_filled():
    here = bench.measure(TINY, "bp", 1, None, "bp")
    there = bench.in_fresh_process(TINY, "bp")
    for key in ("peak_bytes", "temp_bytes", "argument_bytes", "split_points"):
        assert here[0][key] == there[0][key]
    assert there[0]["step_seconds"] > 0  # at least one step ran before any device peak was read


def test_variants_and_ratios():
    names = [v[0] for v in bench.variants(dataclasses.replace(TINY, modules=(2, 4)))]
    assert names == ["bp", "bp_checkpoint", "local K=2", "local K=2 +SGR(jvp)", "local K=2 +SGR(jvp,remat)",
                     "local K=4", "local K=4 +SGR(jvp)", "local K=4 +SGR(jvp,remat)", "local K=4 +SGR(direct)"]
    rows = [{"executor": "bp", "peak_bytes": 100, "temp_bytes": 50, "step_seconds": 1.0, "device_peak_bytes": 200},
            {"executor": "bp_checkpoint", "peak_bytes": 40, "temp_bytes": 10, "step_seconds": 1.5},
            {"executor": "local K=2", "peak_bytes": 60, "temp_bytes": 20, "step_seconds": 0.9,
             "device_peak_bytes": 150},
            {"executor": "local K=2 host loop (bound)", "peak_bytes": 55, "module_temp_bytes": [1]}]
    bench.add_ratios(rows)
    assert rows[2]["peak_ratio"] == 0.6 and rows[2]["temp_ratio"] == 0.4
    assert rows[2]["time_ratio"] == 0.9 and rows[2]["time_ratio_vs_checkpoint"] == 0.6
    assert rows[2]["device_peak_ratio"] == 0.75 and rows[3]["peak_ratio"] == 0.55


def test_target_compiles_for_an_accelerator_chip_without_it():
    """``--target``: abstract state and batch on one compile-only TPU chip; the figures are that compiler's (its
    tile padding makes them differ from XLA:CPU's for the same step), with no timing and no allocator peak."""
    cfg = dataclasses.replace(TINY, iters=0, host_loop=True, target="tpu-v5e-4")
    tpu = bench.measure(cfg, "local K=2", 2, bench.ReconcileConfig(), "local")
    cpu = bench.measure(dataclasses.replace(cfg, target=""), "local K=2", 2, bench.ReconcileConfig(), "local")
    assert tpu[0]["device_peak_bytes"] is None and tpu[0]["step_seconds"] != tpu[0]["step_seconds"]  # NaN
    assert tpu[0]["peak_bytes"] > 0 and tpu[0]["peak_bytes"] != cpu[0]["peak_bytes"]
    assert tpu[1]["executor"].endswith("host loop (bound)") and len(tpu[1]["module_temp_bytes"]) == 2


def test_on_chip_memory_setting_reaches_the_compiler():
    """``--no-on-chip-memory`` compiles with every buffer in HBM (tests/runtime/test_accelerator_memory.py shows
    what that changes); the figures differ from the default compile's."""
    cfg = dataclasses.replace(TINY, iters=0, target="tpu-v5e-4")
    on_chip = bench.measure(cfg, "local K=2", 2, bench.ReconcileConfig(), "local")[0]
    in_hbm = bench.measure(dataclasses.replace(cfg, on_chip_memory=False), "local K=2", 2, bench.ReconcileConfig(),
                           "local")[0]
    assert in_hbm["temp_bytes"] != on_chip["temp_bytes"]
