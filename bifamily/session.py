"""From a recipe to a finished run: validate, build, prepare the run directory, train, report.

Everything that can fail because of user input (recipe, plugins, data paths, checkpoints) is checked
before the run directory is created, so a bad recipe never leaves a half-written run behind.
Each rank of a distributed run goes through the same functions with its :class:`World`; rank 0 alone
creates the run directory, writes to it and runs the final evaluation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs
import torch

from bifamily.batchnorm import batch_norm_for
from bifamily.build import Model, build_model, make_context
from bifamily.distributed import World, config_problems, resolve_device
from bifamily.errors import BifamilyError, CheckpointError, DataError, RecipeError
from bifamily.evaluation.features import extract_features
from bifamily.evaluation.probe import linear_probe
from bifamily.plugins import PluginSet
from bifamily.precision import spectral_norm_in_fp32
from bifamily.recipe import Recipe
from bifamily.rundir import RunWriter, latest_run_dir, new_run_dir
from bifamily.train import RECON_SIZE, Trainer, make_state


@attrs.define
class Prepared:
    recipe: Recipe
    model: Model
    train_data: Any
    test_data: Any


def prepare(recipe: Recipe, world: World | None = None) -> Prepared:
    """Build every component for this process of ``world`` (default: one process on ``run.device``)
    and open both data splits; raises before anything is written.

    In a world of several ranks, G and E get cross-replica batch norm through ``ctx.batch_norm``.
    """
    if world is None:
        world = World(device=resolve_device(recipe.run.device))
    device = world.device
    problems = config_problems(recipe.train, world.size, device)
    if problems:
        raise RecipeError(problems, source=recipe.source)
    ctx = make_context(recipe, device, batch_norm=batch_norm_for(device, world.size))
    model = build_model(recipe, ctx)
    data_config = recipe.components["data"]
    try:
        train_data = data_config.build(ctx, "train")
        test_data = data_config.build(ctx, "test")
    except BifamilyError:
        raise
    except Exception as exc:
        raise DataError(f"$.data: building data set {recipe.kinds['data']!r} failed: {type(exc).__name__}: {exc}") from exc
    if len(train_data) < recipe.train.batch_size:
        raise DataError(
            f"$.train.batch_size: {recipe.train.batch_size} is larger than the training split "
            f"({len(train_data)} images)"
        )
    for module in model.modules().values():
        module.to(device)
        spectral_norm_in_fp32(module)
        if recipe.train.channels_last:
            module.to(memory_format=torch.channels_last)
    return Prepared(recipe, model, train_data, test_data)


def choose_run_dir(recipe: Recipe, out: str | None, resume: bool) -> Path:
    root = Path(recipe.run.out_root)
    if out is not None:
        path = Path(out)
        has_checkpoint = (path / "checkpoints").is_dir() and any((path / "checkpoints").iterdir())
        if has_checkpoint and not resume:
            raise BifamilyError(f"--out {path}: holds a run already; add --resume to continue it, or pick another folder")
        if resume and not has_checkpoint:
            raise CheckpointError(f"--resume: no checkpoint in {path / 'checkpoints'}")
        return path
    if resume:
        path = latest_run_dir(root, recipe.run.name)
        if path is None:
            raise CheckpointError(f"--resume: no run of {recipe.run.name!r} with a checkpoint under {root}/")
        return path
    return new_run_dir(root, recipe.run.name)


def run_training(
    prepared: Prepared, run_dir: Path, *, resume: bool, world: World = World(), progress: bool = True
) -> dict[str, Any]:
    recipe, model = prepared.recipe, prepared.model
    state = make_state(recipe, model, prepared.train_data, world)
    trainer = Trainer(recipe, state, run_dir, world=world, progress=progress)
    if resume:
        latest = trainer.checkpoints.latest()
        if latest is None:
            damaged = sorted((run_dir / "checkpoints").glob("step-*"))
            if not damaged:
                raise CheckpointError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
            latest = damaged[-1]  # restoring it raises the error that names the damaged file
        step = trainer.resume(latest)  # verifies the checkpoint before anything is appended
        if world.is_main:
            print(f"resumed {run_dir} at step {step}", file=sys.stderr)
    elif world.is_main:
        RunWriter(run_dir).create(recipe.to_dict())
    recon = torch.stack([prepared.test_data[i][0] for i in range(min(RECON_SIZE, len(prepared.test_data)))])
    trainer.fit(recon)
    report: dict[str, Any] = {"run_dir": str(run_dir), "step": state.step}
    if world.is_main and recipe.eval.probe and getattr(prepared.test_data, "num_classes", 0) > 0:
        report.update(probe_report(prepared, state.ema_encoder.module))
        trainer.writer.append("metrics.jsonl", {"step": state.step, **report})
    return report


def probe_report(prepared: Prepared, trained_encoder: torch.nn.Module) -> dict[str, float]:
    """Linear-probe top-1 of the trained (EMA) encoder's features next to the same encoder at init."""
    recipe, model = prepared.recipe, prepared.model
    ctx = model.context
    initial_encoder = build_model(recipe, ctx).encoder.to(ctx.device).eval()
    results = {}
    for label, encoder in (("probe_top1", trained_encoder.eval()), ("probe_top1_init", initial_encoder)):
        features = {}
        for split, data, n in (
            ("train", prepared.train_data, recipe.eval.train_samples),
            ("test", prepared.test_data, recipe.eval.test_samples),
        ):
            features[split] = extract_features(
                encoder.features,
                data,
                min(n, len(data)),
                device=ctx.device,
                resize_to=ctx.encoder_input_resolution,
            )
        result = linear_probe(
            *features["train"],
            *features["test"],
            num_classes=prepared.test_data.num_classes,
            steps=recipe.eval.probe_steps,
            lrs=(recipe.eval.probe_lr,),
            seed=recipe.run.seed,
        )
        results[label] = result.top1
    return results
