"""Every class of malformed recipe and of malformed ``--set`` override, drawn by hypothesis: each draw
is a recipe error whose lines name the key at fault (docs/reliability.md counts the classes)."""

from __future__ import annotations

import json
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bifamily.config import is_device_name, is_safe_name
from bifamily.errors import RecipeError
from bifamily.plugins import default_plugins
from bifamily.recipe import apply_overrides, from_dict

from tests.helpers.tiny_model import TINY_MODEL

PLUGINS = default_plugins()
BASE = from_dict(tomllib.loads(TINY_MODEL), PLUGINS).to_dict()
# Scalar and array settings: a table-valued one (the options of one metric) takes a table.
SETTINGS = [(section, key) for section, table in BASE.items() for key in table if key != "kind" and not isinstance(table[key], dict)]


def nested(depth: int, leaf, as_table: bool):
    for _ in range(depth):
        leaf = {"a": leaf} if as_table else [leaf]
    return leaf


def setting_to(value_strategy, section_key=st.sampled_from(SETTINGS)):
    """(key path, recipe data with that setting replaced by a drawn value)."""
    return st.tuples(section_key, value_strategy).map(
        lambda pair: (f"$.{pair[0][0]}.{pair[0][1]}", {**BASE, pair[0][0]: {**BASE[pair[0][0]], pair[0][1]: pair[1]}})
    )


def without_section(section: str) -> dict:
    return {name: table for name, table in BASE.items() if name != section}


# Each class: a strategy of (the key path the error must name, malformed recipe data).
MALFORMED_RECIPES = {
    "nested too deeply": setting_to(st.builds(nested, st.integers(31, 5000), st.just(1), st.booleans())).map(
        lambda pair: ("$", pair[1])
    ),
    "not a device": setting_to(st.text(max_size=12).filter(lambda t: not is_device_name(t)), st.just(("run", "device"))),
    "not a folder name": setting_to(
        st.text(min_size=1, max_size=120).filter(lambda t: not is_safe_name(t)), st.just(("run", "name"))
    ),
    "wrong type": setting_to(st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))),
    "unknown key": st.tuples(st.sampled_from(sorted(BASE)), st.text(max_size=8)).map(
        lambda pair: (f"$.{pair[0]}.zz{pair[1]}", {**BASE, pair[0]: {**BASE[pair[0]], f"zz{pair[1]}": 1}})
    ),
    "unknown section": st.text(min_size=1, max_size=8).filter(lambda k: k not in BASE and k not in ("metrics", "feature_networks")).map(
        lambda name: (f"$.{name}", {**BASE, name: {}})
    ),
    "missing section": st.sampled_from(["data", "prior", "generator", "encoder", "posterior", "discriminator", "loss"]).map(
        lambda section: (f"$.{section}", without_section(section))
    ),
    "unknown kind": st.sampled_from(["data", "prior", "generator", "loss"]).flatmap(
        lambda section: st.text(min_size=1, max_size=8).filter(lambda k: PLUGINS.registry.get(section, k) is None).map(
            lambda kind: (f"$.{section}.kind", {**BASE, section: {"kind": kind}})
        )
    ),
    "not a finite 64-bit number": setting_to(
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 2**63, -(2**63) - 1, 10**40])
    ),
    "out of range": st.sampled_from(
        [(("run", "steps"), -1), (("run", "steps"), 0), (("run", "seed"), -1), (("run", "seed"), 2**40),
         (("train", "batch_size"), 0), (("optim", "g_lr"), -1e-9), (("ema", "decay"), 1.5), (("optim", "beta2"), -1.0)]
    ).flatmap(lambda pair: setting_to(st.just(pair[1]), st.just(pair[0]))),
}
# Each class: a strategy of (text the error must hold, --set strings).
MALFORMED_OVERRIDES = {
    "value nested too deeply": st.builds(
        lambda depth, table: f"run.name={'{a=' * depth + '1' + '}' * depth if table else '[' * depth + ']' * depth}",
        st.integers(31, 5000), st.booleans(),
    ).map(lambda text: ("--set run.name: tables or arrays nested deeper", [text])),
    "key nested too deeply": st.integers(33, 5000).map(
        lambda depth: ("tables or arrays nested deeper", [".".join(["a"] * depth) + "=1"])
    ),
    "not KEY=VALUE": st.sampled_from(["", "=", "run.steps", "=3", "run..steps=3", ". =1", "run. =2"]).map(
        lambda text: ("expected KEY=VALUE with a dotted key", [text])
    ),
    "into a value": st.sampled_from(["run.steps.x=1", "data.kind.y=2"]).map(lambda text: ("is a value, not a table", [text])),
    "not a device": st.text(max_size=10).filter(lambda t: not is_device_name(t)).map(
        lambda device: ("$.run.device: must be", [f"run.device={json.dumps(device)}"])
    ),
    "not a folder name": st.text(min_size=1, max_size=20).filter(lambda t: not is_safe_name(t)).map(
        lambda name: ("$.run.name: must be one folder name", [f"run.name={json.dumps(name)}"])
    ),
}
HOSTILE = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


@HOSTILE
@given(st.sampled_from(sorted(MALFORMED_RECIPES)).flatmap(lambda name: MALFORMED_RECIPES[name]))
def test_every_class_of_malformed_recipe_is_a_recipe_error_naming_its_key(case):
    key, data = case
    with pytest.raises(RecipeError) as caught:
        from_dict(data, PLUGINS)
    assert any(problem.startswith(f"{key}:") or problem.startswith(f"{key}.") for problem in caught.value.problems), (
        key, caught.value.problems,
    )


@HOSTILE
@given(st.sampled_from(sorted(MALFORMED_OVERRIDES)).flatmap(lambda name: MALFORMED_OVERRIDES[name]))
def test_every_class_of_malformed_override_is_a_recipe_error_saying_what_is_wrong(case):
    expected, overrides = case
    with pytest.raises(RecipeError) as caught:
        from_dict(apply_overrides(BASE, overrides), PLUGINS)
    assert any(expected in problem for problem in caught.value.problems), (expected, caught.value.problems)
