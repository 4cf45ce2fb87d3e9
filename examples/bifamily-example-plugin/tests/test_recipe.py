"""The plugin's recipe builds with bifamily's own components and trains end to end."""

from __future__ import annotations

import json
from pathlib import Path

import bifamily_example
from bifamily.build import build_model, make_context
from bifamily.recipe import load
from bifamily.session import prepare, run_training
from bifamily.testing import plugin_set
from bifamily_example import ConvMixer, GaussianMixturePrior, PixelShuffleGenerator

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "example.toml"
TINY = [
    "run.steps=2", "run.log_every=1", "run.sample_every=2", "run.checkpoint_every=2",
    "train.batch_size=8", 'eval.report=""', "prior.dim=8",
    "generator.ch=4", "encoder.width=8", "encoder.depth=1", "discriminator.ch=4",
    "discriminator.z_width=8", "discriminator.joint_width=8",
]


def test_recipe_builds_the_plugin_components() -> None:
    recipe = load(RECIPE, plugin_set(bifamily_example))
    model = build_model(recipe, make_context(recipe))
    assert isinstance(model.prior, GaussianMixturePrior) and model.prior.dim == 64
    assert isinstance(model.generator, PixelShuffleGenerator) and model.generator.resolution == 32
    assert isinstance(model.encoder.backbone, ConvMixer) and model.encoder.latent_dim == 64
    assert recipe.kinds["data"] == "procedural" and recipe.kinds["loss"] == "bigan"


def test_a_tiny_run_of_the_recipe_trains_and_checkpoints(tmp_path: Path) -> None:
    recipe = load(RECIPE, plugin_set(bifamily_example), TINY)
    report = run_training(prepare(recipe, plugins=plugin_set(bifamily_example)), tmp_path / "run", resume=False, progress=False)
    assert report["step"] == 2
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2]
    assert all(abs(s["loss_d"]) < 1e3 for s in stats)
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "snapshot.safetensors").exists()
    assert 'kind = "pixel_shuffle"' in (tmp_path / "run" / "recipe.toml").read_text()
