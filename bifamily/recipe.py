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

from bifamily.config import (
    SAFE_NAME_RULE,
    check,
    device_name,
    in_range,
    is_safe_name,
    non_negative,
    one_of,
    option,
    positive,
    safe_name,
    structure,
    unstructure,
)
from bifamily.errors import RecipeError
from bifamily.plugins import BLOCK_ENV, KINDS, PluginSet


@attrs.frozen
class RunConfig:
    """[run]: what this run is and how often it reports."""

    name: str = option(
        "",
        help=f"Run name, part of the run directory's name; defaults to the recipe file's stem. {SAFE_NAME_RULE}.",
        validator=check(lambda v: v == "" or is_safe_name(v), f"must be one folder name of {SAFE_NAME_RULE}, got {{value}}"),
    )
    seed: int = option(
        0, help="Seed for weights, data order, latents and noise (0 to 2**32 - 1).", validator=in_range(0, 2**32 - 1)
    )
    steps: int = option(1000, help="Training iterations; one = `train.d_steps` D updates + 1 G/E update.", validator=positive)
    device: str = option(
        "auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'.", validator=device_name
    )
    out_root: str = option("runs", help="Folder that holds run directories when --out is not given.")
    log_every: int = option(50, help="Write a stats.jsonl line every this many steps.", validator=positive)
    sample_every: int = option(500, help="Write sample and reconstruction grids every this many steps (and at the end).", validator=positive)
    checkpoint_every: int = option(500, help="Write a checkpoint every this many steps (and at the end).", validator=positive)
    keep_checkpoints: int = option(3, help="How many recent checkpoints to keep on disk.", validator=positive)
    tensorboard: bool = option(
        False,
        help="Also write losses, metrics and sample grids as TensorBoard event files to RUN_DIR/tensorboard/ "
        "(needs the tensorboard package: pip install tensorboard).",
    )


@attrs.frozen
class TrainConfig:
    """[train]: the shape of one training iteration."""

    batch_size: int = option(
        64,
        help="Global images per update, summed over all ranks (each D step and the G/E step draw a fresh batch). "
        "Must be a multiple of accumulation x the number of ranks.",
        validator=positive,
    )
    accumulation: int = option(
        1,
        help="Micro-steps per update (gradient accumulation): each rank computes batch_size / (accumulation x "
        "ranks) images at a time. Batch norm in G and E normalises over the batch_size / accumulation images "
        "of a micro-step, on any number of ranks.",
        validator=positive,
    )
    d_steps: int = option(2, help="Discriminator updates before each joint generator+encoder update.", validator=positive)
    precision: str = option(
        "fp32",
        help="'fp32'; 'bf16' autocast (CPU and CUDA); 'fp16' autocast with dynamic loss scaling (CUDA only); or "
        "'auto': bf16 where the device has bf16 in hardware (CUDA, or a CPU with AMX or AVX512-BF16), else fp32. "
        "Spectral norm's power iteration always runs in fp32.",
        validator=one_of("auto", "fp32", "bf16", "fp16"),
    )
    channels_last: bool = option(False, help="Keep images and conv weights in NHWC memory layout (faster convs on tensor cores and oneDNN).")
    compile: bool = option(False, help="torch.compile the G+E and D step modules (slow first steps, faster after).")
    keep_freed_memory: bool = option(
        True,
        help="CPU runs: have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel, "
        "so each step does not fault in fresh pages (process-wide; no effect on other C libraries or devices; "
        "see docs/performance.md).",
    )
    num_workers: int = option(0, help="Data-loader worker processes per rank (0 = load in the training process).", validator=non_negative)
    collective_timeout_s: int = option(
        900,
        help="Distributed runs: seconds a rank waits in a collective (all-reduce, barrier) before the job fails; "
        "covers rank 0 writing a checkpoint while the others wait.",
        validator=in_range(1, 10**8),
    )


@attrs.frozen
class OptimConfig:
    """[optim]: Adam as in BigGAN. One optimizer updates G and E together; D has its own."""

    g_lr: float = option(1e-4, help="Generator learning rate.", validator=positive)
    e_lr: float | None = option(None, help="Encoder learning rate; defaults to g_lr ('E up-LR' rows use 10x).")
    d_lr: float = option(4e-4, help="Discriminator learning rate.", validator=positive)
    beta1: float = option(0.0, help="Adam beta1.", validator=in_range(0.0, 1.0))
    beta2: float = option(0.999, help="Adam beta2.", validator=in_range(0.0, 1.0))
    eps: float = option(1e-8, help="Adam epsilon.", validator=positive)

    @property
    def encoder_lr(self) -> float:
        return self.g_lr if self.e_lr is None else self.e_lr


