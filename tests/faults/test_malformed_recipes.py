"""Hostile recipes and overrides: whatever the input, the answer is a recipe (or a recipe error whose
every line names a key path, exit code 2), never an uncaught exception or a traceback."""

from __future__ import annotations

import copy
import datetime
import math
import tomllib
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bifamily.cli import main
from bifamily.errors import RecipeError
from bifamily.plugins import default_plugins
from bifamily.recipe import apply_overrides, from_dict, load

REPO = Path(__file__).resolve().parents[2]
BASE = tomllib.loads((REPO / "recipes" / "quickstart.toml").read_text())
PLUGINS = default_plugins()
RESOLVED = from_dict(BASE, PLUGINS).to_dict()
SECTIONS = sorted(RESOLVED)
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every TOML value type, with the edges that break naive code: 64-bit limits and beyond, inf, nan,
# negative zero, empty and odd strings, dates, nested arrays and tables.
integers = st.one_of(
    st.integers(-(2**16), 2**16),
    st.sampled_from([-1, 0, 2**31, 2**32, 2**63 - 1, 2**63, -(2**63) - 1, 10**40, -(10**40)]),
)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-0.0, 1e-320, 1e308]))
texts = st.one_of(st.text(max_size=8), st.sampled_from(["", "nope", "gaussian", "dcgan", "1e-4", "true"]))
dates = st.one_of(st.dates(), st.datetimes().map(lambda d: d.replace(microsecond=0)), st.times().map(lambda t: t.replace(microsecond=0)))
scalars = st.one_of(integers, floats, st.booleans(), texts, dates)
keys = st.one_of(st.sampled_from(sorted({k for section in RESOLVED.values() for k in section} | {"kind"})), st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=6)


def assert_key_paths(error: RecipeError) -> None:
    assert error.problems
    for problem in error.problems:
        assert problem.startswith(("$.", "$:", "--set ")), problem


def structure_or_refuse(data: dict) -> None:
    """from_dict either gives a recipe that survives --dry-run's TOML round trip, or a keyed error."""
    try:
        recipe = from_dict(data, PLUGINS)
    except RecipeError as error:
        assert_key_paths(error)
        return
    resolved = recipe.to_dict()
    assert from_dict(tomllib.loads(tomli_w.dumps(resolved)), PLUGINS).to_dict() == resolved


@st.composite
def mutated_recipes(draw) -> dict:
    data = copy.deepcopy(RESOLVED)
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.one_of(st.sampled_from(SECTIONS), st.text(max_size=6)))
        action = draw(st.sampled_from(["set", "set", "delete", "replace"]))
        if action == "replace" or not isinstance(data.get(section), dict):
            data[section] = draw(values)
        elif action == "delete":
            data.pop(section, None)
        else:
            key = draw(st.one_of(st.sampled_from(sorted(data[section]) or ["kind"]), keys))
            data[section][key] = draw(values)
    return data


@EXAMPLES
@given(mutated_recipes())
def test_mutated_recipes_structure_or_fail_with_key_paths(data):
    structure_or_refuse(data)


def toml_value(value) -> str:
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip() if not isinstance(value, dict) else "{}"


overrides = st.builds(
    lambda key, value: f"{key}={value}",
    st.one_of(
        st.sampled_from([f"{s}.{k}" for s in SECTIONS for k in RESOLVED[s]] + SECTIONS),
        st.lists(keys, min_size=1, max_size=3).map(".".join),
        st.text(max_size=10),
    ),
    st.one_of(scalars.map(toml_value), st.text(max_size=12), st.sampled_from(["{kind = 3}", "[1, [2]]", "{", "= ="])),
) | st.text(max_size=16)


@EXAMPLES
@given(st.lists(overrides, min_size=1, max_size=3))
def test_override_strings_apply_or_fail_with_key_paths(texts):
    try:
        data = apply_overrides(BASE, texts)
    except RecipeError as error:
        assert_key_paths(error)
        return
    structure_or_refuse(data)


