"""The training loop: read it top to bottom.

One iteration ("step") = ``train.d_steps`` discriminator updates, then one joint generator+encoder
update, then the EMA update, then the tick (logging, grids, checkpoints). Each update draws a fresh
real batch. Real pairs are (x, E(x)); fake pairs are (G(z), z).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bifamily import __version__
from bifamily.build import Model
from bifamily.checkpoint import CheckpointManager, restore
from bifamily.data import BatchStream
from bifamily.ema import EMA, ema_decay
from bifamily.interfaces import Scores
from bifamily.recipe import Recipe
from bifamily.rundir import RunWriter

GRID_SIZE = 64
RECON_SIZE = 16


@attrs.define
class TrainState:
    """Everything a step mutates, grouped so checkpoints and tests can reach it."""

    model: Model
    ema_generator: EMA
    ema_encoder: EMA
    opt_d: torch.optim.Optimizer
    opt_ge: torch.optim.Optimizer
    stream: BatchStream
    step: int = 0

    def snapshot_modules(self) -> dict[str, torch.nn.Module]:
        return {
            **self.model.modules(),
            "generator_ema": self.ema_generator.module,
            "encoder_ema": self.ema_encoder.module,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"d": self.opt_d, "ge": self.opt_ge}


def _adam(params: list[dict[str, Any]], recipe: Recipe, device: torch.device) -> torch.optim.Adam:
    o = recipe.optim
    # Fused Adam runs the whole update in one kernel per dtype/device (CPU and CUDA).
    return torch.optim.Adam(params, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)


def make_state(recipe: Recipe, model: Model, dataset: Any) -> TrainState:
    o = recipe.optim
    opt_d = _adam([{"params": model.discriminator.parameters(), "lr": o.d_lr}], recipe, model.context.device)
    opt_ge = _adam(
        [
            {"params": model.generator.parameters(), "lr": o.g_lr},
            {"params": model.encoder.parameters(), "lr": o.encoder_lr},
        ],
        recipe,
        model.context.device,
    )
    stream = BatchStream(dataset, recipe.train.batch_size, recipe.run.seed, recipe.train.num_workers)
    return TrainState(model, EMA(model.generator), EMA(model.encoder), opt_d, opt_ge, stream)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _score_pairs(model: Model, x: torch.Tensor, z_hat: torch.Tensor, x_fake: torch.Tensor, z: torch.Tensor) -> tuple[Scores, Scores]:
    """D on real (x, E(x)) and fake (G(z), z) pairs; one batched call when D has no batch statistics."""
    d = model.discriminator
    if d.has_batch_statistics:
        return d(x, z_hat), d(x_fake, z)
    scores = d(torch.cat([x, x_fake]), torch.cat([z_hat, z]))
    return scores.split(x.shape[0])


class Trainer:
    """Runs the loop for a built model; ``on_tick`` is called after every step (tests, evaluation)."""

    def __init__(self, recipe: Recipe, state: TrainState, run_dir: Path, *, progress: bool = True):
        self.recipe = recipe
        self.state = state
        self.model = state.model
        self.writer = RunWriter(run_dir)
        self.checkpoints = CheckpointManager(run_dir / "checkpoints", keep=recipe.run.keep_checkpoints)
        self.progress = progress
        ctx = self.model.context
        self.device = ctx.device
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if recipe.train.precision == "bf16"
            else contextlib.nullcontext()
        )
        fixed = torch.Generator().manual_seed(recipe.run.seed + 1)
        self.fixed_z = self.model.prior.sample(GRID_SIZE, generator=fixed).to(self.device)

    # -- phases ------------------------------------------------------------------------------------

    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Next real batch, at D's resolution and at E's (the same crop, resized)."""
        images, _ = next(self.state.stream)
        images = images.to(self.device, non_blocking=True)
        ctx = self.model.context
        return _resize(images, ctx.resolution), _resize(images, ctx.encoder_input_resolution)

    def d_step(self) -> dict[str, torch.Tensor]:
        m = self.model
        x, x_e = self._real_batch()
        n = x.shape[0]
        with self.autocast:
            with torch.no_grad():
                z_hat = m.encoder(x_e).sample()
                z = m.prior.sample(n, device=self.device)
                x_fake = m.generator(z)
            real, fake = _score_pairs(m, x, z_hat, x_fake, z)
            loss, stats = m.loss.discriminator(real, fake)
        self.state.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.state.opt_d.step()
        return stats

    def ge_step(self) -> dict[str, torch.Tensor]:
        m = self.model
        x, x_e = self._real_batch()
        n = x.shape[0]
        m.discriminator.requires_grad_(False)  # no D gradients are needed here
        try:
            with self.autocast:
                z = m.prior.sample(n, device=self.device)
                x_fake = m.generator(z)
                z_hat = m.encoder(x_e).sample()
                real, fake = _score_pairs(m, x, z_hat, x_fake, z)
                loss, stats = m.loss.generator_encoder(real, fake)
            self.state.opt_ge.zero_grad(set_to_none=True)
            loss.backward()
            self.state.opt_ge.step()
        finally:
            m.discriminator.requires_grad_(True)
        return stats

    def ema_step(self) -> None:
        e = self.recipe.ema
        decay = ema_decay(self.state.step, e.decay, e.warmup, e.start_step)
        self.state.ema_generator.update(self.model.generator, decay)
        self.state.ema_encoder.update(self.model.encoder, decay)

    # -- outputs -----------------------------------------------------------------------------------

    @torch.no_grad()
    def write_grids(self, recon_images: torch.Tensor) -> None:
        step = self.state.step
        generator = self.state.ema_generator.module
        encoder = self.state.ema_encoder.module
        ctx = self.model.context
        self.writer.save_grid("samples", step, generator(self.fixed_z), nrow=8)
        x = recon_images.to(self.device)
        recon = generator(encoder(_resize(x, ctx.encoder_input_resolution)).point)
        pairs = torch.cat([_resize(x, ctx.resolution), recon])
        self.writer.save_grid("reconstructions", step, pairs, nrow=x.shape[0])

    def save_checkpoint(self) -> Path:
        metadata = {
            "recipe": self.recipe.to_json(),
            "step": str(self.state.step),
            "bifamily_version": __version__,
        }
        extra = {"data": self.state.stream.state(), "step": self.state.step}
        return self.checkpoints.save(
            self.state.step, self.state.snapshot_modules(), self.state.optimizers(), metadata, extra
        )

    def resume(self, checkpoint: Path) -> int:
        """Load a checkpoint folder into the state; returns the step it was taken at."""
        step, extra = restore(checkpoint, self.state.snapshot_modules(), self.state.optimizers())
        self.state.step = step
        self.state.stream.load_state(extra["data"])
        self.writer.truncate_after(step)
        return step

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self, recon_images: torch.Tensor, on_tick: Callable[[Trainer], None] | None = None) -> None:
        run, state = self.recipe.run, self.state
        total = run.steps
        bar = tqdm(
            total=total,
            initial=state.step,
            desc=run.name,
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        images_per_step = self.recipe.train.batch_size * (self.recipe.train.d_steps + 1)
        last_time, last_step = time.perf_counter(), state.step
        for module in self.model.modules().values():
            module.train()
        while state.step < total:
            # D steps, then the joint G+E step, then EMA.
            for _ in range(self.recipe.train.d_steps):
                d_stats = self.d_step()
            ge_stats = self.ge_step()
            self.ema_step()
            state.step += 1

            # Tick: host synchronisation happens only here, at intervals.
            done = state.step == total
            if state.step % run.log_every == 0 or done:
                now = time.perf_counter()
                rate = images_per_step * (state.step - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, state.step
                record = {"step": state.step, **{k: v.item() for k, v in {**d_stats, **ge_stats}.items()}}
                record["images_per_s"] = round(rate, 1)
                self.writer.append("stats.jsonl", record)
                bar.set_postfix(
                    {k: f"{v:.3f}" for k, v in record.items() if k.startswith("loss")} | {"img/s": f"{rate:.0f}"},
                    refresh=False,
                )
            if state.step % run.sample_every == 0 or done:
                self.write_grids(recon_images)
            if state.step % run.checkpoint_every == 0 or done:
                self.save_checkpoint()
            if on_tick is not None:
                on_tick(self)
            bar.update(1)
        bar.close()
