"""The training loop: read it top to bottom.

One iteration ("step") = ``train.d_steps`` discriminator updates, then one joint generator+encoder
update, then the EMA update, then the tick (logging, grids, checkpoints). Each update draws a fresh
global batch of ``train.batch_size`` real images and latents. Real pairs are (x, E(x)); fake pairs
are (G(z), z).

Every rank runs this same loop (``bifamily.distributed``). An update is computed in
``train.accumulation`` micro-steps; in each, every rank handles its rows of the global batch
(:class:`bifamily.data.BatchLayout`) and backpropagates its loss divided by the number of
micro-steps. DDP then averages the gradients over ranks once, on the last micro-step, so the update
follows the mean loss over the global batch. Only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import attrs
import torch
from tqdm import tqdm

from bifamily import __version__
from bifamily.build import Model
from bifamily.checkpoint import CheckpointManager, restore
from bifamily.data import BatchLayout, BatchStream
from bifamily.distributed import Replicated, World
from bifamily.ema import EMA, ema_decay
from bifamily.precision import Precision
from bifamily.randomness import RandomStreams
from bifamily.recipe import Recipe
from bifamily.rundir import RunWriter
from bifamily.step_modules import GeneratorEncoder, ScorePairs, parameters_without_gradient, resize

GRID_SIZE = 64
RECON_SIZE = 16

MicroStep = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x, x_e, z, noise


@attrs.define
class TrainState:
    """Everything a step mutates, grouped so checkpoints and tests can reach it."""

    model: Model
    ema_generator: EMA
    ema_encoder: EMA
    opt_d: torch.optim.Optimizer
    opt_ge: torch.optim.Optimizer
    scaler_d: torch.amp.GradScaler
    scaler_ge: torch.amp.GradScaler
    layout: BatchLayout
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

    def scalers(self) -> dict[str, torch.amp.GradScaler]:
        return {"d": self.scaler_d, "ge": self.scaler_ge}


def _adam(params: list[dict[str, Any]], recipe: Recipe) -> torch.optim.Adam:
    o = recipe.optim
    # Fused Adam runs the whole update in one kernel per dtype/device (CPU and CUDA).
    return torch.optim.Adam(params, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)


def make_state(recipe: Recipe, model: Model, dataset: Any, world: World = World()) -> TrainState:
    o, t = recipe.optim, recipe.train
    opt_d = _adam([{"params": model.discriminator.parameters(), "lr": o.d_lr}], recipe)
    opt_ge = _adam(
        [
            {"params": model.generator.parameters(), "lr": o.g_lr},
            {"params": model.encoder.parameters(), "lr": o.encoder_lr},
        ],
        recipe,
    )
    precision = Precision(t.precision, model.context.device)
    layout = BatchLayout(t.batch_size, t.accumulation, world.size, world.rank)
    stream = BatchStream(dataset, t.batch_size, recipe.run.seed, t.num_workers, rows=layout.rows())
    return TrainState(
        model,
        EMA(model.generator),
        EMA(model.encoder),
        opt_d,
        opt_ge,
        precision.scaler(),
        precision.scaler(),
        layout,
        stream,
    )


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every restored optimizer-state tensor its parameter's memory layout.

    Checkpoints store contiguous (NCHW) tensors, but with ``train.channels_last`` the conv weights are
    NHWC, and fused Adam pairs state and parameter elements in storage order: mismatched layouts
    would silently update the wrong elements.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _mean_stats(per_micro_step: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    count = len(per_micro_step)
    return {name: sum(stats[name] for stats in per_micro_step) / count for name in per_micro_step[0]}


class Trainer:
    """Runs the loop for a built model; ``on_tick`` is called after every step (tests, evaluation)."""

    def __init__(
        self, recipe: Recipe, state: TrainState, run_dir: Path, *, world: World = World(), progress: bool = True
    ):
        self.recipe = recipe
        self.state = state
        self.model = state.model
        self.world = world
        self.writer = RunWriter(run_dir)
        self.checkpoints = CheckpointManager(run_dir / "checkpoints", keep=recipe.run.keep_checkpoints)
        self.progress = progress and world.is_main
        self.device = self.model.context.device
        self.precision = Precision(recipe.train.precision, self.device)
        self.streams = RandomStreams(recipe.run.seed, world.rank, self.model.prior)
        self._wrap_step_modules()
        fixed = torch.Generator().manual_seed(recipe.run.seed + 1)
        self.fixed_z = self.model.prior.sample(GRID_SIZE, generator=fixed).to(self.device)

    def _wrap_step_modules(self) -> None:
        """G+E and D as the steps call them: DDP across ranks, compiled if ``train.compile``."""
        m, compiled = self.model, self.recipe.train.compile
        ge, pairs = GeneratorEncoder(m.generator, m.encoder), ScorePairs(m.discriminator)
        unused_d, unused_ge = parameters_without_gradient(m, ge, pairs) if self.world.size > 1 else ([], [])
        self.ge = Replicated(ge, self.world, find_unused=bool(unused_ge), compile=compiled)
        self.pairs = Replicated(pairs, self.world, find_unused=bool(unused_d), compile=compiled)
        self.frozen_pairs = torch.compile(pairs) if compiled else pairs

    # -- phases ------------------------------------------------------------------------------------

    def _next_batch(self) -> list[MicroStep]:
        """This rank's rows of the next global batch, one (x, x_e, z, noise) per micro-step.

        x is at D's resolution and x_e at E's (the same crop, resized); z and the posterior noise are
        this rank's rows of the global draw.
        """
        layout, ctx = self.state.layout, self.model.context
        images, _ = next(self.state.stream)
        images = images.to(self.device, non_blocking=True)
        shape = (layout.accumulation, layout.micro_batch)
        x = self._as_input(resize(images, ctx.resolution)).unflatten(0, shape)
        x_e = self._as_input(resize(images, ctx.encoder_input_resolution)).unflatten(0, shape)
        z, noise = (layout.local(t).to(self.device, non_blocking=True) for t in self.streams.draw(layout.batch_size))
        return list(zip(x, x_e, z, noise))

    def _as_input(self, images: torch.Tensor) -> torch.Tensor:
        if self.recipe.train.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def d_step(self) -> dict[str, torch.Tensor]:
        micro_steps = self._next_batch()
        opt, scaler = self.state.opt_d, self.state.scaler_d
        opt.zero_grad(set_to_none=True)
        stats = []
        for j, (x, x_e, z, noise) in enumerate(micro_steps):
            with self.pairs.syncing(last=j == len(micro_steps) - 1):
                with self.precision.autocast():
                    with torch.no_grad():
                        x_fake, z_hat = self.ge(z, x_e, noise)
                    real, fake = self.pairs(x, z_hat, x_fake, z)
                    loss, micro_stats = self.model.loss.discriminator(real, fake)
                scaler.scale(loss / len(micro_steps)).backward()
            stats.append(micro_stats)
        scaler.step(opt)
        scaler.update()
        return _mean_stats(stats)

    def ge_step(self) -> dict[str, torch.Tensor]:
        micro_steps = self._next_batch()
        opt, scaler = self.state.opt_ge, self.state.scaler_ge
        opt.zero_grad(set_to_none=True)
        stats = []
        self.model.discriminator.requires_grad_(False)  # no D gradients are needed here
        try:
            for j, (x, x_e, z, noise) in enumerate(micro_steps):
                with self.ge.syncing(last=j == len(micro_steps) - 1):
                    with self.precision.autocast():
                        x_fake, z_hat = self.ge(z, x_e, noise)
                        real, fake = self.frozen_pairs(x, z_hat, x_fake, z)
                        loss, micro_stats = self.model.loss.generator_encoder(real, fake)
                    scaler.scale(loss / len(micro_steps)).backward()
                stats.append(micro_stats)
            scaler.step(opt)
            scaler.update()
        finally:
            self.model.discriminator.requires_grad_(True)
        return _mean_stats(stats)

    def ema_step(self) -> None:
        e = self.recipe.ema
        decay = ema_decay(self.state.step, e.decay, e.warmup, e.start_step)
        self.state.ema_generator.update(self.model.generator, decay)
        self.state.ema_encoder.update(self.model.encoder, decay)

    # -- outputs (rank 0) --------------------------------------------------------------------------

    @torch.no_grad()
    def write_grids(self, recon_images: torch.Tensor) -> None:
        step = self.state.step
        generator = self.state.ema_generator.module
        encoder = self.state.ema_encoder.module
        ctx = self.model.context
        self.writer.save_grid("samples", step, generator(self.fixed_z), nrow=8)
        x = recon_images.to(self.device)
        recon = generator(encoder(resize(x, ctx.encoder_input_resolution)).point)
        pairs = torch.cat([resize(x, ctx.resolution), recon])
        self.writer.save_grid("reconstructions", step, pairs, nrow=x.shape[0])

    def save_checkpoint(self) -> Path:
        metadata = {
            "recipe": self.recipe.to_json(),
            "step": str(self.state.step),
            "bifamily_version": __version__,
        }
        extra = {
            "data": self.state.stream.state(),
            "step": self.state.step,
            "scalers": {name: scaler.state_dict() for name, scaler in self.state.scalers().items()},
        }
        return self.checkpoints.save(
            self.state.step, self.state.snapshot_modules(), self.state.optimizers(), metadata, extra
        )

    def resume(self, checkpoint: Path) -> int:
        """Load a checkpoint folder into the state (on every rank); returns the step it was taken at.

        Nothing in it depends on the world size that wrote it: the data position counts global
        batches and the random streams are re-seeded from the step.
        """
        step, extra = restore(checkpoint, self.state.snapshot_modules(), self.state.optimizers())
        for optimizer in self.state.optimizers().values():
            _match_parameter_layouts(optimizer)
        self.state.step = step
        self.state.stream.load_state(extra["data"])
        for name, scaler in self.state.scalers().items():
            saved = extra.get("scalers", {}).get(name)
            if saved and scaler.is_enabled():
                scaler.load_state_dict(saved)
        if self.world.is_main:
            self.writer.truncate_after(step)
        return step

    def _tick(self, d_stats: dict[str, torch.Tensor], ge_stats: dict[str, torch.Tensor], recon_images: torch.Tensor) -> None:
        """Logging, grids and checkpoints at their intervals: the only place the host waits for the device."""
        run, step = self.recipe.run, self.state.step
        done = step == run.steps
        if step % run.log_every == 0 or done:
            now = time.perf_counter()
            rate = self._images_per_step * (step - self._last_step) / max(now - self._last_time, 1e-9)
            self._last_time, self._last_step = now, step
            record = {"step": step, **self.world.average({**d_stats, **ge_stats}), "images_per_s": round(rate, 1)}
            if self.world.is_main:
                self.writer.append("stats.jsonl", record)
                self._bar.set_postfix(
                    {k: f"{v:.3f}" for k, v in record.items() if k.startswith("loss")} | {"img/s": f"{rate:.0f}"},
                    refresh=False,
                )
        if not self.world.is_main:
            return
        if step % run.sample_every == 0 or done:
            self.write_grids(recon_images)
        if step % run.checkpoint_every == 0 or done:
            self.save_checkpoint()

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self, recon_images: torch.Tensor, on_tick: Callable[[Trainer], None] | None = None) -> None:
        run, train, state = self.recipe.run, self.recipe.train, self.state
        self._bar = tqdm(
            total=run.steps, initial=state.step, desc=run.name, unit="step", disable=not self.progress, dynamic_ncols=True
        )
        self._images_per_step = train.batch_size * (train.d_steps + 1)
        self._last_time, self._last_step = time.perf_counter(), state.step
        for module in self.model.modules().values():
            module.train()
        while state.step < run.steps:
            # This step's random streams, then the D steps, the joint G+E step and EMA.
            self.streams.start_step(state.step)
            for _ in range(train.d_steps):
                d_stats = self.d_step()
            ge_stats = self.ge_step()
            self.ema_step()
            state.step += 1

            self._tick(d_stats, ge_stats, recon_images)
            if on_tick is not None:
                on_tick(self)
            self._bar.update(1)
        self._bar.close()
        self.world.barrier()  # rank 0's last checkpoint is on disk before any rank moves on
