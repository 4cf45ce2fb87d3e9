"""Every shipped recipe loads, structures and passes `bifamily validate` (built on the meta device);
the CPU-sized ones also build for real and agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bifamily import preflight as preflight_module
from bifamily.build import build_model, make_context
from bifamily.cli import main
from bifamily.plugins import load_plugins
from bifamily.recipe import load

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
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


def _missing_data_root(recipe) -> str | None:
    """The data root a recipe names when it does not exist on this machine (e.g. /data/imagenet)."""
    root = getattr(recipe.components["data"], "root", None)
    return root if root is not None and not Path(root).exists() else None


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_recipe_validates_with_its_model_on_the_meta_device(path, plugins, monkeypatch):
    """validate answers ok, or with the one line that the data root is missing here; either way the
    model was built and checked on the meta device, with no parameter or buffer materialised."""
    built, build_on_meta = [], preflight_module.build_on_meta

    def recording_build_on_meta(*args):
        built.append(build_on_meta(*args))
        return built[-1]

    monkeypatch.setattr(preflight_module, "build_on_meta", recording_build_on_meta)
    result = CliRunner().invoke(main, ["validate", str(path)])
    missing = _missing_data_root(load(path, plugins))
    if missing is None:
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"{path}: ok")
    else:
        assert result.exit_code == 2, result.output
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: {path}: $.data.root: ") and missing in line
    [model] = built
    tensors = [t for module in model.modules().values() for t in (*module.parameters(), *module.buffers())]
    assert tensors and {t.device for t in tensors} == {torch.device("meta")}
    assert all(count > 0 for count in model.parameter_counts().values())
