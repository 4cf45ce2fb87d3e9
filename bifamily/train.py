"""The training loop: read it top to bottom.

One iteration ("step") = ``train.d_steps`` discriminator updates, then one joint generator+encoder
update, then the EMA update. Each update draws a fresh global batch of ``train.batch_size`` real
images and latents. Real pairs are (x, E(x)); fake pairs are (G(z), z).

Every rank runs this same loop (``bifamily.distributed``). An update is computed in
``train.accumulation`` micro-steps; in each, every rank handles its rows of the global batch
(:class:`bifamily.data.BatchLayout`) and backpropagates its loss divided by the number of
micro-steps. DDP then averages the gradients over ranks once, on the last micro-step, so the update
follows the mean loss over the global batch. Only rank 0 writes files and shows progress.

Between steps, and outside this module: the interval work (logs, grids, checkpoints;
:mod:`bifamily.intervals`), which first checks that every update since the last one was finite, and
the recovery (:mod:`bifamily.recovery`): SIGTERM and SIGINT finish the step, write a checkpoint and
stop; a diverged step stops the run or rolls back to the latest checkpoint (docs/reliability.md). The
state a step mutates, and its checkpoints, are :mod:`bifamily.train_state`'s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from bifamily.checkpoint.manager import CheckpointManager
from bifamily.distributed import Replicated, World
from bifamily.ema import ema_decay
from bifamily.errors import BifamilyError, DataError
from bifamily.guard import NonFiniteWatch
from bifamily.interfaces import Scores
from bifamily.intervals import IntervalWork
from bifamily.precision import Precision
from bifamily.recovery import Recovery
from bifamily.rundir import RunWriter
from bifamily.step_modules import GeneratorEncoder, ScorePairs, parameters_without_gradient, resize
from bifamily.train_config import TrainSettings
from bifamily.train_state import TrainState, save_state

MicroStep = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x, x_e, z, noise


def _reading_failed(exc: Exception, step: int) -> DataError:
    """A data error, from this process or re-raised from a loader worker, as one line without traceback."""
    text = str(exc).strip()
    if "Original Traceback" in text:  # torch's copy of a worker's exception carries the worker's traceback
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1])
    if isinstance(exc, BifamilyError):
        return DataError(text)
    return DataError(f"$.data: reading the training batch of step {step} failed: {type(exc).__name__}: {text}")


def _mean_stats(per_micro_step: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    count = len(per_micro_step)
    return {name: sum(stats[name] for stats in per_micro_step) / count for name in per_micro_step[0]}


class Trainer:
    """Runs the loop for a built model with its state and settings; ``on_tick`` is called after every
    step (scheduled evaluation, tests)."""

    def __init__(
        self, state: TrainState, settings: TrainSettings, run_dir: Path, *, world: World = World(), progress: bool = True
    ):
        self.settings = settings
        self.state = state
        self.model = state.model
        self.world = world
        self.writer = RunWriter(run_dir)
        self.checkpoints = CheckpointManager(self.writer.run_dir.checkpoints, keep=settings.run.keep_checkpoints)
        self.progress = progress and world.is_main
        self.device = self.model.context.device
        self.precision = Precision(settings.train.precision, self.device)
        self.watch = NonFiniteWatch(self.device)
        self.recovery = Recovery(self)
        self._wrap_step_modules()

    def _wrap_step_modules(self) -> None:
        """G+E and D as the steps call them: DDP across ranks, compiled if ``train.compile``."""
        m, compiled = self.model, self.settings.train.compile
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
        try:
            images, _ = next(self.state.stream)
        except (BifamilyError, OSError) as exc:
            raise _reading_failed(exc, self.state.step + 1) from exc
        images = images.to(self.device, non_blocking=True)
        shape = (layout.accumulation, layout.micro_batch)
        x = self._as_input(resize(images, ctx.resolution)).unflatten(0, shape)
        x_e = self._as_input(resize(images, ctx.encoder_input_resolution)).unflatten(0, shape)
        z, noise = (layout.local(t).to(self.device, non_blocking=True) for t in self.state.streams.draw(layout.batch_size))
        return list(zip(x, x_e, z, noise))

    def _as_input(self, images: torch.Tensor) -> torch.Tensor:
        if self.settings.train.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def d_step(self) -> dict[str, torch.Tensor]:
        micro_steps = self._next_batch()
        scaler = self.state.scaler_d
        self.state.opt_d.zero_grad(set_to_none=True)
        stats = []
        step = self.state.step + 1
        for j, (x, x_e, z, noise) in enumerate(micro_steps):
            with self.pairs.syncing(last=j == len(micro_steps) - 1):
                with self.precision.autocast():
                    with torch.no_grad():
                        x_fake, z_hat, _ = self.ge(z, x_e, noise)
                    real, fake = self.pairs(x, z_hat, x_fake, z)
                    loss, micro_stats = self.model.loss.discriminator(real, fake)
                self.watch.record("discriminator loss", loss, step)
                scaler.scale(loss / len(micro_steps)).backward()
            stats.append(micro_stats)
        self._step_discriminator(step)
        return _mean_stats(stats)

    def ge_step(self) -> dict[str, torch.Tensor]:
        micro_steps = self._next_batch()
        scaler = self.state.scaler_ge
        self.state.opt_ge.zero_grad(set_to_none=True)
        stats = []
        step = self.state.step + 1
        self.model.discriminator.requires_grad_(False)  # no D gradients are needed here
        try:
            for j, (x, x_e, z, noise) in enumerate(micro_steps):
                with self.ge.syncing(last=j == len(micro_steps) - 1):
                    with self.precision.autocast():
                        x_fake, z_hat, x_rec = self.ge(z, x_e, noise, self.model.loss.reconstructs)
                        real, fake = self.frozen_pairs(x, z_hat, x_fake, z)
                        loss, micro_stats = self._generator_encoder_loss(x, x_rec, real, fake)
                    self.watch.record("generator+encoder loss", loss, step)
                    scaler.scale(loss / len(micro_steps)).backward()
                stats.append(micro_stats)
            self._step_generator_encoder(step)
        finally:
            self.model.discriminator.requires_grad_(True)
        return _mean_stats(stats)

    def simultaneous_step(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """D and G+E updated together (``train.updates = "simultaneous"``): one batch and one forward pass
        of G, E and D; D's loss is backpropagated into D's parameters only and G+E's loss into G's and
        E's only, then both optimizers step. Returns the D and G+E statistics."""
        micro_steps = self._next_batch()
        state, loss_fn = self.state, self.model.loss
        state.opt_d.zero_grad(set_to_none=True)
        state.opt_ge.zero_grad(set_to_none=True)
        d_params, ge_params = list(self.pairs.module.parameters()), list(self.ge.module.parameters())
        d_stats, ge_stats = [], []
        step = state.step + 1
        for j, (x, x_e, z, noise) in enumerate(micro_steps):
            last = j == len(micro_steps) - 1
            with self.ge.syncing(last), self.pairs.syncing(last):
                with self.precision.autocast():
                    x_fake, z_hat, x_rec = self.ge(z, x_e, noise, loss_fn.reconstructs)
                    real, fake = self.pairs(x, z_hat, x_fake, z)
                    d_loss, d_micro = loss_fn.discriminator(real, fake)
                    ge_loss, ge_micro = self._generator_encoder_loss(x, x_rec, real, fake)
                self.watch.record("discriminator loss", d_loss, step)
                self.watch.record("generator+encoder loss", ge_loss, step)
                d_scaled = state.scaler_d.scale(d_loss / len(micro_steps))
                torch.autograd.backward(d_scaled, inputs=d_params, retain_graph=True)
                torch.autograd.backward(state.scaler_ge.scale(ge_loss / len(micro_steps)), inputs=ge_params)
            d_stats.append(d_micro)
            ge_stats.append(ge_micro)
        self._step_discriminator(step)
        self._step_generator_encoder(step)
        return _mean_stats(d_stats), _mean_stats(ge_stats)

    def _generator_encoder_loss(
        self, x: torch.Tensor, x_rec: torch.Tensor | None, real: Scores, fake: Scores
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, stats = self.model.loss.generator_encoder(real, fake)
        if x_rec is None:
            return loss, stats
        cycle, cycle_stats = self.model.loss.reconstruction(x, x_rec)
        return loss + cycle, {**stats, **cycle_stats}

    def _step_discriminator(self, step: int) -> None:
        scaler = self.state.scaler_d
        if not scaler.is_enabled():  # fp16 loss scaling skips updates with inf gradients by design
            self.watch.record_gradients("discriminator gradients", self.model.discriminator.parameters(), step)
        scaler.step(self.state.opt_d)
        scaler.update()

    def _step_generator_encoder(self, step: int) -> None:
        scaler = self.state.scaler_ge
        if not scaler.is_enabled():
            self.watch.record_gradients("generator gradients", self.model.generator.parameters(), step)
            self.watch.record_gradients("encoder gradients", self.model.encoder.parameters(), step)
        scaler.step(self.state.opt_ge)
        scaler.update()

    def ema_step(self) -> None:
        e = self.settings.ema
        decay = ema_decay(self.state.step, e.decay, e.warmup, e.start_step)
        self.state.ema_generator.update(self.model.generator, decay)
        self.state.ema_encoder.update(self.model.encoder, decay)

    def train_step(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One iteration: this step's random streams, ``train.d_steps`` D updates and the joint G+E update
        (or one simultaneous update of both), then EMA; returns the last D update's and the G+E update's
        statistics (device tensors)."""
        self.state.streams.start_step(self.state.step)
        if self.settings.train.updates == "simultaneous":
            d_stats, ge_stats = self.simultaneous_step()
        else:
            for _ in range(self.settings.train.d_steps):
                d_stats = self.d_step()
            ge_stats = self.ge_step()
        self.ema_step()
        self.state.step += 1
        return d_stats, ge_stats

    # -- the loop ----------------------------------------------------------------------------------

    def fit(
        self,
        recon_images: torch.Tensor,
        on_tick: Callable[[Trainer], bool] | None = None,
        *,
        finish_checks_every: int = 0,
    ) -> None:
        """Train up to ``run.steps``: each step, then the agreed stop signal, then the interval work (or the
        recovery from a diverged step), then ``on_tick``. At multiples of ``finish_checks_every`` every
        rank takes rank 0's ``on_tick`` answer, and True ends the run there, its grids and checkpoint
        written as at the last step.

        Raises :class:`~bifamily.stopping.Interrupted` after SIGTERM or SIGINT (once the step is done
        and checkpointed) and :class:`~bifamily.stopping.Diverged` when a step was not finite and the
        guard does not roll back.
        """
        run, state = self.settings.run, self.state
        self.bar = tqdm(
            total=run.steps, initial=state.step, desc=run.name, unit="step", disable=not self.progress, dynamic_ncols=True
        )
        intervals = IntervalWork(self, recon_images)
        for module in self.model.modules().values():
            module.train()
        if state.step == 0 and self.world.is_main:
            self.writer.truncate_after(0)  # log lines of an attempt killed before its first checkpoint
        if self.settings.guard.on_nonfinite == "rollback" and self.world.is_main and self.checkpoints.latest() is None:
            save_state(state, self.checkpoints, self.settings.snapshot_metadata)  # to roll back to before the first interval checkpoint
        try:
            with self.recovery.signals.installed():
                while state.step < run.steps:
                    d_stats, ge_stats = self.train_step()
                    signum = self.recovery.agreed_stop()
                    failure = intervals.after_step(d_stats, ge_stats, stopping=bool(signum))
                    if failure is not None:
                        self.recovery.recover(failure, signum)
                        self.bar.n = state.step
                        self.bar.refresh()
                        intervals.restart_rate()
                        continue
                    answer = bool(on_tick(self)) if on_tick is not None else False
                    checked = finish_checks_every > 0 and state.step % finish_checks_every == 0 and state.step < run.steps
                    finish = checked and self.recovery.agreed_finish(answer)
                    self.bar.update(1)
                    if signum:
                        raise self.recovery.interrupted(signum)
                    if finish:
                        intervals.finish_early()
                        break
        finally:
            self.bar.close()
        self.world.barrier()  # rank 0's last checkpoint is on disk before any rank moves on
