"""bench/gpu_check.py refuses clearly without a GPU; its per-path records keep going after a failure."""

from __future__ import annotations

import torch

from bench import gpu_check


def test_without_a_gpu_it_refuses_in_one_line_with_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    output = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--output", str(output)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): run it on a machine with one"
    ]
    assert not output.exists()


def test_a_failing_path_is_recorded_with_its_error_and_the_next_one_still_runs():
    rows = []

    def broken():
        raise RuntimeError("CUDA error: no kernel image is available")

    gpu_check.check("broken path", broken, rows)
    gpu_check.check("working path", lambda: "fine", rows)
    assert [(row["path"], row["ok"]) for row in rows] == [("broken path", False), ("working path", True)]
    assert rows[0]["error"].strip().endswith("RuntimeError: CUDA error: no kernel image is available")
    assert rows[1]["detail"] == "fine" and all(row["seconds"] >= 0 for row in rows)
    text = gpu_check.table(rows, {"batch_size": None, "tried": []}, None)
    assert "broken path" in text and "ERROR" in text and "RuntimeError: CUDA error" in text
