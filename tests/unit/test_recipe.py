"""Recipe loading: strict types, key paths, every problem at once, extends, typed overrides."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bifamily.errors import RecipeError
from bifamily.plugins import load_plugins
from bifamily.recipe import apply_overrides, from_dict, load, load_raw, parse_override

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def quickstart() -> dict:
    return tomllib.loads((REPO / "recipes" / "quickstart.toml").read_text())


def problems(data: dict, plugins) -> list[str]:
    with pytest.raises(RecipeError) as info:
        from_dict(data, plugins)
    return info.value.problems


def test_quickstart_structures_with_defaults_filled(plugins):
    recipe = from_dict(quickstart(), plugins, default_name="quickstart")
    assert recipe.run.name == "quickstart"
    assert recipe.optim.beta2 == 0.999 and recipe.optim.encoder_lr == 10 * recipe.optim.g_lr
    assert recipe.kinds["loss"] == "bigbigan"
    resolved = recipe.to_dict()
    assert resolved["generator"]["kind"] == "dcgan"
    # The resolved recipe round-trips to the same recipe.
    assert from_dict(resolved, plugins).to_dict() == resolved


def test_every_problem_is_reported_at_once_with_its_key_path(plugins):
    data = quickstart()
    data["run"]["steps"] = "many"
    data["train"]["batch_size"] = 1.5
    data["optim"]["g_lr"] = -1.0
    data["ema"]["warmup"] = "no"
    data["generator"]["channels"] = 3
    data["encoder"]["kind"] = "nope"
    data["bogus"] = {}
    found = problems(data, plugins)
    joined = "\n".join(found)
    assert "$.run.steps: expected int, got str 'many'" in joined
    assert "$.train.batch_size: expected int, got float 1.5" in joined
    assert "$.optim.g_lr: must be > 0, got -1.0" in joined
    assert "$.ema.warmup: expected bool (true or false), got str 'no'" in joined
    assert "$.generator.channels: unknown key" in joined
    assert "$.encoder.kind: unknown encoder 'nope' (installed: " in joined and "dcgan" in joined
    assert "$.bogus: unknown section" in joined
    assert len(found) == 7


def test_missing_section_and_missing_kind(plugins):
    data = quickstart()
    del data["loss"]
    del data["prior"]["kind"]
    found = problems(data, plugins)
    assert any(p.startswith("$.loss: required section missing") for p in found)
    assert any(p.startswith("$.prior.kind: required string naming the prior") for p in found)


def test_int_is_accepted_where_float_is_expected_but_not_bool(plugins):
    data = quickstart()
    data["optim"]["d_lr"] = 1
    assert from_dict(data, plugins).optim.d_lr == 1.0
    data["optim"]["d_lr"] = True
    assert problems(data, plugins) == ["$.optim.d_lr: expected float, got bool True"]


@pytest.mark.parametrize(
    "text, path, value",
    [
        ("run.steps=200", ["run", "steps"], 200),
        ("optim.d_lr=2e-4", ["optim", "d_lr"], 2e-4),
        ('eval.report=""', ["eval", "report"], ""),
        ("data.root=../shared/data/mnist", ["data", "root"], "../shared/data/mnist"),
        ('run.name="a b"', ["run", "name"], "a b"),
        ('data={kind="mnist", root="x"}', ["data"], {"kind": "mnist", "root": "x"}),
    ],
)
def test_overrides_are_parsed_as_toml_values(text, path, value):
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text", ["run.steps", "=3", "run..steps=3", ".x=1"])
def test_malformed_overrides_are_recipe_errors(text):
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        parse_override(text)


def test_override_types_are_checked_like_the_file(plugins):
    data = apply_overrides(quickstart(), ["run.steps=abc", "train.d_steps=1"])
    assert problems(data, plugins) == ["$.run.steps: expected int, got str 'abc'"]


def test_override_through_a_value_is_an_error():
    with pytest.raises(RecipeError, match=r"\$.run.steps is a value, not a table"):
        apply_overrides(quickstart(), ["run.steps.x=1"])


def test_table_override_replaces_the_whole_section():
    data = apply_overrides(quickstart(), ['data={kind = "mnist", root = "/m"}'])
    assert data["data"] == {"kind": "mnist", "root": "/m"}


def test_extends_merges_and_a_changed_kind_replaces_the_table(tmp_path, plugins):
    base = tmp_path / "base.toml"
    base.write_text((REPO / "recipes" / "quickstart.toml").read_text())
    child = tmp_path / "sub" / "child.toml"
    child.parent.mkdir()
    child.write_text('extends = "../base.toml"\n[run]\nsteps = 7\n[posterior]\nkind = "deterministic"\n')
    recipe = load(child, plugins)
    assert recipe.run.steps == 7 and recipe.run.log_every == 50  # merged
    assert recipe.kinds["posterior"] == "deterministic"
    assert recipe.run.name == "quickstart"  # from the base


def test_circular_extends_is_reported(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(RecipeError, match="circular include"):
        load_raw(tmp_path / "a.toml")


def test_invalid_toml_and_missing_file_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nsteps = 1")
    with pytest.raises(RecipeError, match=r"bad.toml: invalid TOML"):
        load_raw(bad)
    with pytest.raises(RecipeError, match=r"recipe file not found: .*missing.toml"):
        load_raw(tmp_path / "missing.toml")


def _biggan_generator(multipliers: object) -> dict:
    data = quickstart()
    data["generator"] = {"kind": "biggan", "ch": 8, "multipliers": multipliers}
    return data


def test_array_fields_name_the_bad_entry_or_the_missing_array(plugins):
    assert problems(_biggan_generator(4), plugins) == [
        "$.generator.multipliers: expected an array (array of int), got int 4"
    ]
    assert problems(_biggan_generator([4, "a", 2, True]), plugins) == [
        "$.generator.multipliers[1]: expected int, got str 'a'",
        "$.generator.multipliers[3]: expected int, got bool True",
    ]
    recipe = from_dict(_biggan_generator([4, 4, 2, 1]), plugins)
    assert recipe.components["generator"].multipliers == (4, 4, 2, 1)


def test_simultaneous_updates_need_one_d_step(plugins):
    data = apply_overrides(quickstart(), ['train.updates="simultaneous"', "train.d_steps=2"])
    assert problems(data, plugins) == [
        "$.train.updates: 'simultaneous' updates D once per step, from the G+E update's batch; set d_steps = 1 (got 2)"
    ]
    assert from_dict(apply_overrides(quickstart(), ['train.updates="simultaneous"', "train.d_steps=1"]), plugins).train.batches_per_step == 1
    assert from_dict(apply_overrides(quickstart(), ["train.d_steps=2", 'train.updates="alternating"']), plugins).train.batches_per_step == 3
