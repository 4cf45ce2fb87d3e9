"""Plugins that misbehave: exit at import, implement a misspelt hook, are blocked or misnamed in the block
list, have no convolution to draw, or return a loss of another sound form. Each is named, listed as
failed or handled, and never ends a command silently."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from bifamily.cli import main
from bifamily.evaluation.plots import plot_run
from bifamily.interfaces import Loss, Scores
from bifamily.plugins import BLOCK_ENV, default_plugins
from bifamily.runlog import ProgressLines
from bifamily.testing import check_generator, check_plugin, check_prior
from bifamily.testing.losses import check_loss_on

from tests.helpers.tiny_model import TINY_MODEL

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_MODEL)
    return path




def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def listing() -> dict[str, dict]:
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    return {row["plugin"]: row for row in json.loads(result.stdout)}


LAPLACE = """
    import attrs
    from bifamily.config import option
    from bifamily.hookspecs import hookimpl

    @attrs.frozen
    class Config:
        \"\"\"A prior.\"\"\"
        dim: int = option(8, help="Dimension.")
        def build(self, ctx): ...

    @hookimpl
    def {hook}(register):
        register("laplace", Config)
"""


@pytest.mark.parametrize(
    "source, error",
    [
        ("import sys\nsys.exit(3)\n", "SystemExit (it called sys.exit(3))"),
        ("raise SystemExit\n", "SystemExit (it called sys.exit(None))"),
        ("import os\nraise GeneratorExit('odd')\n", "GeneratorExit: odd"),
        (LAPLACE.format(hook="bifamily_register_prior"), "implements unknown hook 'bifamily_register_prior'"),
        (
            LAPLACE.format(hook="bifamily_register_priors").replace("def bifamily_register_priors(register):",
                                                                     "def bifamily_register_priors(register):\n        raise SystemExit(1)"),
            "bifamily_register_priors raised SystemExit (it called sys.exit(1))",
        ),
    ],
    ids=["sys.exit", "bare-SystemExit", "GeneratorExit", "misspelt-hook", "exit-in-hook"],
)
def test_a_plugin_that_exits_or_misspells_its_hook_is_a_failed_plugin(recipe, third_party, source, error):
    third_party("bifamily-hostile", "thirdparty_hostile", source)
    row = listing()["thirdparty_hostile"]
    assert row["status"] == "failed" and row["distribution"] == "bifamily-hostile"
    assert error in row["error"]
    assert "dcgan" in listing()["dcgan"]["components"]["generator"]  # the others still load
    for command in (["validate", str(recipe)], ["run", str(recipe), "--dry-run"]):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: plugin 'thirdparty_hostile' (distribution bifamily-hostile 1.0) failed to load")
        assert error in line and f"{BLOCK_ENV}=thirdparty_hostile" in line


def test_a_kind_of_a_blocked_plugin_names_the_blocked_plugins(recipe, third_party, monkeypatch):
    third_party("bifamily-laplace", "thirdparty_laplace", LAPLACE.format(hook="bifamily_register_priors"))
    monkeypatch.setenv(BLOCK_ENV, "thirdparty_laplace")
    recipe.write_text(recipe.read_text().replace('kind = "gaussian"\ndim = 8', 'kind = "laplace"\ndim = 8'))
    result = invoke("validate", str(recipe))
    assert result.exit_code == 2
    assert "$.prior.kind: unknown prior 'laplace' (installed: " in result.stderr
    assert f"; not loaded, blocked by {BLOCK_ENV}: thirdparty_laplace)" in result.stderr


def test_a_block_list_naming_no_installed_plugin_is_refused(recipe, monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, "bifamily_prior,dcgan_typo")
    default_plugins.cache_clear()
    try:
        result = invoke("validate", str(recipe))
        listed = invoke("plugins")
    finally:
        default_plugins.cache_clear()
    assert result.exit_code == 2
    expected = f"{BLOCK_ENV} names 'bifamily_prior', 'dcgan_typo', which no installed plugin is called (installed: "
    assert result.stderr.startswith(f"error: {expected}")
    assert listed.exit_code == 0 and listed.stderr.startswith(f"warning: {expected}")


# -- plot: an encoder without convolutions ---------------------------------------------------------


def test_plot_draws_the_curves_and_skips_the_filters_of_an_encoder_without_conv2d(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stats.jsonl").write_text("".join(json.dumps({"step": s, "loss_d": 1.0 / s}) + "\n" for s in (1, 2, 3)))
    notes = []
    written = plot_run(run_dir, tmp_path / "plots", nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), notes.append)
    assert [path.name for path in written] == ["losses.png"]
    assert notes == ["the encoder (Sequential) has no Conv2d layer, so no filters.png"]


# -- losses: another sound form, and statistics by another name -------------------------------------


class LeastSquaresLoss(Loss):
    """LSGAN's objective with symmetric targets: real pairs to +1 and fake to -1 for D, swapped for G+E."""

    required_scores = ("s_xz",)

    def discriminator(self, real: Scores, fake: Scores):
        loss = 0.5 * ((real.s_xz - 1) ** 2).mean() + 0.5 * ((fake.s_xz + 1) ** 2).mean()
        return loss, {"loss_d": loss.detach()}

    def generator_encoder(self, real: Scores, fake: Scores):
        loss = 0.5 * ((real.s_xz + 1) ** 2).mean() + 0.5 * ((fake.s_xz - 1) ** 2).mean()
        return loss, {}  # no statistics at all: allowed


