"""From measurements to derived figures, the issue's targets, and the printed table."""

from __future__ import annotations

from typing import Any

from .configs import BASELINE, MODES

# Issue 8's targets.
ANCHOR_SPEEDUP = 2.0
CONV_FRACTION = 0.6
FAST_MODE_SPEEDUP = 1.3
PIPELINE_MARGIN = 3.0
REVNET_MEMORY_RATIO = 0.4
REVNET_TIME_RATIO = 1.5
CONV_FRACTION_MODEL = "bigbigan_small"
ANCHOR_MODEL = "mnist32_matched"


def add_rates(row: dict[str, Any], flops_per_step: int | None, limits: dict[str, dict[str, float]], precision: str) -> None:
    """Achieved GFLOP/s and its fraction of the conv and matmul limits of the mode's precision."""
    if flops_per_step is None or "step_seconds" not in row:
        return
    achieved = flops_per_step / row["step_seconds"] / 1e9
    row["achieved_gflops"] = achieved
    row["fraction_of_conv_limit"] = achieved / limits[precision]["conv_gflops"]
    row["fraction_of_matmul_limit"] = achieved / limits[precision]["matmul_gflops"]


def add_speedups(modes: dict[str, dict[str, Any]]) -> None:
    base = modes.get(BASELINE, {}).get("step_seconds")
    for row in modes.values():
        if base and "step_seconds" in row:
            row["speedup_vs_fp32"] = base / row["step_seconds"]


def fastest(modes: dict[str, dict[str, Any]], names: list[str] | None = None) -> str | None:
    """The mode with the shortest median step among ``names`` (all by default) that were measured."""
    timed = {name: row["step_seconds"] for name, row in modes.items() if "step_seconds" in row}
    if names is not None:
        timed = {name: seconds for name, seconds in timed.items() if name in names}
    return min(timed, key=timed.get) if timed else None


def _target(name: str, value: float | None, threshold: float, at_most: bool, detail: str) -> dict[str, Any]:
    met = None if value is None else (value <= threshold if at_most else value >= threshold)
    return {"target": name, "value": value, "threshold": threshold, "at_most": at_most, "met": met, "detail": detail}


