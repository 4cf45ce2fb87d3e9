"""The documentation site builds cleanly and its reference pages cover the code.

`mkdocs build --strict` (mkdocs.yml turns every link, anchor and nav problem into a warning) fails on
a broken internal link, a missing anchor, a nav entry without a page and a page missing from the nav.
"""

import subprocess
import sys
from pathlib import Path

import attrs
import click
import pluggy
import pytest
import yaml

from bifamily import hookspecs
from bifamily.cli import main
from bifamily.plugins import KINDS, load_plugins
from bifamily.recipe import FRAMEWORK_SECTIONS, NAMED_SECTIONS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(site_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return site_dir


def _nav_pages(entries: list) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _block(text: str, heading: str) -> str:
    """The lines under ``heading`` up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("#") and
         len(lines[i]) - len(lines[i].lstrip("#")) <= level),
        len(lines),
    )
    return "\n".join(lines[start:end])


def _assert_documents_fields(block: str, cls: type) -> None:
    for field in attrs.fields(cls):
        assert f"| `{field.name}` |" in block, f"{cls.__name__}.{field.name} is missing from docs/recipes.md"


def test_the_site_builds_strictly_with_every_page(site: Path):
    for page in DOCS.rglob("*.md"):
        name = page.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if name == Path("index") else name / "index.html")
        assert built.is_file(), f"{page} was not built"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    in_nav = _nav_pages(config["nav"])
    on_disk = sorted(str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md"))
    assert sorted(in_nav) == on_disk


def test_the_cli_page_documents_every_command(site: Path):
    html = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for name, command in main.commands.items():
        if command.hidden:
            continue
        assert f"bifamily {name} [OPTIONS]" in html, f"no usage line of `bifamily {name}`"
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.opts[0] in html, f"`bifamily {name} {param.opts[0]}` is not documented"


def test_every_hookspec_is_in_the_hook_reference():
    manager = pluggy.PluginManager("bifamily")
    manager.add_hookspecs(hookspecs)
    text = (DOCS / "hooks.md").read_text(encoding="utf-8")
    names = [name for name in vars(manager.hook) if name.startswith("bifamily_")]
    assert names, "no hook specifications found"
    for name in names:
        doc = getattr(hookspecs, name).__doc__.strip().splitlines()[0]
        assert doc.replace("``", "`") in _block(text, f"## {name}")


def test_every_recipe_key_is_in_the_recipe_reference():
    text = (DOCS / "recipes.md").read_text(encoding="utf-8")
    for section, cls in FRAMEWORK_SECTIONS.items():
        _assert_documents_fields(_block(text, f"## [{section}]"), cls)
    registry = load_plugins().registry
    for kind in KINDS:
        section = _block(text, f"## [{kind}]")
        for entry in registry.entries(kind):
            heading = f'### kind = "{entry.name}" (plugin `{entry.plugin}`)'
            _assert_documents_fields(_block(section, heading), entry.config_cls)
    for named, kind in NAMED_SECTIONS.items():
        section = _block(text, f"## [{named}.NAME]")
        for entry in registry.entries(kind):
            heading = f"### [{named}.{entry.name}] (plugin `{entry.plugin}`)"
            _assert_documents_fields(_block(section, heading), entry.config_cls)