def scores(*values: float) -> Scores:
    return Scores(None, None, torch.tensor(values, dtype=torch.float64))


def test_the_loss_contract_accepts_a_least_squares_loss_beyond_its_targets():
    check_loss_on(LeastSquaresLoss(), scores(3.0, 0.5, -2.0, 1e3), scores(-5.0, 0.25, 2.0))


def test_the_loss_contract_still_refuses_a_least_squares_loss_with_the_targets_swapped():
    class Swapped(LeastSquaresLoss):
        def discriminator(self, real, fake):
            return super().generator_encoder(real, fake)

    with pytest.raises(AssertionError, match="L_D pushes real s_xz scores <= 0 further down"):
        check_loss_on(Swapped(), scores(3.0, -0.5), scores(-5.0, 0.25))


def test_the_progress_line_shows_whatever_losses_a_loss_reports():
    lines = ProgressLines(10, 0, clock=lambda: 0.0)
    assert "loss" not in lines.line({"step": 1, "images_per_s": 10.0})
    assert "loss_gp 0.5000" in lines.line({"step": 2, "loss_gp": 0.5})


# -- the documentation's plugin examples pass the contract checks -----------------------------------


def python_blocks(markdown: Path, section: str | None) -> list[str]:
    """The Python code blocks of the page, or of its ``## section`` (to the next ``## `` heading)."""
    text = markdown.read_text()
    if section is not None:
        text = text[text.index(f"\n## {section}\n") :]
        text = text[: text.find("\n## ", 1) if "\n## " in text[1:] else None]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("page, section", [("README.md", "Writing a plugin"), ("docs/plugins.md", None)])
def test_the_documented_plugin_examples_pass_the_contract_checks(page, section):
    source = "\n".join(python_blocks(REPO / page, section))
    module = types.ModuleType(f"documented_{Path(page).stem}")
    exec(compile(source, page, "exec"), module.__dict__)
    registered = check_plugin(module)
    checks = {"prior": check_prior, "generator": check_generator}
    assert set(registered) <= set(checks)
    for kind, entries in registered.items():
        for config_cls in entries.values():
            checks[kind](config_cls())


FLAT_BATCH_NORM_ENCODER = """
    import attrs
    from torch import nn
    from bifamily.config import option
    from bifamily.hookspecs import hookimpl
    from bifamily.interfaces import EncoderBackbone

    class Flat(EncoderBackbone):
        def __init__(self, ctx):
            super().__init__()
            self.feature_dim, self.resolution, self.channels = 8, ctx.encoder_input_resolution, ctx.channels
            self.linear = nn.Linear(ctx.channels * self.resolution**2, 8)
            self.norm = ctx.batch_norm(8)  # a BatchNorm2d, used on (N, C) features: fails

        def forward(self, x):
            return self.norm(self.linear(x.flatten(1)))

    @attrs.frozen
    class Config:
        \"\"\"An encoder.\"\"\"
        width: int = option(8, help="Width.")
        def build(self, ctx):
            return Flat(ctx)

    @hookimpl
    def bifamily_register_encoders(register):
        register("flat", Config)
"""


def test_a_component_failing_on_the_trial_batch_is_reported_under_its_own_key(recipe, third_party):
    third_party("bifamily-flat", "thirdparty_flat", FLAT_BATCH_NORM_ENCODER)
    source = recipe.read_text()
    recipe.write_text(source.replace('[encoder]\nkind = "dcgan"\nch = 4\nmax_ch = 8', '[encoder]\nkind = "flat"'))
    result = invoke("validate", str(recipe))
    assert result.exit_code == 2, result.output
    assert "$.encoder: fails on a batch of 2: ValueError: expected 4D input (got 2D input)" in result.stderr
