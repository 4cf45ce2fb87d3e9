"""The command line: exit codes, one-line errors without tracebacks, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from click.testing import CliRunner

from bifamily.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "recipes" / "quickstart.toml")
TINY = ["--set", "run.steps=2", "--set", "train.batch_size=8", "--set", 'eval.report=""']


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_version_and_help():
    assert invoke("--version").output.startswith("bifamily, version")
    result = invoke("run", "--help")
    assert result.exit_code == 0 and "Examples:" in result.output and "--resume" in result.output


def test_validate_prints_components_and_parameter_counts():
    result = invoke("validate", QUICKSTART)
    assert result.exit_code == 0, result.output
    assert "generator" in result.output and "dcgan" in result.output
    assert "encoder.backbone" in result.output and "discriminator" in result.output


def test_dry_run_prints_the_resolved_recipe(tmp_path):
    result = invoke("run", QUICKSTART, "--set", "run.steps=17", "--dry-run", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0
    resolved = tomllib.loads(result.output)
    assert resolved["run"]["steps"] == 17 and resolved["optim"]["beta2"] == 0.999
    assert not (tmp_path / "r").exists()


def test_bad_recipe_reports_every_problem_and_exits_2_without_a_run_dir(tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "run", QUICKSTART, "--set", "run.steps=abc", "--set", "generator.channels=3",
        "--set", "encoder.kind=nope", "--out", str(out),
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert any("$.run.steps: expected int" in line for line in lines)
    assert any("$.generator.channels: unknown key" in line for line in lines)
    assert any("$.encoder.kind: unknown encoder 'nope' (installed:" in line for line in lines)
    assert "Traceback" not in result.output
    assert not out.exists()


def test_mismatched_dimensions_name_both_keys(tmp_path):
    result = invoke("validate", QUICKSTART, "--set", "loss.x_unary=1.0", "--set", "discriminator.unary=false")
    assert result.exit_code == 2
    assert "$.loss: needs score s_x but $.discriminator does not produce it" in result.stderr


def test_missing_data_path_is_a_clear_error(tmp_path):
    result = invoke(
        "run", QUICKSTART, "--set", f'data={{kind = "mnist", root = "{tmp_path / "nowhere"}"}}',
        "--out", str(tmp_path / "run"),
    )
    assert result.exit_code == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    result = invoke("run", QUICKSTART, *TINY, "--out", str(tmp_path / "run"), "--resume")
    assert result.exit_code == 2
    assert "--resume: no checkpoint in" in result.stderr


def test_truncated_checkpoint_on_resume_is_refused(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", QUICKSTART, *TINY, "--out", str(out)).exit_code == 0
    [snapshot] = (out / "checkpoints").glob("step-*/snapshot.safetensors")
    snapshot.write_bytes(snapshot.read_bytes()[:100])
    result = invoke("run", QUICKSTART, *TINY, "--set", "run.steps=3", "--out", str(out), "--resume")
    assert result.exit_code == 2
    assert "snapshot.safetensors" in result.stderr and "Traceback" not in result.output


def test_existing_run_dir_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", QUICKSTART, *TINY, "--out", str(out)).exit_code == 0
    result = invoke("run", QUICKSTART, *TINY, "--out", str(out))
    assert result.exit_code == 2 and "holds a run already" in result.stderr


def test_plugins_lists_builtins_with_distribution_and_components():
    result = invoke("plugins", "--json")
    rows = {row["plugin"]: row for row in json.loads(result.output)}
    assert rows["dcgan"]["distribution"] == "bifamily"
    assert rows["dcgan"]["components"]["generator"] == ["dcgan"]
    assert "gaussian" in rows["priors"]["components"]["prior"]
    text = invoke("plugins").output
    assert "dcgan  (bifamily" in text


def test_console_script_runs_as_a_module():
    """`python -m bifamily` is what torchrun launches."""
    env = {**os.environ, "BIFAMILY_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, "-m", "bifamily", "validate", QUICKSTART, "--set", "prior.dim=0"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "$.prior.dim" in done.stderr