def targets(models: dict[str, dict[str, Any]], anchor: dict[str, Any], revnet: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 8's targets, each with its value, threshold and whether it is met (None: not measured)."""
    found = []
    if "speedup" in anchor:
        detail = f"{ANCHOR_MODEL} ({anchor['ours']['mode']}) vs the reference, batch images/s"
        found.append(_target("anchor images/s ratio", anchor["speedup"], ANCHOR_SPEEDUP, False, detail))
    small = models.get(CONV_FRACTION_MODEL, {}).get("modes", {})
    fractions = {name: row["fraction_of_conv_limit"] for name, row in small.items() if "fraction_of_conv_limit" in row}
    if fractions:
        best = max(fractions, key=fractions.get)
        detail = f"{CONV_FRACTION_MODEL} model FLOP/s / best conv FLOP/s of its precision ({best})"
        found.append(_target("model FLOP/s fraction of conv limit", fractions[best], CONV_FRACTION, False, detail))
    for model, result in models.items():
        modes = result.get("modes", {})
        fast = [name for name, mode in MODES.items() if mode.precision != "fp32" or mode.compile]
        best = fastest(modes, fast)
        if best is not None and "speedup_vs_fp32" in modes[best]:
            value = modes[best]["speedup_vs_fp32"]
            found.append(_target("bf16/compile speedup over fp32 eager", value, FAST_MODE_SPEEDUP, False, f"{model} ({best})"))
        pipeline = result.get("data_pipeline", {})
        if "margin" in pipeline:
            found.append(_target("data pipeline / step demand", pipeline["margin"], PIPELINE_MARGIN, False, model))
    ratios = revnet.get("ratio_reversible_to_stored", {})
    if ratios:
        found.append(_target("RevNet peak memory / stored", ratios["peak_bytes"], REVNET_MEMORY_RATIO, True, "RevNet-50"))
        found.append(_target("RevNet step time / stored", ratios["step_seconds"], REVNET_TIME_RATIO, True, "RevNet-50"))
    return found


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _mib(value: Any) -> Any:
    return value / 2**20 if isinstance(value, (int, float)) else None


def table(result: dict[str, Any]) -> str:
    """The short human-readable summary printed at the end of a run."""
    lines = []
    limits = result["limits"]
    lines.append(
        "practical limits (GFLOP/s): "
        + ", ".join(f"{p} conv {v['conv_gflops']:.0f} / matmul {v['matmul_gflops']:.0f}" for p, v in limits.items())
    )
    lines += [f"{precision}: {reason}" for precision, reason in result.get("skipped_precisions", {}).items()]
    header = f"{'model':18}{'mode':20}{'step s':>9}{'CPU s':>8}{'img/s':>9}{'GFLOP/s':>9}{'%conv':>7}{'%mm':>6}{'x fp32':>8}{'peak MiB':>10}"
    lines += ["", header]
    for model, entry in result["models"].items():
        for mode, row in entry.get("modes", {}).items():
            if "skipped" in row:
                lines.append(f"{model:18}{mode:20}  {row['skipped']}")
                continue
            if "error" in row:
                lines.append(f"{model:18}{mode:20}  failed: {row['error'].strip().splitlines()[-1][:60]}")
                continue
            conv, mm = row.get("fraction_of_conv_limit"), row.get("fraction_of_matmul_limit")
            lines.append(
                f"{model:18}{mode:20}{row['step_seconds']:9.3f}{row['step_cpu_seconds']:8.2f}{row['images_per_s']:9.1f}"
                f"{_number(row.get('achieved_gflops'), '9.1f')}{_number(conv and 100 * conv, '7.0f')}"
                f"{_number(mm and 100 * mm, '6.0f')}{_number(row.get('speedup_vs_fp32'), '8.2f')}"
                f"{_number(_mib(row.get('peak_rss_bytes')), '10.0f')}"
            )
    lines += ["", f"{'model':18}{'GFLOP/step':>11}{'pipeline img/s':>16}{'demand':>9}{'margin':>8}{'probe feat/s':>14}{'FID feat/s':>12}"]
    for model, entry in result["models"].items():
        pipeline, evaluation = entry.get("data_pipeline", {}), entry.get("evaluation", {})
        flops = entry.get("flops_per_step")
        lines.append(
            f"{model:18}{_number(flops and flops / 1e9, '11.1f')}{_number(pipeline.get('images_per_s'), '16.1f')}"
            f"{_number(pipeline.get('demand_images_per_s'), '9.1f')}{_number(pipeline.get('margin'), '8.1f')}"
            f"{_number(evaluation.get('probe_features_per_s'), '14.1f')}{_number(evaluation.get('fid_features_per_s'), '12.1f')}"
        )
    anchor = result.get("anchor", {})
    if "ours" in anchor:
        ref, ours = anchor["reference"], anchor["ours"]
        lines += ["", f"anchor ({ref['source']}):", f"{'':14}{'G':>11}{'E':>11}{'D':>11}{'GFLOP/step':>12}{'batch img/s':>13}"]
        for name, side in (("reference", ref), ("bifamily", ours)):
            p = side["parameters"]
            lines.append(
                f"{name:14}{p['generator']:11,}{p['encoder']:11,}{p['discriminator']:11,}"
                f"{_number(side.get('flops_per_step', 0) / 1e9, '12.1f')}{_number(side.get('batch_images_per_s'), '13.1f')}"
            )
    lines += ["", "targets:"]
    for target in result["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        relation = "<=" if target["at_most"] else ">="
        lines.append(
            f"  {target['target']:40} {_number(target['value'], '.2f'):>7} {relation} {target['threshold']:<5} {verdict:8} {target['detail']}"
        )
    load = result["load_average"]
    lines += ["", f"load average at start {load['start']}, at end {load['end']} (other work slows every timing)"]
    return "\n".join(lines)
