"""Linear probe and k-NN on MNIST: the BiGAN recipe's trained encoder vs the same encoder at
initialisation vs raw pixels.

    python -m bench.mnist_probe                    # trains recipes/bigan.toml on MNIST, then evaluates
    python -m bench.mnist_probe --steps 1500       # the recipe's full schedule
    python -m bench.mnist_probe --skip-training    # evaluate the run directory of an earlier call
    python -m bench.mnist_probe --recipe recipes/quickstart.toml --set optim.e_lr=1e-2 --output /tmp/b.json

Data: the MNIST t10k files in ../shared/data/mnist; the mnist data set trains on its first 8000
images and holds out the last 2000. Training is `bifamily run recipes/bigan.toml --set 'data={kind =
"mnist", root = ...}'` (or the `--recipe` given, with any `--set` overrides) with `--steps` steps (a
subprocess, exactly as a user runs it). Evaluation uses the registered `probe` and `knn` metrics on
the final snapshot's EMA encoder, on the encoder rebuilt from the recipe's seed (its
initialisation), each read two ways (the pooled backbone features, as the paper, and the posterior
mean, BiGAN's z = E(x)), and on the flattened 32x32 pixels: probe fitted on all 8000 training images
(10% of them as trainval for the learning-rate sweep and early stopping) on batch-normalised
features + CReLU (as the recipes' probes), scored on the 2000 held-out ones. Writes
bench/results/mnist_probe.json (or `--output`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import result_file

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "mnist_probe.json"
RECIPE = "recipes/bigan.toml"


class Pixels(nn.Module):
    """The raw-pixel baseline as an encoder: features and posterior mean are the flattened image."""

    def forward(self, x: torch.Tensor) -> Any:
        from bifamily.interfaces import Posterior

        return Posterior(x.flatten(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def train(args: argparse.Namespace) -> tuple[list[str], float]:
    if args.run_dir.exists():
        print(f"error: --run-dir {args.run_dir} exists: evaluate it with --skip-training, or remove it to train again", file=sys.stderr)
        sys.exit(2)
    data = f'data={{kind = "mnist", root = {json.dumps(args.root)}}}'
    command = [
        "bifamily", "run", args.recipe, "--set", data, "--set", f"run.steps={args.steps}", "--set", 'eval.report=""',
        "--set", f"run.checkpoint_every={args.steps}", "--set", f"run.sample_every={args.steps}",
        "--out", os.path.relpath(args.run_dir, REPO), "--no-progress",
    ]
    for override in args.set:
        command += ["--set", override]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bifamily", *command[1:]], cwd=REPO, check=True)
    return command, time.perf_counter() - start


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from bifamily.build import build_model
    from bifamily.evaluation.metrics import build_metrics, evaluate as compute, make_subject
    from bifamily.checkpoint.loading import load_snapshot
    from bifamily.plugins import default_plugins
    from bifamily.recipe import apply_overrides, from_dict
    from bifamily.preflight import open_data

    plugins = default_plugins()

    def overrides(features: str) -> list[str]:
        return [
            "eval.train_samples=8000", "eval.test_samples=2000",
            f'metrics.probe={{steps = {args.probe_steps}, lrs = "0.01,0.001,0.1", transform = "bn_crelu", features = "{features}"}}',
            f'metrics.knn={{k = {args.k}, features = "{features}"}}', "run.device=cpu",
        ]

    loaded = load_snapshot(args.run_dir, plugins, overrides("pooled"))
    recipe, model, ctx = loaded.recipe, loaded.model, loaded.model.context
    train_data, test_data = open_data(recipe, ctx)
    initial_encoder = build_model(recipe, ctx).encoder.eval()
    rows = [
        ("trained_ema_encoder", model.encoder, "pooled"),
        ("encoder_at_initialisation", initial_encoder, "pooled"),
        ("trained_ema_encoder_posterior_mean", model.encoder, "posterior_mean"),
        ("encoder_at_initialisation_posterior_mean", initial_encoder, "posterior_mean"),
        ("raw_pixels", Pixels(), "pooled"),
    ]
    results, settings = {}, {}
    for name, encoder, features in rows:
        start = time.perf_counter()
        row_recipe = from_dict(apply_overrides(recipe.to_dict(), overrides(features)), plugins)
        metrics = build_metrics(row_recipe, plugins, ["probe", "knn"], ctx)
        subject = make_subject(row_recipe, model.generator, encoder, model.prior, ctx, train_data, test_data)
        records = compute(metrics, subject, loaded.step)
        results[name] = {key: round(value, 4) for r in records for key, value in r.result.values.items()}
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        settings[features] = {r.metric: r.result.settings for r in records}
    return {"step": loaded.step, "results": results, "settings": settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="Training steps (the recipe's own schedule: 1500).")
    parser.add_argument("--root", default="../shared/data/mnist", help="Folder of the MNIST idx files.")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "bench-mnist-probe")
    parser.add_argument("--probe-steps", type=int, default=5000, help="Adam steps of the linear probe (the paper's 5000).")
    parser.add_argument("--k", type=int, default=20, help="Neighbours of the k-NN classifier.")
    parser.add_argument("--recipe", default=RECIPE, help=f"Recipe to train (default {RECIPE}); its data set is replaced by MNIST.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="A recipe override for training, as `bifamily run --set` (repeatable).")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where the JSON result goes.")
    parser.add_argument("--skip-training", action="store_true", help="Evaluate the existing --run-dir.")
    args = parser.parse_args()
    command, seconds = (None, None) if args.skip_training else train(args)
    evaluation = evaluate(args)
    steps = evaluation.pop("step")
    recipe = os.path.relpath(args.run_dir / "recipe.toml", REPO) if args.skip_training else args.recipe
    report = {
        "benchmark": "linear probe and k-NN on MNIST t10k: train on the first 8000, score on the last 2000",
        "recipe": recipe,
        "training_command": shlex.join(command) if command else None,
        "reproduce": shlex.join(["python", "-m", "bench.mnist_probe", "--steps", str(steps), "--recipe", recipe, *[f"--set={o}" for o in args.set]]),
        "training_steps": steps,
        "training_seconds": round(seconds, 1) if seconds else None,
        **evaluation,
    }
    print(json.dumps(report["results"], indent=2))
    result_file.write(args.output, report)


if __name__ == "__main__":
    main()
