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

Reliability (docs/reliability.md): every update records on the device whether its losses and
gradients were finite, and ticks that write anything check that record first, so a diverged state is
never logged or checkpointed; the run then stops (exit code 3) or, with ``guard.on_nonfinite =
"rollback"``, reloads the latest checkpoint and continues on fresh data. SIGTERM and SIGINT finish
the current step, write a checkpoint and stop; the ranks of a distributed run agree on the step.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import attrs
import torch
from tqdm import tqdm

from bifamily.build import Model
from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.resume import RESUME_FILE, restore
from bifamily.data import BatchLayout, BatchStream
from bifamily.distributed import Replicated, World
from bifamily.ema import EMA, ema_decay
from bifamily.errors import BifamilyError, CheckpointError, DataError
from bifamily.guard import NonFiniteWatch
from bifamily.intervals import IntervalWork
from bifamily.precision import Precision
from bifamily.randomness import RandomStreams, derive_seed
from bifamily.recovery import Recovery
from bifamily.rundir import RunWriter
from bifamily.step_modules import GeneratorEncoder, ScorePairs, parameters_without_gradient, resize
from bifamily.train_config import OptimConfig, TrainSettings

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


def _adam(params: list[dict[str, Any]], o: OptimConfig) -> torch.optim.Adam:
    # Fused Adam runs the whole update in one kernel per dtype/device (CPU and CUDA).
    return torch.optim.Adam(params, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)


def make_state(settings: TrainSettings, model: Model, dataset: Any, world: World = World()) -> TrainState:
    o, t = settings.optim, settings.train
    opt_d = _adam([{"params": model.discriminator.parameters(), "lr": o.d_lr}], o)
    opt_ge = _adam(
        [
            {"params": model.generator.parameters(), "lr": o.g_lr},
            {"params": model.encoder.parameters(), "lr": o.encoder_lr},
        ],
        o,
    )
    precision = Precision(t.precision, model.context.device)
    layout = BatchLayout(t.batch_size, t.accumulation, world.size, world.rank)
    stream = BatchStream(
        dataset,
        t.batch_size,
        settings.run.seed,
        t.num_workers,
        rows=layout.rows(),
        pin_memory=model.context.device.type == "cuda",
    )
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


