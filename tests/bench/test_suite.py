"""The performance suite (``python -m bench.suite``): its --quick run writes every figure it promises,
and the derived figures follow from the measured ones.

The end-to-end run covers two models (about a minute on two cores): the one behind the conv-fraction
target and the anchor's; the other models differ only in their recipes. The image-folder data
pipeline of the full-size model is checked on its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.suite import machine, report
from bench.suite.__main__ import Suite
from bench.suite.configs import MODELS, MODES, QUICK, SCALING_MODES
from bench.suite.isolation import MeasurementFailed, isolated
from bench.suite.pipeline import pipeline_rate

REPO = Path(__file__).resolve().parents[2]

QUICK_MODELS = ["bigbigan_small", "mnist32_matched"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suite")
    output, plot = folder / "suite.json", folder / "scaling.png"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--quick", "--models", *QUICK_MODELS, "--output", str(output), "--plot", str(plot)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(output.read_text()), plot, completed.stdout


def _native_modes(result):
    return {name for name, mode in MODES.items() if mode.precision not in result["skipped_precisions"]}


def test_quick_run_measures_every_model_in_every_mode(quick_run):
    result, _, _ = quick_run
    assert result["quick"] is True
    limits = result["limits"]
    assert set(limits) == {"fp32", "bf16"} - set(result["skipped_precisions"])
    assert all(limits[p][k] > 0 for p in limits for k in ("conv_gflops", "matmul_gflops"))
    assert list(result["models"]) == QUICK_MODELS
    for name, entry in result["models"].items():
        assert set(entry["parameters"]) >= {"generator", "encoder", "discriminator"}
        flops = entry["flops_per_step"]
        assert flops > 0
        assert set(entry["modes"]) == set(MODES), name
        for mode, row in entry["modes"].items():
            if mode not in _native_modes(result):
                assert row == {"skipped": result["skipped_precisions"][MODES[mode].precision]}
                continue
            assert "error" not in row, f"{name} {mode}: {row.get('error')}"
            step, batch, updates = row["step_seconds"], row["batch_size"], row["d_steps"] + 1
            assert step > 0 and row["step_cpu_seconds"] > 0 and row["steps_timed"] == QUICK.timed_steps
            assert row["images_per_s"] == pytest.approx(batch * updates / step)
            assert row["batch_images_per_s"] == pytest.approx(batch / step)
            assert row["achieved_gflops"] == pytest.approx(flops / step / 1e9)
            precision = MODES[mode].precision
            assert row["fraction_of_conv_limit"] == pytest.approx(row["achieved_gflops"] / limits[precision]["conv_gflops"])
            assert row["fraction_of_matmul_limit"] == pytest.approx(row["achieved_gflops"] / limits[precision]["matmul_gflops"])
            assert row["speedup_vs_fp32"] == pytest.approx(entry["modes"]["fp32"]["step_seconds"] / step)
            assert row["peak_rss_bytes"] >= row["rss_start_bytes"] > 0


def test_quick_run_compares_the_data_pipeline_with_the_fastest_step(quick_run):
    result, _, _ = quick_run
    for name, entry in result["models"].items():
        pipeline = entry["data_pipeline"]
        timed = [mode for mode, row in entry["modes"].items() if "step_seconds" in row]  # skipped modes have no time
        fastest = min(timed, key=lambda mode: entry["modes"][mode]["step_seconds"])
        assert pipeline["demand_mode"] == fastest
        assert pipeline["demand_images_per_s"] == entry["modes"][fastest]["images_per_s"]
        assert pipeline["margin"] == pytest.approx(pipeline["images_per_s"] / pipeline["demand_images_per_s"])


def test_the_full_size_pipeline_decodes_generated_jpegs():
    spec = next(spec for spec in MODELS if spec.name == "bigbigan_highres")
    result = pipeline_rate(spec.recipe, (*spec.overrides, *spec.quick), batches=2, jpeg_images=4)
    assert result["data"] == "image_folder" and result["jpeg_size"] == [500, 375]
    assert result["images_per_s"] > 0 and result["batch_size"] == 2


def test_quick_run_measures_evaluation_throughput(quick_run):
    result, _, _ = quick_run
    for entry in result["models"].values():
        evaluation = entry["evaluation"]
        assert evaluation["images"] == QUICK.eval_images
        assert evaluation["probe_features_per_s"] > 0 and evaluation["fid_features_per_s"] > 0
        assert evaluation["fid_network"]


def test_quick_run_draws_the_scaling_plot(quick_run):
    result, plot, _ = quick_run
    points = result["scaling"]["points"]
    modes = [mode for mode in SCALING_MODES if mode in _native_modes(result)]
    assert set(result["scaling"]["skipped_modes"]) == set(SCALING_MODES) - set(modes)
    expected = {("batch_size", mode, batch) for mode in modes for batch in QUICK.scaling_batches}
    expected |= {("resolution", mode, side) for mode in modes for side in QUICK.scaling_resolutions}
    assert {(p["axis"], p["mode"], p[p["axis"]]) for p in points} == expected
    assert all(p["step_seconds"] > 0 for p in points)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_reports_anchor_revnet_and_targets(quick_run):
    result, _, stdout = quick_run
    anchor = result["anchor"]
    assert anchor["speedup"] == pytest.approx(anchor["ours"]["batch_images_per_s"] / anchor["reference"]["batch_images_per_s"])
    assert anchor["ours"]["parameters"]["generator"] > 0
    assert result["revnet"]["ratio_reversible_to_stored"]["peak_bytes"] > 0
    names = {t["target"] for t in result["targets"]}
    assert names == {
        "anchor images/s ratio",
        "model FLOP/s fraction of conv limit",
        "bf16/compile speedup over fp32 eager",
        "data pipeline / step demand",
        "RevNet peak memory / stored",
        "RevNet step time / stored",
    }
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    assert "targets:" in stdout and "reference" in stdout


# -- the derived figures, without running anything ---------------------------------------------------


def _row(seconds: float, **extra: float) -> dict[str, float]:
    return {"step_seconds": seconds, **extra}


def test_rates_are_fractions_of_the_limits_of_the_modes_precision():
    limits = {"fp32": {"conv_gflops": 100.0, "matmul_gflops": 50.0}, "bf16": {"conv_gflops": 400.0, "matmul_gflops": 800.0}}
    row = _row(2.0)
    report.add_rates(row, 240e9, limits, "bf16")
    assert row["achieved_gflops"] == 120.0
    assert row["fraction_of_conv_limit"] == 0.3 and row["fraction_of_matmul_limit"] == 0.15


def test_targets_compare_each_figure_with_its_threshold():
    models = {
        "bigbigan_small": {
            "modes": {
                "fp32": _row(2.0, speedup_vs_fp32=1.0, fraction_of_conv_limit=0.5),
                "bf16": _row(1.0, speedup_vs_fp32=2.0, fraction_of_conv_limit=0.7),
                "fp32_channels_last": _row(0.5, speedup_vs_fp32=4.0),  # fastest, but neither bf16 nor compiled
            },
            "data_pipeline": {"margin": 2.5},
        }
    }
    anchor = {"ours": {"mode": "bf16"}, "speedup": 2.5}
    revnet = {"ratio_reversible_to_stored": {"peak_bytes": 0.45, "step_seconds": 1.2}}
    found = {t["target"]: t for t in report.targets(models, anchor, revnet)}
    assert found["anchor images/s ratio"]["met"] is True
    assert found["model FLOP/s fraction of conv limit"]["value"] == 0.7
    speedup = found["bf16/compile speedup over fp32 eager"]
    assert (speedup["value"], speedup["met"], speedup["detail"]) == (2.0, True, "bigbigan_small (bf16)")
    assert found["data pipeline / step demand"]["met"] is False
    assert found["RevNet peak memory / stored"]["met"] is False  # at most 0.4
    assert found["RevNet step time / stored"]["met"] is True  # at most 1.5


def test_a_failed_mode_is_left_out_of_the_fastest():
    modes = {"fp32": _row(2.0), "compile": {"error": "Traceback ..."}}
    assert report.fastest(modes) == "fp32"
    assert report.fastest({"compile": {"error": "x"}}) is None


# -- precisions the hardware only emulates ---------------------------------------------------------


def test_without_native_bf16_the_machine_limits_measure_fp32_only(monkeypatch):
    monkeypatch.setattr(machine, "native_bf16", lambda device: False)
    measured = machine.measure_machine(machine.QUICK_SHAPES)
    assert list(measured["limits"]) == ["fp32"]
    assert measured["skipped_precisions"]["bf16"].startswith("skipped: no bf16 arithmetic in hardware")
    monkeypatch.setattr(machine, "native_bf16", lambda device: True)
    assert machine.skipped_precisions(machine.resolve_device("auto")) == {}


def test_modes_of_a_skipped_precision_are_recorded_as_skipped_and_never_timed(monkeypatch):
    timed = []
    monkeypatch.setattr(Suite, "attempt", lambda self, what, *args: timed.append(what) or {"error": "not run here"})
    reason = "skipped: no bf16 arithmetic in hardware on cpu"
    suite = Suite(QUICK, 1, {"bf16": reason})
    spec = next(spec for spec in MODELS if spec.name == "bigbigan_small")
    entry = suite.model(spec, list(MODES), {"fp32": {"conv_gflops": 1.0, "matmul_gflops": 1.0}})
    bf16_modes = {name for name, mode in MODES.items() if mode.precision == "bf16"}
    assert bf16_modes and all(entry["modes"][name] == {"skipped": reason} for name in bf16_modes)
    assert not any(name in what for what in timed for name in bf16_modes)
    assert sum(what.startswith("bigbigan_small ") for what in timed) >= len(MODES) - len(bf16_modes)
    result = {
        "limits": {"fp32": {"conv_gflops": 1.0, "matmul_gflops": 1.0}},
        "skipped_precisions": {"bf16": reason},
        "models": {"bigbigan_small": entry},
        "targets": [],
        "load_average": {"start": None, "end": None},
    }
    assert f"bf16: {reason}" in report.table(result)


# -- isolation -------------------------------------------------------------------------------------


def _allocate(megabytes: int) -> int:
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):  # touch every page so it is resident
        block[i] = 1
    return len(block)


def _fail() -> None:
    raise ValueError("broken configuration")


def test_isolated_reports_the_childs_own_peak_memory():
    outcome = isolated(_allocate, 128)
    assert outcome.value == 128 * 2**20
    assert outcome.peak_rss_bytes - outcome.rss_start_bytes >= 120 * 2**20


def test_isolated_raises_with_the_childs_traceback():
    with pytest.raises(MeasurementFailed, match="ValueError: broken configuration"):
        isolated(_fail)


def test_every_mode_overrides_the_three_train_keys():
    for mode in MODES.values():
        keys = [override.split("=")[0] for override in mode.overrides()]
        assert keys == ["train.precision", "train.channels_last", "train.compile"]