@attrs.frozen
class EmaConfig:
    """[ema]: exponential moving average of G and E weights, used for every evaluation."""

    decay: float = option(0.9999, help="EMA decay per G/E update.", validator=in_range(0.0, 1.0))
    warmup: bool = option(True, help="Ramp the decay as min(decay, (1+t)/(10+t)) so short runs average recent weights, not the initialisation.")
    start_step: int = option(0, help="Copy weights (no averaging) until this step.", validator=non_negative)


@attrs.frozen
class EvalConfig:
    """[eval]: the end-of-run report, metrics during training, and the shared settings of the
    representation metrics. Each metric's own settings go in [metrics.NAME] (docs/evaluation.md)."""

    probe: bool = option(
        True,
        help="End-of-run report: linear-probe (and k-NN) top-1 of the EMA encoder next to the same encoder "
        "at initialisation. Skipped for a data set without labels.",
    )
    train_samples: int = option(5000, help="Labelled training images the linear probe is fitted on (and k-NN searches).", validator=positive)
    test_samples: int = option(2000, help="Held-out images the linear probe and k-NN are scored on.", validator=positive)
    probe_steps: int = option(1000, help="Adam steps of the linear probe (the paper: 5000).", validator=positive)
    probe_lr: float = option(0.01, help="Linear-probe learning rate ([metrics.probe] lrs sweeps more).", validator=positive)
    metrics: str = option(
        "probe,knn",
        help="Comma-separated metrics run every `every` steps and by `bifamily eval` (installed ones: "
        "`bifamily plugins`).",
    )
    every: int = option(
        0,
        help="During training, run `metrics` on the EMA weights every this many steps and at the last step "
        "(0: never). Rank 0 computes while other ranks go on.",
        validator=non_negative,
    )
    best: str = option(
        "",
        help="A value of the scheduled metrics (e.g. 'probe_top1', 'fid') by which RUN_DIR/best/snapshot.safetensors "
        "keeps the best snapshot; empty: none.",
    )
    batch_size: int = option(256, help="Images per forward pass when metrics extract features or generate samples.", validator=positive)
    report_extra: str = option(
        "",
        help="Comma-separated metrics the end-of-run report adds, computed once on the EMA weights (e.g. 'judge': "
        "sample quality next to held-out real images).",
    )

    @property
    def metric_names(self) -> list[str]:
        """The names in ``metrics``, in order, without blanks or repeats."""
        return _names(self.metrics)

    @property
    def report_extra_names(self) -> list[str]:
        """The names in ``report_extra``, in order, without blanks or repeats."""
        return _names(self.report_extra)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    return list(dict.fromkeys(name for name in names if name))


@attrs.frozen
class GuardConfig:
    """[guard]: what happens when a loss or gradient stops being finite (the run diverged).

    The check runs at every logging, grid and checkpoint step, before anything is written, so a
    diverged state is never checkpointed (docs/reliability.md)."""

    on_nonfinite: str = option(
        "stop",
        help="'stop': report the step and the module, write nothing more and exit with code 3. 'rollback': "
        "reload the latest checkpoint and continue with a fresh data order and fresh latents.",
        validator=one_of("stop", "rollback"),
    )
    max_rollbacks: int = option(
        3,
        help="With 'rollback': rollbacks allowed without a new checkpoint in between; one more divergence "
        "stops the run as 'stop' would.",
        validator=positive,
    )


FRAMEWORK_SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "train": TrainConfig,
    "optim": OptimConfig,
    "ema": EmaConfig,
    "eval": EvalConfig,
    "guard": GuardConfig,
}
# Sections of per-name settings of evaluation plugins: [metrics.probe], [feature_networks.inception].
NAMED_SECTIONS: dict[str, str] = {"metrics": "metric", "feature_networks": "feature_network"}
# Metrics the end-of-run report ([eval] probe) runs on the trained encoder and on the same encoder at
# initialisation; `eval.report_extra` names more, run once.
REPORT_METRICS = ("probe", "knn")


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
    if eval_config.probe:
        wanted += [(name, None) for name in REPORT_METRICS]
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