def _check_extra(checkpoint: Path, extra: dict) -> None:
    """Refuse a resume file whose ``extra`` (written by :meth:`Trainer.save_checkpoint`) has another shape."""
    data, guard, scalers = extra.get("data"), extra.get("guard", {}), extra.get("scalers", {})

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not (
        isinstance(data, dict)
        and count(data.get("epoch"))
        and count(data.get("batch"))
        and isinstance(guard, dict)
        and count(guard.get("rollbacks", 0))
        and isinstance(scalers, dict)
        and all(isinstance(state, dict) for state in scalers.values())
    ):
        raise CheckpointError(
            f"{checkpoint / RESUME_FILE}: malformed resume metadata: 'extra' lacks the data position "
            "(epoch, batch), or its guard or scaler state has another shape"
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


def _rollback_seed(seed: int, rollbacks: int) -> int:
    """The data-order and latent seed after ``rollbacks`` rollbacks (the recipe's seed before any)."""
    return seed if rollbacks == 0 else derive_seed(seed, "rollback", rollbacks) % 2**32


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
        self.streams = RandomStreams(settings.run.seed, world.rank, self.model.prior)
        self.watch = NonFiniteWatch(self.device)
        self.rollbacks = 0  # in this run's history: each one re-seeds data order and latents
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
        z, noise = (layout.local(t).to(self.device, non_blocking=True) for t in self.streams.draw(layout.batch_size))
        return list(zip(x, x_e, z, noise))

    def _as_input(self, images: torch.Tensor) -> torch.Tensor:
        if self.settings.train.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def d_step(self) -> dict[str, torch.Tensor]:
        micro_steps = self._next_batch()
        opt, scaler = self.state.opt_d, self.state.scaler_d
        opt.zero_grad(set_to_none=True)
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
        if not scaler.is_enabled():  # fp16 loss scaling skips updates with inf gradients by design
            self.watch.record_gradients("discriminator gradients", self.model.discriminator.parameters(), step)
        scaler.step(opt)
        scaler.update()
        return _mean_stats(stats)

    def ge_step(self) -> dict[str, torch.Tensor]:
        micro_steps = self._next_batch()
        opt, scaler = self.state.opt_ge, self.state.scaler_ge
        opt.zero_grad(set_to_none=True)
        stats = []
        step = self.state.step + 1
        self.model.discriminator.requires_grad_(False)  # no D gradients are needed here
        try:
            for j, (x, x_e, z, noise) in enumerate(micro_steps):
                with self.ge.syncing(last=j == len(micro_steps) - 1):
                    with self.precision.autocast():
                        x_fake, z_hat, x_rec = self.ge(z, x_e, noise, self.model.loss.reconstructs)
                        real, fake = self.frozen_pairs(x, z_hat, x_fake, z)
                        loss, micro_stats = self.model.loss.generator_encoder(real, fake)
                        if x_rec is not None:
                            cycle, cycle_stats = self.model.loss.reconstruction(x, x_rec)
                            loss, micro_stats = loss + cycle, {**micro_stats, **cycle_stats}
                    self.watch.record("generator+encoder loss", loss, step)
                    scaler.scale(loss / len(micro_steps)).backward()
                stats.append(micro_stats)
            if not scaler.is_enabled():
                self.watch.record_gradients("generator gradients", self.model.generator.parameters(), step)
                self.watch.record_gradients("encoder gradients", self.model.encoder.parameters(), step)
            scaler.step(opt)
            scaler.update()
        finally:
            self.model.discriminator.requires_grad_(True)
        return _mean_stats(stats)

    def ema_step(self) -> None:
        e = self.settings.ema
        decay = ema_decay(self.state.step, e.decay, e.warmup, e.start_step)
        self.state.ema_generator.update(self.model.generator, decay)
        self.state.ema_encoder.update(self.model.encoder, decay)

    def train_step(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One iteration: this step's random streams, ``train.d_steps`` D updates, the joint G+E update
        and EMA; returns the last D update's and the G+E update's statistics (device tensors)."""
        self.streams.start_step(self.state.step)
        for _ in range(self.settings.train.d_steps):
            d_stats = self.d_step()
        ge_stats = self.ge_step()
        self.ema_step()
        self.state.step += 1
        return d_stats, ge_stats

    # -- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        extra = {
            "data": self.state.stream.state(),
            "step": self.state.step,
            "scalers": {name: scaler.state_dict() for name, scaler in self.state.scalers().items()},
            "guard": {"rollbacks": self.rollbacks},
        }
        return self.checkpoints.save(
            self.state.step,
            self.state.snapshot_modules(),
            self.state.optimizers(),
            {**self.settings.snapshot_metadata, "step": str(self.state.step)},
            extra,
        )

    def resume(self, checkpoint: Path) -> int:
        """Load a checkpoint folder into the state (on every rank); returns the step it was taken at.

        Nothing in it depends on the world size that wrote it: the data position counts global
        batches and the random streams are re-seeded from the step (and the number of rollbacks
        behind it). A damaged checkpoint is refused, naming an earlier whole one if there is one.
        """
        try:
            step, extra = restore(checkpoint, self.state.snapshot_modules(), self.state.optimizers())
        except CheckpointError as error:
            previous = self.checkpoints.whole_before(checkpoint)
            if previous is None:
                raise
            hint = f"the checkpoint before it, {previous}, is whole: move {checkpoint} aside to resume from that one"
            raise CheckpointError(f"{error}\n{hint}") from None
        _check_extra(checkpoint, extra)
        for optimizer in self.state.optimizers().values():
            _match_parameter_layouts(optimizer)
        self.state.step = step
        self.state.stream.load_state(extra["data"])
        self.set_rollbacks(extra.get("guard", {}).get("rollbacks", 0))
        for name, scaler in self.state.scalers().items():
            saved = extra.get("scalers", {}).get(name)
            if saved and scaler.is_enabled():
                scaler.load_state_dict(saved)
        if self.world.is_main:
            self.writer.truncate_after(step)
        return step

    def set_rollbacks(self, rollbacks: int) -> None:
        """Re-seed the data order and the latent and noise streams for the history after ``rollbacks``
        rollbacks (call right after the stream's position was loaded)."""
        self.rollbacks = rollbacks
        seed = _rollback_seed(self.settings.run.seed, rollbacks)
        self.streams.seed = seed
        self.state.stream.seed = seed

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self, recon_images: torch.Tensor, on_tick: Callable[[Trainer], None] | None = None) -> None:
        """Train up to ``run.steps``: each step, then the agreed stop signal, then the interval work (or the
        recovery from a diverged step), then ``on_tick``.

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
            self.save_checkpoint()  # something to roll back to before the first interval checkpoint
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
                    if on_tick is not None:
                        on_tick(self)
                    self.bar.update(1)
                    if signum:
                        raise self.recovery.interrupted(signum)
        finally:
            self.bar.close()
        self.world.barrier()  # rank 0's last checkpoint is on disk before any rank moves on
