"""run, run --dry-run and validate share one pre-flight: what a run refuses before it starts, the other
two refuse as well, with the same one-line, keyed error, exit code 2, and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bifamily.cli import main
from bifamily.errors import RecipeError
from bifamily.plugins import default_plugins
from bifamily.preflight import preflight
from bifamily.recipe import load

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
QUICKSTART = RECIPES / "quickstart.toml"
BIGBIGAN_SMALL = RECIPES / "bigbigan_small.toml"

REFUSED = [
    pytest.param(
        QUICKSTART, ['run.device="cuda"'], ["$.run.device"], id="cuda without CUDA",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of run.device = \"cuda\" on a machine without CUDA; where CUDA is present that recipe is valid"),
    ),
    pytest.param(QUICKSTART, ['run.device="cpu"', 'train.precision="fp16"'], ["$.train.precision"], id="fp16 on CPU"),
    pytest.param(QUICKSTART, ["train.batch_size=10", "train.accumulation=4"], ["$.train.batch_size"], id="batch split"),
    pytest.param(QUICKSTART, ["eval.every=100", 'eval.best="nope"'], ["$.eval.best"], id="unknown best value"),
    pytest.param(QUICKSTART, ['eval.stop_when="probe_top1 >= 0.5"'], ["$.eval.stop_when"], id="stop_when unscheduled"),
    pytest.param(
        QUICKSTART, ["eval.every=100", 'eval.stop_when="probe_top1 <= 0.5, nope >= 1"'],
        ["$.eval.stop_when", "$.eval.stop_when"], id="stop_when values",
    ),
    pytest.param(BIGBIGAN_SMALL, ["prior.dim=63"], ["$.prior.dim"], id="latent chunks"),
    pytest.param(
        BIGBIGAN_SMALL, ["data.resolution=48"], ["$.data.resolution", "$.data.resolution"], id="resolution layout"
    ),
    pytest.param(
        BIGBIGAN_SMALL, ["data.encoder_resolution=12"], ["$.data.encoder_resolution"], id="encoder resolution"
    ),
    pytest.param(
        QUICKSTART, ["loss.z_unary=0.0", "discriminator.unary=false"], ["$.loss"], id="unary scores"
    ),
]
COMMANDS = {
    "validate": ["validate"],
    "dry-run": ["run", "--dry-run", "--out", "run"],
    "run": ["run", "--out", "run"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("recipe", "overrides", "keys"), REFUSED)
def test_each_command_refuses_what_a_run_refuses(command, recipe, overrides, keys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arguments = [COMMANDS[command][0], str(recipe), *COMMANDS[command][1:]]
    result = CliRunner().invoke(main, [*arguments, *(arg for o in overrides for arg in ("--set", o))])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == len(keys), lines
    for line, key in zip(lines, keys):
        assert line.startswith("error: ") and (f"{key}:" in line or f"{key} is" in line), line
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []



@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize(
    ("arguments", "holds_run", "message"),
    [
        (["--out", "run"], True, "--out run: holds a run already; add --resume"),
        (["--out", "run", "--resume"], False, "--resume: no checkpoint in run/checkpoints"),
        (["--resume"], False, "--resume: no run of 'quickstart' with a checkpoint under "),
    ],
    ids=["out holds a run", "resume without checkpoint", "resume without a run"],
)
def test_the_dry_run_refuses_the_run_directory_a_run_refuses(arguments, holds_run, message, dry_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if holds_run:
        (tmp_path / "run" / "checkpoints" / "step-00000010").mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    command = ["run", str(QUICKSTART), *arguments, *(["--dry-run"] if dry_run else [])]
    result = CliRunner().invoke(main, [*command, "--set", f"run.out_root={str(tmp_path / 'runs')!r}"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert sorted(tmp_path.rglob("*")) == before

def test_every_problem_is_reported_at_once_data_and_model_alike(tmp_path):
    overrides = [
        f'data={{kind = "mnist", root = "{tmp_path / "nowhere"}"}}',
        "train.batch_size=10", "train.accumulation=4",
        "loss.z_unary=0.0", "discriminator.unary=false",
    ]
    recipe = load(QUICKSTART, default_plugins(), overrides)
    with pytest.raises(RecipeError) as raised:
        preflight(recipe)
    keys = [problem.split(":", 1)[0] for problem in raised.value.problems]
    assert keys == ["$.train.batch_size", "$.data.root", "$.loss"]


def test_preflight_builds_nothing_for_real():
    checked = preflight(load(BIGBIGAN_SMALL, default_plugins()))
    for module in checked.meta_model.modules().values():
        assert {t.device.type for t in (*module.parameters(), *module.buffers())} == {"meta"}
    assert checked.context.device == torch.device("cpu")
    assert len(checked.train_data) >= checked.recipe.train.batch_size and checked.metrics.report


def test_the_memory_check_counts_four_float32_copies_and_an_ema_of_g_and_e(monkeypatch):
    import bifamily.preflight as preflight_module

    checked = preflight(load(QUICKSTART, default_plugins(), ['run.device="cpu"']))
    counts = {
        name: sum(t.numel() for t in (*module.parameters(), *module.buffers()))
        for name, module in checked.meta_model.modules().items()
    }
    needed = 4 * (4 * sum(counts.values()) + counts["generator"] + counts["encoder"])
    monkeypatch.setattr(preflight_module, "device_memory", lambda device: needed)
    assert preflight_module.memory_problems(checked.meta_model, torch.device("cpu")) == []
    monkeypatch.setattr(preflight_module, "device_memory", lambda device: needed - 1)
    [problem] = preflight_module.memory_problems(checked.meta_model, torch.device("cpu"))
    largest = max(counts, key=counts.get)
    assert problem.startswith(f"$.{largest}: the run's weights alone need ") and "of cpu" in problem


def test_validating_imports_no_torchvision():
    """torchvision's import (with torch._dynamo's, which it pulls in) costs seconds of a command's start;
    the pre-flight needs neither its images nor its data sets."""
    script = (
        "import sys; from click.testing import CliRunner; from bifamily.cli import main; "
        f"result = CliRunner().invoke(main, ['validate', {str(QUICKSTART)!r}]); "
        "assert result.exit_code == 0, result.output; print('torchvision' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "False"
