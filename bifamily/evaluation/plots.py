"""Plots of a run directory: loss and metric curves (matplotlib, Agg) and the encoder's first-layer
filters (the diagnostic of BigBiGAN's Figure 3)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bifamily.errors import BifamilyError
from bifamily.rundir import RunDir

_NOT_VALUES = {"step", "metric", "settings", "details", "images_per_s"}
_MIN_TILE = 32
Series = dict[str, dict[str, list[tuple[int, float]]]]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue  # a line cut by a crash
        if isinstance(record, dict):
            records.append(record)
    return records


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(records: list[dict[str, Any]], label: Callable[[dict[str, Any]], str]) -> Series:
    """value name -> series label -> sorted (step, value) points."""
    series: Series = defaultdict(lambda: defaultdict(list))
    for record in records:
        for key, value in record.items():
            if key not in _NOT_VALUES and _numeric(value):
                series[key][label(record)].append((int(record.get("step", 0)), float(value)))
    return {key: {name: sorted(points) for name, points in lines.items()} for key, lines in sorted(series.items())}


def metric_labels(records: list[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
    """Series label of a metrics.jsonl record: its metric, numbered when the metric was computed with
    several settings (numbers in order of first appearance), as such values are not comparable."""
    variants: dict[str, list[str]] = defaultdict(list)
    for record in records:
        settings = json.dumps(record.get("settings"), sort_keys=True)
        if settings not in variants[record.get("metric", "")]:
            variants[record.get("metric", "")].append(settings)

    def label(record: dict[str, Any]) -> str:
        metric = record.get("metric", "")
        if len(variants[metric]) == 1:
            return metric
        return f"{metric} #{variants[metric].index(json.dumps(record.get('settings'), sort_keys=True)) + 1}"

    return label


def plot_curves(series: Series, title: str, out: Path) -> Path:
    """One panel per value name, one line per series label, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for axis, (name, lines) in zip(axes.flat, series.items()):
        for label, points in lines.items():
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3, label=label or None)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if any(lines):
            axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(series):]:
        axis.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def first_conv_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight (O, I, kh, kw) of the first 2-D convolution in registration order (the input layer);
    None when the module has none (an MLP or attention encoder)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            return layer.weight.detach().float().cpu()
    return None


def filter_grid(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Tiles in [0, 1], each filter scaled by its own range: RGB for 3 input channels, else one grey
    tile per (filter, input channel); and the row length."""
    out_channels, in_channels = weight.shape[:2]
    tiles = weight if in_channels == 3 else weight.reshape(out_channels * in_channels, 1, *weight.shape[2:])
    flat = tiles.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    tiles = (tiles - low[:, None, None, None]) / (high - low).clamp_min(1e-12)[:, None, None, None]
    scale = max(1, math.ceil(_MIN_TILE / max(tiles.shape[-2:])))
    tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest")
    nrow = 8 if in_channels in (1, 3) else in_channels  # several channels: one filter per row
    return tiles, nrow


def plot_filters(weight: torch.Tensor, out: Path) -> Path:
    from torchvision.utils import save_image  # torchvision's import costs seconds: only when drawing

    tiles, nrow = filter_grid(weight)
    save_image(tiles, out, nrow=nrow, padding=2, pad_value=1.0)
    return out


def plot_run(
    run_dir: Path, out_dir: Path, encoder: nn.Module | None, note: Callable[[str], None] = print
) -> list[Path]:
    """losses.png (stats.jsonl), metrics.png (metrics.jsonl), filters.png (``encoder``'s first
    convolution; skipped with a ``note`` when it has none); the written paths."""
    stats, metrics = read_jsonl(RunDir(run_dir).stats), read_jsonl(RunDir(run_dir).metrics)
    if not stats and not metrics and encoder is None:
        raise BifamilyError(f"{run_dir}: no stats.jsonl or metrics.jsonl to plot")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    losses = {name: lines for name, lines in _series(stats, lambda r: "").items() if name.startswith("loss")}
    if losses:
        written.append(plot_curves(losses, f"{run_dir.name}: losses", out_dir / "losses.png"))
    values = _series(metrics, metric_labels(metrics))
    if values:
        written.append(plot_curves(values, f"{run_dir.name}: metrics", out_dir / "metrics.png"))
    weight = first_conv_weight(encoder) if encoder is not None else None
    if weight is not None:
        written.append(plot_filters(weight, out_dir / "filters.png"))
    elif encoder is not None:
        note(f"the encoder ({type(encoder).__name__}) has no Conv2d layer, so no filters.png")
    return written
