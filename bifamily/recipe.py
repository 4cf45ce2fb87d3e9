"""Recipes: TOML files that compose components into a run.

Loading order (later wins): defaults of the config classes < the ``extends`` chain (each file may name
one base recipe, relative to itself) < the file itself < ``--set key=value`` overrides. Override values
are parsed as TOML values (``3``, ``1e-4``, ``true``, ``"text"``, ``{kind = "mnist", root = "..."}``);
anything that is not valid TOML is taken as a plain string. A table value replaces the whole table.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import attrs

from bifamily.config import safe_name, structure, unstructure
from bifamily.errors import RecipeError
from bifamily.evaluation.config import EvalConfig
from bifamily.plugins import BLOCK_ENV, KINDS, PluginSet
from bifamily.train_config import EmaConfig, GuardConfig, OptimConfig, RunConfig, TrainConfig


FRAMEWORK_SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "train": TrainConfig,
    "optim": OptimConfig,
    "ema": EmaConfig,
    "eval": EvalConfig,
    "guard": GuardConfig,
}
# Sections of per-name settings of evaluation plugins: [metrics.NAME], [feature_networks.NAME].
NAMED_SECTIONS: dict[str, str] = {"metrics": "metric", "feature_networks": "feature_network"}


@attrs.frozen
class Recipe:
    """A fully structured recipe: framework sections plus one config object per component kind."""

    run: RunConfig
    train: TrainConfig
    optim: OptimConfig
    ema: EmaConfig
    eval: EvalConfig
    components: dict[str, Any]  # kind -> component config instance
    kinds: dict[str, str]  # kind -> registered name
    source: str = ""
    metrics: dict[str, Any] = attrs.field(factory=dict)  # metric name -> config instance
    feature_networks: dict[str, Any] = attrs.field(factory=dict)  # feature network name -> config instance
    guard: GuardConfig = attrs.field(factory=GuardConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what `--dry-run` prints and run directories keep)."""
        data: dict[str, Any] = {name: unstructure(getattr(self, name)) for name in FRAMEWORK_SECTIONS}
        for kind, config in self.components.items():
            data[kind] = {"kind": self.kinds[kind], **unstructure(config)}
        for section in NAMED_SECTIONS:
            configs = getattr(self, section)
            if configs:
                data[section] = {name: unstructure(config) for name, config in configs.items()}
        return _drop_none(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _drop_none(value: Any) -> Any:
    """TOML has no null: optional fields left unset are omitted from the resolved recipe."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


# Tables and arrays inside each other, at most: no setting needs more than a few levels, and a limit
# keeps every later step (merging, copying, checking, printing) far from Python's recursion limit.
MAX_NESTING = 32
TOO_DEEP = f"tables or arrays nested deeper than {MAX_NESTING} levels"


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether more than ``limit`` tables and arrays in ``value`` (itself included) nest inside each
    other (checked without recursing)."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            if depth >= limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _read_toml(path: Path, stack: tuple[Path, ...]) -> dict[str, Any]:
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise RecipeError([f"$.extends: circular include: {chain}"], source=str(stack[0]))
    if len(stack) >= MAX_NESTING:
        raise RecipeError([f"$.extends: a chain of more than {MAX_NESTING} recipes extending each other"], source=str(stack[0]))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = f" (extended by {stack[-1]})" if stack else ""
        raise RecipeError([f"recipe file not found: {path}{where}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError([f"cannot read recipe: {exc}"], source=str(path)) from None
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer too long for Python to convert
        raise RecipeError([f"invalid TOML: {exc}"], source=str(path)) from None
    except RecursionError:
        raise RecipeError([f"$: {TOO_DEEP}"], source=str(path)) from None
    if too_deep(data):
        raise RecipeError([f"$: {TOO_DEEP}"], source=str(path))
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise RecipeError([f"$.extends: expected a path string, got {base!r}"], source=str(path))
    parent = _read_toml((path.parent / base).resolve(), (*stack, path))
    return merge(parent, data)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; a ``kind`` change replaces the whole table."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        current = out.get(key)
        if (
            isinstance(value, dict)
            and isinstance(current, dict)
            and value.get("kind", current.get("kind")) == current.get("kind")
        ):
            out[key] = merge(current, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.d_lr=2e-4"`` -> (["optim", "d_lr"], 0.0002). Raises RecipeError on a malformed one."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not part.strip() for part in parts):
        raise RecipeError([f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. run.steps=200"])
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except ValueError:  # not TOML (or an integer too long to convert): a plain string
        value = raw.strip()
    except RecursionError:
        raise RecipeError([f"--set {_abbreviated(key)}: {TOO_DEEP}"]) from None
    if len(parts) > MAX_NESTING or too_deep(value, MAX_NESTING - len(parts)):
        raise RecipeError([f"--set {_abbreviated(key)}: {TOO_DEEP}"])
    return [part.strip() for part in parts], value


def _abbreviated(key: str, limit: int = 60) -> str:
    return key if len(key) <= limit else f"{key[:limit]}... ({len(key)} characters)"


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = "$." + ".".join(path[: depth + 1])
                raise RecipeError([f"--set {text!r}: {where} is a value, not a table"])
            node = child
        node[path[-1]] = value
    return out


def load_raw(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    path = Path(path).resolve()
    return apply_overrides(_read_toml(path, ()), list(overrides))


def from_dict(data: dict[str, Any], plugins: PluginSet, source: str = "", default_name: str = "") -> Recipe:
    """Structure raw recipe data, reporting every problem in every section at once."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise RecipeError(["$: expected a table"], source=source)
    if too_deep(data):
        raise RecipeError([f"$: {TOO_DEEP}"], source=source)
    for key in sorted(set(data) - set(FRAMEWORK_SECTIONS) - set(KINDS) - set(NAMED_SECTIONS)):
        known = ", ".join([*FRAMEWORK_SECTIONS, *KINDS, *NAMED_SECTIONS])
        problems.append(f"$.{key}: unknown section (known: {known})")

    framework: dict[str, Any] = {}
    for name, cls in FRAMEWORK_SECTIONS.items():
        try:
            framework[name] = structure(data.get(name, {}), cls, f"$.{name}")
        except RecipeError as exc:
            problems.extend(exc.problems)

    components: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    for kind in KINDS:
        section = data.get(kind)
        path = f"$.{kind}"
        if section is None:
            problems.append(f"{path}: required section missing (add [{kind}] with a kind = \"...\")")
            continue
        if not isinstance(section, dict):
            problems.append(f"{path}: expected a table, got {type(section).__name__} {section!r}")
            continue
        name = section.get("kind")
        if not isinstance(name, str):
            problems.append(f"{path}.kind: required string naming the {kind} ({_installed(plugins, kind)})")
            continue
        entry = plugins.registry.get(kind, name)
        if entry is None:
            problems.append(f"{path}.kind: unknown {kind} {name!r} ({_installed(plugins, kind)})")
            continue
        fields = {k: v for k, v in section.items() if k != "kind"}
        try:
            components[kind] = structure(fields, entry.config_cls, path)
            kinds[kind] = name
        except RecipeError as exc:
            problems.extend(exc.problems)

    named = {
        section: _structure_named(data.get(section, {}), section, kind, plugins, problems)
        for section, kind in NAMED_SECTIONS.items()
    }
    if "eval" in framework:
        _add_named_metrics(framework["eval"], named["metrics"], plugins, problems)

    numbers = _number_problems(data, "$")
    flagged = {line.split(": ", 1)[0] for line in numbers}  # a nan also fails its key's range check
    problems = numbers + [line for line in problems if line.split(": ", 1)[0] not in flagged]
    if problems:
        raise RecipeError(problems, source=source)
    run = framework["run"]
    if not run.name and default_name:
        run = attrs.evolve(run, name=safe_name(default_name))
    return Recipe(
        run=run,
        train=framework["train"],
        optim=framework["optim"],
        ema=framework["ema"],
        eval=framework["eval"],
        guard=framework["guard"],
        components=components,
        kinds=kinds,
        source=source,
        metrics=named["metrics"],
        feature_networks=named["feature_networks"],
    )


def _number_problems(value: Any, path: str) -> list[str]:
    """Numbers no setting can mean: integers beyond 64 bits (TOML's own limit) and inf or nan."""
    if isinstance(value, dict):
        return [line for key, item in value.items() for line in _number_problems(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [line for i, item in enumerate(value) for line in _number_problems(item, f"{path}[{i}]")]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        shown = str(value) if value.bit_length() < 100 else f"an integer of {value.bit_length()} bits"
        return [f"{path}: {shown} does not fit in a 64-bit integer"]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: must be a finite number, got {value}"]
    return []


def _structure_named(table: Any, section: str, kind: str, plugins: PluginSet, problems: list[str]) -> dict[str, Any]:
    """``[section.NAME]`` tables, each structured with the config class registered as NAME of ``kind``."""
    if not isinstance(table, dict):
        problems.append(f"$.{section}: expected a table of [{section}.NAME] tables, got {type(table).__name__}")
        return {}
    configs: dict[str, Any] = {}
    for name, fields in table.items():
        entry = plugins.registry.get(kind, name)
        if entry is None:
            problems.append(f"$.{section}.{name}: unknown {kind.replace('_', ' ')} {name!r} ({_installed(plugins, kind)})")
            continue
        try:
            configs[name] = structure(fields, entry.config_cls, f"$.{section}.{name}")
        except RecipeError as exc:
            problems.extend(exc.problems)
    return configs


def _add_named_metrics(eval_config: EvalConfig, configs: dict[str, Any], plugins: PluginSet, problems: list[str]) -> None:
    """Resolve the metrics [eval] names (and the report's) with default settings where none are given."""
    wanted = [(name, "$.eval.metrics") for name in eval_config.metric_names]
    wanted += [(name, "$.eval.report_extra") for name in eval_config.report_extra_names]
    wanted += [(name, "$.eval.report") for name in eval_config.report_names]
    for name, key in wanted:
        if name in configs:
            continue
        entry = plugins.registry.get("metric", name)
        if entry is None:
            if key is not None:
                problems.append(f"{key}: unknown metric {name!r} ({_installed(plugins, 'metric')})")
            continue
        try:
            configs[name] = structure({}, entry.config_cls, f"$.metrics.{name}")
        except RecipeError as exc:
            problems.extend(exc.problems)


def _installed(plugins: PluginSet, kind: str) -> str:
    names = plugins.registry.names(kind)
    text = f"installed: {', '.join(names)}" if names else "none installed"
    failed = [info.name for info in plugins.failed]
    if failed:
        text += f"; failed to load: {', '.join(failed)}"
    if plugins.blocked:  # what a blocked plugin registers is unknown without importing it
        text += f"; not loaded, blocked by {BLOCK_ENV}: {', '.join(plugins.blocked)}"
    return text


def load(path: str | Path, plugins: PluginSet, overrides: list[str] = ()) -> Recipe:
    """Read, merge, override and structure a recipe file."""
    raw = load_raw(path, overrides)
    return from_dict(raw, plugins, source=str(path), default_name=Path(path).stem)
