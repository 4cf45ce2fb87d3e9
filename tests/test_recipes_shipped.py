"""Every shipped recipe loads and structures; the CPU-sized ones also build and agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from bifamily.build import build_model, make_context
from bifamily.plugins import load_plugins
from bifamily.recipe import load

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ALL = sorted(RECIPES.rglob("*.toml"))
CPU_SIZED = ["quickstart.toml", "bigan.toml", "ali.toml", "bigbigan_small.toml"]


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def test_the_tree_holds_the_table_1_rows():
    names = {p.relative_to(RECIPES).as_posix() for p in ALL}
    assert {"quickstart.toml", "bigan.toml", "ali.toml", "bigbigan.toml", "bigbigan_highres.toml"} <= names
    assert len([n for n in names if n.startswith("ablations/")]) >= 19


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_recipe_structures_and_opens_with_its_command(path, plugins):
    recipe = load(path, plugins)
    assert recipe.run.steps > 0
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and "bifamily run recipes/" in first


@pytest.mark.parametrize("name", CPU_SIZED)
def test_cpu_sized_recipes_build_and_agree(name, plugins):
    recipe = load(RECIPES / name, plugins)
    model = build_model(recipe, make_context(recipe))
    assert all(count > 0 for count in model.parameter_counts().values())
