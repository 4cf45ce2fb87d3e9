"""docs/recipes.md is generated from the config classes and must match them."""

from pathlib import Path

from bifamily.plugins import load_plugins
from bifamily.reference import render

REPO = Path(__file__).resolve().parents[1]


def test_recipe_reference_is_up_to_date():
    expected = render(load_plugins())
    actual = (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert actual == expected, "regenerate with: python -m bifamily.reference > docs/recipes.md"


def test_reference_documents_every_section_and_component():
    text = render(load_plugins())
    for heading in ("## [run]", "## [train]", "## [data]", '### kind = "procedural"', '### kind = "bigbigan"'):
        assert heading in text
