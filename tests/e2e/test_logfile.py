"""RUN_DIR/log.txt holds what a run prints; progress is plain lines off a terminal; optional
TensorBoard events mirror the run's records."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bifamily.cli import main
from bifamily.errors import DataError
from bifamily.precision import resolve_precision
from bifamily.runlog import LOG_FILE, PROGRESS, ProgressLines, file_log
from bifamily.stopping import Diverged
from bifamily.tensorboard_events import TensorBoardEvents

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "recipes" / "quickstart.toml")
TINY = [
    "--set", "train.batch_size=8", "--set", "generator.ch=8", "--set", "encoder.ch=8", "--set", "discriminator.ch=8",
    "--set", "discriminator.z_width=32", "--set", "discriminator.joint_width=32", "--set", "prior.dim=16",
    "--set", 'eval.report=""', "--set", "run.log_every=1", "--set", "run.sample_every=2",
]


def run(out: Path, *args: str):
    result = CliRunner().invoke(main, ["run", QUICKSTART, *TINY, "--out", str(out), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("log") / "run"
    return out, run(out, "--set", "run.steps=2", "--no-progress")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_progress_line_has_step_losses_speed_elapsed_and_eta():
    clock = Clock()
    lines = ProgressLines(total_steps=100, start_step=10, clock=clock)
    clock.now += 30.0  # 20 steps in 30 s: the remaining 70 take 105 s
    record = {"step": 30, "loss_d": 1.25, "s_xz_real": 0.5, "loss_eg": 0.5, "images_per_s": 63.6}
    assert lines.line(record) == "step 30/100  loss_d 1.2500  loss_eg 0.5000  64 img/s  elapsed 0:00:30  ETA 0:01:45"
    clock.now += 10.0  # a guard rollback back to step 20: the pace is measured anew from there
    assert lines.line({"step": 20, "loss_d": 1.0}) == "step 20/100  loss_d 1.0000  elapsed 0:00:40"
    clock.now += 4.0  # 2 steps in 4 s: the remaining 78 take 156 s
    assert lines.line({"step": 22}) == "step 22/100  elapsed 0:00:44  ETA 0:02:36"


def test_off_a_terminal_progress_is_plain_lines_also_written_to_log_txt(finished):
    out, result = finished
    assert "\r" not in result.stderr  # no progress-bar redraws
    progress = [line for line in result.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["1/2", "2/2"]
    assert all("loss_d " in line and " img/s " in line and " ETA " in line for line in progress)
    assert f"run directory: {out}" in result.stdout
    log = (out / LOG_FILE).read_text()
    precision = resolve_precision("auto", torch.device("cpu"))  # the quickstart's train.precision
    assert f"starting 'quickstart' (2 steps, {precision} (auto))" in log.splitlines()[0]
    for printed in [*progress, f"run directory: {out}"]:
        assert printed in log


def test_a_resumed_run_appends_to_the_log_and_a_bar_keeps_the_plain_lines_off_the_terminal(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    before = (out / LOG_FILE).read_text()
    result = run(out, "--set", "run.steps=3", "--resume", "--progress")
    assert f"resumed {out} at step 2" in result.stderr
    assert "3/3" in result.stderr and not any(line.startswith("step ") for line in result.stderr.splitlines())
    log = (out / LOG_FILE).read_text()
    assert log.startswith(before)
    added = log[len(before):]
    assert f"resuming 'quickstart' (3 steps, {resolve_precision('auto', torch.device('cpu'))} (auto))" in added and f"resumed {out} at step 2" in added
    assert "step 3/3  loss_d" in added and "step 2/2" not in added


def test_the_log_keeps_warnings_and_why_the_run_ended(tmp_path):
    with pytest.raises(Diverged), pytest.warns(UserWarning, match="careful"):  # warnings still reach Python
        with file_log(tmp_path, "starting"):
            logging.getLogger(PROGRESS).info("step 1/9")
            warnings.warn("careful", UserWarning)
            raise Diverged(["training diverged: at step 2 the loss was not finite", "set guard"])
    with pytest.raises(DataError):
        with file_log(tmp_path, "resuming"):
            raise DataError("$.data.root: nowhere")
    lines = [line.split(" ", 2)[2] for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert lines == [
        "INFO    starting",
        "INFO    step 1/9",
        f"WARNING UserWarning: careful ({__file__}:{_line_of('warnings.warn(')})",
        "ERROR   stopped: training diverged: at step 2 the loss was not finite",
        "ERROR   stopped: set guard",
        "INFO    resuming",
        "ERROR   error: $.data.root: nowhere",
    ]
    logging.getLogger(PROGRESS).info("after the block")
    assert "after the block" not in (tmp_path / LOG_FILE).read_text()


def _line_of(text: str) -> int:
    return next(i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1) if line.strip().startswith(text))


# -- TensorBoard ------------------------------------------------------------------------------------


def test_tensorboard_events_mirror_the_stats_and_the_grids(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run(out, "--set", "run.steps=2", "--set", "run.tensorboard=true", "--no-progress")
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    for key in ("loss_d", "loss_eg", "images_per_s"):
        logged = [(event.step, event.value) for event in events.Scalars(f"train/{key}")]
        assert logged == [(s["step"], pytest.approx(s[key], rel=1e-6)) for s in stats]
    assert [event.step for event in events.Images("samples")] == [2]
    assert [event.step for event in events.Images("reconstructions")] == [2]


def test_tensorboard_hides_the_steps_a_rollback_or_a_resume_went_back_over(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = TensorBoardEvents(tmp_path)
    for step, loss in [(1, 1.0), (2, 2.0), (3, 3.0), (2, 20.0), (3, 30.0)]:  # rolled back to step 1
        events.appended("stats.jsonl", {"step": step, "loss_d": loss})
    events.close()
    resumed = TensorBoardEvents(tmp_path)  # from a checkpoint at step 2
    resumed.appended("stats.jsonl", {"step": 3, "loss_d": 300.0})
    resumed.appended("metrics.jsonl", {"step": 3, "metric": "knn", "knn_top1": 0.5, "settings": {"k": 1}})
    resumed.close()
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("train/loss_d")] == [(1, 1.0), (2, 20.0), (3, 300.0)]
    assert [(e.step, e.value) for e in accumulator.Scalars("knn/knn_top1")] == [(3, 0.5)]
    assert accumulator.Tags()["scalars"] == ["train/loss_d", "knn/knn_top1"]


def test_tensorboard_without_the_package_is_a_recipe_error(monkeypatch):
    for name in [name for name in sys.modules if name == "tensorboard" or name.startswith(("tensorboard.", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what an uninstalled package looks like to import
    result = CliRunner().invoke(main, ["validate", QUICKSTART, *TINY, "--set", "run.tensorboard=true"])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {QUICKSTART}: $.run.tensorboard: needs the tensorboard package")
    assert line.endswith("install it with: pip install tensorboard")
