"""The run directory: its layout, numbering, finding the run to resume, and log truncation on resume."""

from __future__ import annotations

import json

from bifamily.rundir import METRICS_FILE, STATS_FILE, RunDir, RunWriter, latest_run_dir, new_run_dir, step_name


def test_runs_are_numbered_after_the_highest_existing_one(tmp_path):
    assert new_run_dir(tmp_path, "quickstart") == tmp_path / "00000-quickstart"
    (tmp_path / "00004-bigan").mkdir()
    (tmp_path / "notes").mkdir()
    assert new_run_dir(tmp_path, "quickstart") == tmp_path / "00005-quickstart"


def test_resume_picks_the_newest_run_of_the_name_that_has_checkpoints(tmp_path):
    for name in ("00001-quickstart", "00002-bigan", "00003-quickstart"):
        RunDir(tmp_path / name).checkpoints.mkdir(parents=True)
    (tmp_path / "00004-quickstart").mkdir()  # no checkpoints folder: never got that far
    assert latest_run_dir(tmp_path, "quickstart") == tmp_path / "00003-quickstart"
    assert latest_run_dir(tmp_path, "ali") is None
    assert latest_run_dir(tmp_path / "missing", "quickstart") is None


def test_the_layout_and_the_checkpoint_entries_in_step_order(tmp_path):
    run = RunDir(tmp_path)
    assert not run.is_run_dir() and not run.has_checkpoint()
    for step in (20, 3):
        (run.checkpoints / step_name(step)).mkdir(parents=True)
    assert run.has_checkpoint()
    assert [p.name for p in run.step_entries()] == [step_name(3), step_name(20)]
    assert run.grid("samples", 3).parent == tmp_path / "samples"


def test_truncate_after_keeps_the_records_up_to_the_step_and_lines_it_cannot_read(tmp_path):
    writer = RunWriter(tmp_path)
    for step in (1, 2, 3):
        writer.append(STATS_FILE, {"step": step, "loss": float("nan") if step == 2 else 0.5})
    (tmp_path / METRICS_FILE).write_text('{"step": 3}\nnot json\n', encoding="utf-8")
    writer.truncate_after(2)
    stats = [json.loads(line) for line in (tmp_path / STATS_FILE).read_text().splitlines()]
    assert stats == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": "nan"}]
    assert (tmp_path / METRICS_FILE).read_text() == "not json\n"