@settings(max_examples=25, deadline=None)
@given(st.lists(overrides, min_size=1, max_size=2))
def test_the_cli_answers_hostile_overrides_with_exit_code_2_and_key_paths(texts):
    args = ["run", str(REPO / "recipes" / "quickstart.toml"), "--dry-run"]
    result = CliRunner().invoke(main, [*args, *(a for text in texts for a in ("--set", text))])
    assert result.exit_code in (0, 2), result.exception
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert lines and all(line.startswith("error: ") and ("$" in line or "--set" in line) for line in lines), lines
        assert "Traceback" not in result.output


@EXAMPLES
@given(st.text(max_size=60))
def test_any_file_content_loads_or_is_a_recipe_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("recipe") / "r.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load(path, PLUGINS)
    except RecipeError as error:
        assert all(line.startswith(str(path)) for line in error.lines())


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"a.toml": 'extends = "a.toml"'}, "$.extends: circular include: "),
        ({"a.toml": 'extends = "b.toml"', "b.toml": 'extends = "a.toml"'}, "$.extends: circular include: "),
        ({"a.toml": 'extends = "missing.toml"'}, "recipe file not found: "),
        ({"a.toml": "extends = 3"}, "$.extends: expected a path string, got 3"),
        ({"a.toml": 'extends = "sub"', "sub/x.toml": ""}, "cannot read recipe: "),
        ({"a.toml": "[run]\nsteps = 1\n[run]\nsteps = 2"}, "invalid TOML: "),
        ({"a.toml": "steps = " + "9" * 5000}, "invalid TOML: "),
        ({"a.toml": b"\xff\xfe[run]"}, "cannot read recipe: "),
    ],
    ids=["self", "cycle", "missing", "not-a-string", "a-folder", "duplicate-table", "huge-integer", "not-utf8"],
)
def test_broken_files_and_include_chains_are_recipe_errors(tmp_path, files, expected):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "a.toml")])
    assert result.exit_code == 2, result.exception
    assert expected in result.stderr and "Traceback" not in result.output


QUICKSTART = str(REPO / "recipes" / "quickstart.toml")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("run.seed=-1", "$.run.seed: must be in [0, 4294967295], got -1"),
        ("run.seed=99999999999999", "$.run.seed: must be in [0, 4294967295]"),
        ("run.steps=99999999999999999999", "$.run.steps: 99999999999999999999 does not fit in a 64-bit integer"),
        ("run.steps=-5", "$.run.steps: must be > 0, got -5"),
        ("optim.g_lr=inf", "$.optim.g_lr: must be a finite number, got inf"),
        ("ema.decay=nan", "$.ema.decay: must be a finite number, got nan"),
        ("train.collective_timeout_s=1000000000000000", "$.train.collective_timeout_s: must be in [1, 100000000]"),
        ("prior.dim=1000000000000", "$.encoder: the run's weights alone need "),  # more than any memory
        ("data.resolution=100000", "$.data.resolution: "),
        ("train.batch_size=1000000000", "$.train.batch_size: 1000000000 is larger than the training split"),
        ("guard.on_nonfinite=3", "$.guard.on_nonfinite: expected string, got int 3"),
        ("data.kind=\"hdf5\"", "$.data.kind: unknown data 'hdf5' (installed: "),
    ],
)
def test_huge_negative_and_unknown_values_are_recipe_errors_even_when_building(override, expected):
    result = CliRunner().invoke(main, ["validate", QUICKSTART, "--set", override])
    assert result.exit_code == 2, result.exception
    assert expected in result.stderr and "Traceback" not in result.output


def test_number_checks_do_not_hide_other_problems_of_the_same_key():
    data = copy.deepcopy(RESOLVED)
    data["optim"]["d_lr"] = math.inf
    data["optim"]["g_lr"] = -1.0
    data["run"]["seed"] = datetime.date(2024, 1, 1)
    with pytest.raises(RecipeError) as caught:
        from_dict(data, PLUGINS)
    assert caught.value.problems == [
        "$.optim.d_lr: must be a finite number, got inf",
        "$.run.seed: expected int, got date datetime.date(2024, 1, 1)",
        "$.optim.g_lr: must be > 0, got -1.0",
    ]
