"""Recipes: TOML files that compose components into a run.

Loading order (later wins): defaults of the config classes < the ``extends`` chain (each file may name
one base recipe, relative to itself) < the file itself < ``--set key=value`` overrides. Override values
are parsed as TOML values (``3``, ``1e-4``, ``true``, ``"text"``, ``{kind = "mnist", root = "..."}``);
anything that is not valid TOML is taken as a plain string. A table value replaces the whole table.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import attrs

from bifamily.config import in_range, non_negative, one_of, option, positive, structure, unstructure
from bifamily.errors import RecipeError
from bifamily.plugins import KINDS, PluginSet


@attrs.frozen
class RunConfig:
    """[run]: what this run is and how often it reports."""

    name: str = option("", help="Run name; defaults to the recipe file's stem.")
    seed: int = option(0, help="Seed for weights, data order, latents and noise.")
    steps: int = option(1000, help="Training iterations; one = `train.d_steps` D updates + 1 G/E update.", validator=positive)
    device: str = option("auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    out_root: str = option("runs", help="Folder that holds run directories when --out is not given.")
    log_every: int = option(50, help="Write a stats.jsonl line every this many steps.", validator=positive)
    sample_every: int = option(500, help="Write sample and reconstruction grids every this many steps (and at the end).", validator=positive)
    checkpoint_every: int = option(500, help="Write a checkpoint every this many steps (and at the end).", validator=positive)
    keep_checkpoints: int = option(3, help="How many recent checkpoints to keep on disk.", validator=positive)


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
        help="'fp32'; 'bf16' autocast (CPU and CUDA); or 'fp16' autocast with dynamic loss scaling (CUDA only). "
        "Spectral norm's power iteration always runs in fp32.",
        validator=one_of("fp32", "bf16", "fp16"),
    )
    channels_last: bool = option(False, help="Keep images and conv weights in NHWC memory layout (faster convs on tensor cores and oneDNN).")
    compile: bool = option(False, help="torch.compile the G+E and D step modules (slow first steps, faster after).")
    num_workers: int = option(0, help="Data-loader worker processes per rank (0 = load in the training process).", validator=non_negative)
    collective_timeout_s: int = option(
        900,
        help="Distributed runs: seconds a rank waits in a collective (all-reduce, barrier) before the job fails; "
        "covers rank 0 writing a checkpoint while the others wait.",
        validator=positive,
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
    """[eval]: the linear probe on frozen EMA-encoder features reported at the end of a run."""

    probe: bool = option(True, help="Report linear-probe accuracy of the EMA encoder vs its initialisation.")
    train_samples: int = option(5000, help="Labelled training images the probe is fitted on.", validator=positive)
    test_samples: int = option(2000, help="Held-out images the probe is scored on.", validator=positive)
    probe_steps: int = option(1000, help="Adam steps of the probe.", validator=positive)
    probe_lr: float = option(0.01, help="Probe learning rate.", validator=positive)


FRAMEWORK_SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "train": TrainConfig,
    "optim": OptimConfig,
    "ema": EmaConfig,
    "eval": EvalConfig,
}


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

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what `--dry-run` prints and run directories keep)."""
        data: dict[str, Any] = {name: unstructure(getattr(self, name)) for name in FRAMEWORK_SECTIONS}
        for kind, config in self.components.items():
            data[kind] = {"kind": self.kinds[kind], **unstructure(config)}
        return _drop_none(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _drop_none(value: Any) -> Any:
    """TOML has no null: optional fields left unset are omitted from the resolved recipe."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _read_toml(path: Path, stack: tuple[Path, ...]) -> dict[str, Any]:
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise RecipeError([f"$.extends: circular include: {chain}"], source=str(stack[0]))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = f" (extended by {stack[-1]})" if stack else ""
        raise RecipeError([f"recipe file not found: {path}{where}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError([f"cannot read recipe: {exc}"], source=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([f"invalid TOML: {exc}"], source=str(path)) from None
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
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return [part.strip() for part in parts], value


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
    for key in sorted(set(data) - set(FRAMEWORK_SECTIONS) - set(KINDS)):
        known = ", ".join([*FRAMEWORK_SECTIONS, *KINDS])
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

    if problems:
        raise RecipeError(problems, source=source)
    run = framework["run"]
    if not run.name and default_name:
        run = attrs.evolve(run, name=default_name)
    return Recipe(
        run=run,
        train=framework["train"],
        optim=framework["optim"],
        ema=framework["ema"],
        eval=framework["eval"],
        components=components,
        kinds=kinds,
        source=source,
    )


def _installed(plugins: PluginSet, kind: str) -> str:
    names = plugins.registry.names(kind)
    text = f"installed: {', '.join(names)}" if names else "none installed"
    failed = [info.name for info in plugins.failed]
    if failed:
        text += f"; failed to load: {', '.join(failed)}"
    return text


def load(path: str | Path, plugins: PluginSet, overrides: list[str] = ()) -> Recipe:
    """Read, merge, override and structure a recipe file."""
    raw = load_raw(path, overrides)
    return from_dict(raw, plugins, source=str(path), default_name=Path(path).stem)
