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

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import torch
import torch.distributed as dist
from tqdm import tqdm

from bifamily.build import Model
from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.resume import RESUME_FILE, restore
from bifamily.checkpoint.snapshot import snapshot_metadata
from bifamily.data import BatchLayout, BatchStream
from bifamily.distributed import Replicated, World
from bifamily.ema import EMA, ema_decay
from bifamily.errors import BifamilyError, CheckpointError, DataError
from bifamily.guard import NonFinite, NonFiniteWatch
from bifamily.precision import Precision
from bifamily.randomness import RandomStreams, derive_seed
from bifamily.recipe import Recipe
from bifamily.rundir import RECONSTRUCTIONS, SAMPLES, STATS_FILE, RunWriter
from bifamily.step_modules import GeneratorEncoder, ScorePairs, parameters_without_gradient, resize
from bifamily.stopping import Diverged, Interrupted, StopSignals, signal_name

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
    stream = BatchStream(
        dataset,
        t.batch_size,
        recipe.run.seed,
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


def _control_group(world: World) -> Any:
    """The process group that carries the per-step stop flag: host memory only, so agreeing on a stop
    never makes the host wait for a GPU. gloo's default group is that already; NCCL gets a gloo twin."""
    if world.size == 1 or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


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
    """Runs the loop for a built model; ``on_tick`` is called after every step (tests, evaluation)."""

    def __init__(
        self, recipe: Recipe, state: TrainState, run_dir: Path, *, world: World = World(), progress: bool = True
    ):
        self.recipe = recipe
        self.state = state
        self.model = state.model
        self.world = world
        self.writer = RunWriter(run_dir)
        self.checkpoints = CheckpointManager(self.writer.run_dir.checkpoints, keep=recipe.run.keep_checkpoints)
        self.progress = progress and world.is_main
        self.device = self.model.context.device
        self.precision = Precision(recipe.train.precision, self.device)
        self.streams = RandomStreams(recipe.run.seed, world.rank, self.model.prior)
        self.watch = NonFiniteWatch(self.device)
        self.stop_signals = StopSignals()
        self.rollbacks = 0  # in this run's history: each one re-seeds data order and latents
        self._rollbacks_since_checkpoint = 0
        self._control = _control_group(world)
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
        if self.recipe.train.channels_last:
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
        e = self.recipe.ema
        decay = ema_decay(self.state.step, e.decay, e.warmup, e.start_step)
        self.state.ema_generator.update(self.model.generator, decay)
        self.state.ema_encoder.update(self.model.encoder, decay)

    def train_step(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One iteration: this step's random streams, ``train.d_steps`` D updates, the joint G+E update
        and EMA; returns the last D update's and the G+E update's statistics (device tensors)."""
        self.streams.start_step(self.state.step)
        for _ in range(self.recipe.train.d_steps):
            d_stats = self.d_step()
        ge_stats = self.ge_step()
        self.ema_step()
        self.state.step += 1
        return d_stats, ge_stats

    # -- outputs (rank 0) --------------------------------------------------------------------------

    @torch.inference_mode()
    def write_grids(self, recon_images: torch.Tensor) -> None:
        step = self.state.step
        generator = self.state.ema_generator.module
        encoder = self.state.ema_encoder.module
        ctx = self.model.context
        self.writer.save_grid(SAMPLES, step, generator(self.fixed_z), nrow=8)
        x = recon_images.to(self.device)
        recon = generator(encoder(resize(x, ctx.encoder_input_resolution)).point)
        pairs = torch.cat([resize(x, ctx.resolution), recon])
        self.writer.save_grid(RECONSTRUCTIONS, step, pairs, nrow=x.shape[0])

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
            snapshot_metadata(self.recipe, self.state.step),
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
        self._set_rollbacks(extra.get("guard", {}).get("rollbacks", 0))
        for name, scaler in self.state.scalers().items():
            saved = extra.get("scalers", {}).get(name)
            if saved and scaler.is_enabled():
                scaler.load_state_dict(saved)
        if self.world.is_main:
            self.writer.truncate_after(step)
        return step

    def _set_rollbacks(self, rollbacks: int) -> None:
        """Re-seed the data order and the latent and noise streams for the history after ``rollbacks``
        rollbacks (call right after the stream's position was loaded)."""
        self.rollbacks = rollbacks
        seed = _rollback_seed(self.recipe.run.seed, rollbacks)
        self.streams.seed = seed
        self.state.stream.seed = seed

    def _tick(
        self,
        d_stats: dict[str, torch.Tensor],
        ge_stats: dict[str, torch.Tensor],
        recon_images: torch.Tensor,
        *,
        stopping: bool = False,
    ) -> NonFinite | None:
        """Logging, grids and checkpoints at their intervals (and a checkpoint when stopping): the only
        place the host waits for the device.

        The finiteness record is read first; if this history diverged, nothing is written and the
        failure is returned instead.
        """
        run, step = self.recipe.run, self.state.step
        done = step == run.steps
        log = step % run.log_every == 0 or done
        grids = step % run.sample_every == 0 or done
        save = step % run.checkpoint_every == 0 or done or stopping
        if not (log or grids or save):
            return None
        failure = self.watch.first_failure(self.world)
        if failure is not None:
            return failure
        if save:
            self._rollbacks_since_checkpoint = 0
        try:
            self._write_tick(d_stats, ge_stats, recon_images, log=log, grids=grids, save=save)
        except OSError as error:  # a full or failing disk: say where, keep the traceback for bugs only
            raise BifamilyError(
                f"{error.filename or self.writer.path}: cannot write: {error.strerror or error}"
            ) from error
        return None

    def _write_tick(
        self,
        d_stats: dict[str, torch.Tensor],
        ge_stats: dict[str, torch.Tensor],
        recon_images: torch.Tensor,
        *,
        log: bool,
        grids: bool,
        save: bool,
    ) -> None:
        step = self.state.step
        if log:
            now = time.perf_counter()
            rate = self._images_per_step * (step - self._last_step) / max(now - self._last_time, 1e-9)
            self._last_time, self._last_step = now, step
            record = {"step": step, **self.world.average({**d_stats, **ge_stats}), "images_per_s": round(rate, 1)}
            if self.world.is_main:
                self.writer.append(STATS_FILE, record)
                self._bar.set_postfix(
                    {k: f"{v:.3f}" for k, v in record.items() if k.startswith("loss")} | {"img/s": f"{rate:.0f}"},
                    refresh=False,
                )
        if not self.world.is_main:
            return
        if grids:
            self.write_grids(recon_images)
        if save:
            self.save_checkpoint()

    # -- stopping early ----------------------------------------------------------------------------

    def _agreed_stop(self) -> int:
        """The stop signal any rank has received (0: none): every rank gets the same answer after the
        same step. One all-reduce of one integer in host memory per step (about 0.2 ms on gloo)."""
        signum = self.stop_signals.received
        if self.world.size > 1:
            flag = torch.tensor([signum], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._control)
            signum = int(flag.item())
        return signum

    def _continue_hint(self) -> str:
        return f"continue with: bifamily run RECIPE --out {self.writer.path} --resume"

    def _interrupted(self, signum: int) -> Interrupted:
        """After the tick wrote the stop checkpoint: wait for rank 0's write, then the exception to raise."""
        self.world.barrier()
        lines = [
            f"{signal_name(signum)} after step {self.state.step}: its checkpoint is in {self.checkpoints.directory}",
            self._continue_hint(),
        ]
        return Interrupted(signum, lines, main_rank=self.world.is_main)

    def _recover(self, failure: NonFinite, signum: int) -> None:
        """Roll back to the latest checkpoint with fresh data, or raise when the guard says to stop."""
        guard, main = self.recipe.guard, self.world.is_main
        latest = self.world.on_main(self.checkpoints.latest)
        where = f"the latest checkpoint is {latest}" if latest is not None else "there is no checkpoint"
        if signum:
            lines = [
                f"{signal_name(signum)} after step {self.state.step}, no checkpoint written: {failure.describe()}",
                f"{where}; {self._continue_hint()}",
            ]
            raise Interrupted(signum, lines, main_rank=main)
        headline = f"training diverged: {failure.describe()} (found after step {self.state.step})"
        if guard.on_nonfinite == "stop":
            raise Diverged(
                [
                    headline,
                    f"nothing from step {failure.step} on was logged or checkpointed; {where}",
                    'set guard.on_nonfinite = "rollback" to go back to it and retry on fresh data automatically',
                ],
                main_rank=main,
            )
        if latest is None or self._rollbacks_since_checkpoint >= guard.max_rollbacks:
            tries = f"after {self._rollbacks_since_checkpoint} rollback(s) without a new checkpoint"
            raise Diverged([headline, f"giving up {tries}; {where}"], main_rank=main)
        rollbacks = self.rollbacks + 1
        self.resume(latest)
        self._set_rollbacks(rollbacks)
        self._rollbacks_since_checkpoint += 1
        self.watch.reset()
        self._bar.n = self.state.step
        self._bar.refresh()
        self._last_time, self._last_step = time.perf_counter(), self.state.step
        if main:
            logging.getLogger("bifamily").warning(
                f"{headline}: rolled back to step {self.state.step} "
                f"(rollback {self._rollbacks_since_checkpoint} of at most {guard.max_rollbacks}), with a fresh data order"
            )

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self, recon_images: torch.Tensor, on_tick: Callable[[Trainer], None] | None = None) -> None:
        """Train up to ``run.steps``.

        Raises :class:`~bifamily.stopping.Interrupted` after SIGTERM or SIGINT (once the step is done
        and checkpointed) and :class:`~bifamily.stopping.Diverged` when a step was not finite and the
        guard does not roll back.
        """
        run, train, state = self.recipe.run, self.recipe.train, self.state
        self._bar = tqdm(
            total=run.steps, initial=state.step, desc=run.name, unit="step", disable=not self.progress, dynamic_ncols=True
        )
        self._images_per_step = train.batch_size * (train.d_steps + 1)
        self._last_time, self._last_step = time.perf_counter(), state.step
        for module in self.model.modules().values():
            module.train()
        if state.step == 0 and self.world.is_main:
            self.writer.truncate_after(0)  # log lines of an attempt killed before its first checkpoint
        if self.recipe.guard.on_nonfinite == "rollback" and self.world.is_main and self.checkpoints.latest() is None:
            self.save_checkpoint()  # something to roll back to before the first interval checkpoint
        try:
            with self.stop_signals.installed():
                while state.step < run.steps:
                    d_stats, ge_stats = self.train_step()
                    signum = self._agreed_stop()
                    failure = self._tick(d_stats, ge_stats, recon_images, stopping=bool(signum))
                    if failure is not None:
                        self._recover(failure, signum)
                        continue
                    if on_tick is not None:
                        on_tick(self)
                    self._bar.update(1)
                    if signum:
                        raise self._interrupted(signum)
        finally:
            self._bar.close()
        self.world.barrier()  # rank 0's last checkpoint is on disk before any rank moves on
