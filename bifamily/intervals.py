"""The work a run does between steps, at its intervals: a stats.jsonl line every ``run.log_every`` steps,
sample and reconstruction grids every ``run.sample_every``, a checkpoint every ``run.checkpoint_every``
(each also at the last step, or where ``eval.stop_when`` ends the run; a checkpoint also when the run is
stopping on a signal).

This is the only place the host waits for the device: the finiteness record of the steps since the
last tick is read first, and if the run diverged nothing is written (the trainer's recovery decides
what happens next).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from bifamily.errors import BifamilyError
from bifamily.guard import NonFinite
from bifamily.rundir import RECONSTRUCTIONS, SAMPLES, STATS_FILE
from bifamily.step_modules import resize
from bifamily.train_state import save_state

if TYPE_CHECKING:
    from bifamily.train import Trainer

GRID_SIZE = 64
RECON_SIZE = 16


class IntervalWork:
    """Logs, grids and checkpoints of one trainer at their intervals; rank 0 writes, every rank logs its
    share of the averaged statistics."""

    def __init__(self, trainer: Trainer, recon_images: torch.Tensor):
        self.trainer = trainer
        self.recon_images = recon_images
        settings = trainer.settings
        self.images_per_step = settings.train.batch_size * settings.train.batches_per_step
        fixed = torch.Generator().manual_seed(settings.run.seed + 1)
        self.fixed_z = trainer.model.prior.sample(GRID_SIZE, generator=fixed).to(trainer.device)
        self.restart_rate()

    def restart_rate(self) -> None:
        """Measure the images/s of the next log line from now (after a start, resume or rollback)."""
        self._last_time, self._last_step = time.perf_counter(), self.trainer.state.step

    def after_step(
        self, d_stats: dict[str, torch.Tensor], ge_stats: dict[str, torch.Tensor], *, stopping: bool = False
    ) -> NonFinite | None:
        """Whatever is due after this step; the failure instead, if the run diverged since the last tick."""
        trainer = self.trainer
        settings = trainer.settings
        run, step = settings.run, trainer.state.step
        done = step == run.steps
        log = step % run.log_every == 0 or done
        grids = step % run.sample_every == 0 or done
        save = step % run.checkpoint_every == 0 or done or stopping
        if not (log or grids or save):
            return None
        failure = trainer.watch.first_failure(trainer.world)
        if failure is not None:
            return failure
        with self._disk_errors_named():
            if log:
                self._log({**d_stats, **ge_stats})
            self._write(grids=grids, save=save)
        return None

    def finish_early(self) -> None:
        """A run that ends before ``run.steps`` (its ``eval.stop_when`` reached): this step's grids and
        checkpoint, as at the last step, where its intervals did not write them already."""
        run, step = self.trainer.settings.run, self.trainer.state.step
        with self._disk_errors_named():
            self._write(grids=step % run.sample_every != 0, save=step % run.checkpoint_every != 0)

    def _write(self, *, grids: bool, save: bool) -> None:
        trainer = self.trainer
        if trainer.world.is_main:
            if grids:
                self.write_grids()
            if save:
                save_state(trainer.state, trainer.checkpoints, trainer.settings.snapshot_metadata)

    @contextlib.contextmanager
    def _disk_errors_named(self) -> Iterator[None]:
        """A full or failing disk: say where, keep the traceback for bugs only."""
        try:
            yield
        except OSError as error:
            path = error.filename or self.trainer.writer.path
            raise BifamilyError(f"{path}: cannot write: {error.strerror or error}") from error

    def _log(self, stats: dict[str, torch.Tensor]) -> None:
        trainer = self.trainer
        step, now = trainer.state.step, time.perf_counter()
        rate = self.images_per_step * (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        record = {"step": step, **trainer.world.average(stats), "images_per_s": round(rate, 1)}
        if trainer.world.is_main:
            trainer.writer.append(STATS_FILE, record)
            trainer.bar.set_postfix(
                {k: f"{v:.3f}" for k, v in record.items() if k.startswith("loss")} | {"img/s": f"{rate:.0f}"},
                refresh=False,
            )

    @torch.inference_mode()
    def write_grids(self) -> None:
        """The EMA generator's samples of the fixed latents, and the fixed images beside G(E(x))."""
        trainer = self.trainer
        state, ctx = trainer.state, trainer.model.context
        generator, encoder = state.ema_generator.module, state.ema_encoder.module
        trainer.writer.save_grid(SAMPLES, state.step, generator(self.fixed_z), nrow=8)
        x = self.recon_images.to(trainer.device)
        recon = generator(encoder(resize(x, ctx.encoder_input_resolution)).point)
        pairs = torch.cat([resize(x, ctx.resolution), recon])
        trainer.writer.save_grid(RECONSTRUCTIONS, state.step, pairs, nrow=x.shape[0])
