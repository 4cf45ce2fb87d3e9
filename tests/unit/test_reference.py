"""docs/recipes.md and docs/hooks.md are generated from the code and must match it."""

from pathlib import Path

from click.testing import CliRunner

from bifamily.plugins import load_plugins
from bifamily.reference import main, render, render_hooks

REPO = Path(__file__).resolve().parents[2]


def test_recipe_reference_is_up_to_date():
    expected = render(load_plugins())
    actual = (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert actual == expected, "regenerate with: python -m bifamily.reference > docs/recipes.md"


def test_hook_reference_is_up_to_date():
    expected = render_hooks(load_plugins())
    actual = (REPO / "docs" / "hooks.md").read_text(encoding="utf-8")
    assert actual == expected, "regenerate with: python -m bifamily.reference --hooks > docs/hooks.md"


def test_the_command_prints_either_page():
    runner = CliRunner()
    plugins = load_plugins()
    assert runner.invoke(main, []).output == render(plugins)
    assert runner.invoke(main, ["--hooks"]).output == render_hooks(plugins)


def test_reference_documents_every_section_and_component():
    text = render(load_plugins())
    for heading in (
        "## [run]",
        "## [train]",
        "## [data]",
        '### kind = "procedural"',
        '### kind = "bigbigan"',
        "## [metrics.NAME]",
        "### [metrics.probe] (plugin `metrics`)",
        "## [feature_networks.NAME]",
        "### [feature_networks.random_conv] (plugin `metrics`)",
    ):
        assert heading in text


def test_a_pipe_in_a_type_does_not_split_the_table_cell():
    text = render(load_plugins())
    assert "| `e_lr` | float \\| None | `None` |" in text
    for line in text.splitlines():
        if line.startswith("| `"):
            assert line.replace("\\|", "").count("|") == 5, line


def test_hook_docstrings_become_markdown():
    text = render_hooks(load_plugins())
    assert "`bifamily.interfaces.LatentPrior`" in text
    assert ":class:" not in text and "``" not in text.replace("```", "")
    assert "def bifamily_register_priors(register: Register) -> None" in text
    assert "`gaussian` (plugin `priors`), `uniform` (plugin `priors`)" in text
