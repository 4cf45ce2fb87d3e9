"""Per-module parameter counts of every shipped recipe, built the way `bifamily validate` builds them.

    python -m bench.param_counts                     # every recipes/**/*.toml
    python -m bench.param_counts recipes/bigbigan.toml

For each recipe this runs validate's preparation (build and cross-check every component, open the
data) and records validate's table plus one level deeper: the parameters of each component's direct
children (F, H, J and the heads of the joint discriminator; trunk and MLP of an encoder backbone).
Recipes that read an image folder are validated on the built-in procedural data at the same
resolutions, as `--set 'data={kind = "procedural", ...}'` would: parameter counts do not depend on
the data. Nor do they depend on the initial values, so orthogonal initialisation is replaced by a
normal draw unless ``--orthogonal-init`` is given: the QR factorisations of the full-size BigGAN
matrices take several minutes per recipe on a CPU. Prints the tables and writes
bench/results/param_counts.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from unittest import mock

from torch import nn

from bifamily.build import count_parameters
from bifamily.plugins import default_plugins
from bifamily.recipe import Recipe, load
from bifamily.session import prepare

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "param_counts.json"


def procedural_override(recipe: Recipe) -> list[str]:
    """`--set` for a recipe whose data needs files: the procedural data set at its resolutions."""
    if recipe.kinds["data"] == "procedural":
        return []
    data = recipe.components["data"]
    fields = [f"resolution = {data.resolution}", f"channels = {data.channels}"]
    encoder_resolution = getattr(data, "encoder_resolution", None)
    if encoder_resolution is not None:
        fields.append(f"encoder_resolution = {encoder_resolution}")
    return ['data={kind = "procedural", ' + ", ".join(fields) + "}"]


def children(module: nn.Module) -> dict[str, int]:
    """Parameters of each direct child, plus parameters held directly (e.g. BigGAN's shared vector)."""
    counts = {name: count_parameters(child) for name, child in module.named_children()}
    own = sum(p.numel() for p in module.parameters(recurse=False))
    if own:
        counts["(own)"] = own
    return {name: count for name, count in counts.items() if count}


def recipe_counts(path: Path) -> dict:
    plugins = default_plugins()
    overrides = procedural_override(load(path, plugins))
    recipe = load(path, plugins, overrides)
    started = time.perf_counter()
    model = prepare(recipe, plugins=plugins).model
    modules = {**model.modules(), "encoder.backbone": model.encoder.backbone}
    return {
        "overrides": overrides,
        "kinds": {kind: recipe.kinds[kind] for kind in ("generator", "encoder", "discriminator")},
        "validate": model.parameter_counts(),
        "children": {name: children(module) for name, module in modules.items()},
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 10**6 else f"{count:,}"


def markdown_table(results: dict[str, dict]) -> str:
    """One row per recipe: the components and their main parts (docs/models.md's table)."""
    rows = [
        "| recipe | G | E: trunk + MLP + posterior head | D: F + H + J + heads | total |",
        "|---|---|---|---|---|",
    ]
    for name, counts in results.items():
        total, parts = counts["validate"], counts["children"]
        backbone = parts["encoder.backbone"]
        if {"trunk", "head"} <= backbone.keys():
            encoder = " + ".join(
                _millions(n) for n in (backbone["trunk"], backbone["head"], total["encoder.head"])
            )
        else:
            encoder = f"{_millions(total['encoder.backbone'])} + {_millions(total['encoder.head'])}"
        d = parts["discriminator"]
        heads = sum(n for key, n in d.items() if key.endswith("_head"))
        paths = [d.get(key, 0) for key in ("image_path", "latent_path", "joint_path")]
        discriminator = " + ".join(_millions(n) for n in (*paths, heads)) if heads else ""
        overall = total["generator"] + total["encoder"] + total["discriminator"]
        rows.append(
            f"| `{name.removeprefix('recipes/')}` | {_millions(total['generator'])} "
            f"| {_millions(total['encoder'])} ({encoder}) "
            f"| {_millions(total['discriminator'])}"
            + (f" ({discriminator})" if discriminator else "")
            + f" | {_millions(overall)} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", type=Path, help="default: every recipes/**/*.toml")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--orthogonal-init", action="store_true", help="keep the real (slow) initialisation"
    )
    args = parser.parse_args()
    paths = args.recipes or sorted((REPO / "recipes").rglob("*.toml"))
    fast_init = (
        contextlib.nullcontext()
        if args.orthogonal_init
        else mock.patch.object(nn.init, "orthogonal_", lambda tensor, gain=1: nn.init.normal_(tensor))
    )
    results = {}
    for path in paths:
        name = str(path.resolve().relative_to(REPO))
        with fast_init:
            counts = results[name] = recipe_counts(path)
        print(f"{name}: ok ({counts['build_seconds']} s)", *counts["overrides"], flush=True)
        for module, count in counts["validate"].items():
            print(f"  {module:<18} {count:>14,}")
            for child, child_count in counts["children"].get(module, {}).items():
                print(f"    {child:<16} {child_count:>14,}")
    print(markdown_table(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
