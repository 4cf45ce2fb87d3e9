"""A run's training state: everything a step mutates, built fresh (:func:`make_state`), written to a
checkpoint folder (:func:`save_state`, rank 0) and loaded from one (:func:`load_state`, every rank).

What a checkpoint holds beside the weights and optimizer states: the data position (counted in global
batches), the GradScalers' states and the number of guard rollbacks behind the step. Nothing in it
depends on the world size that wrote it, and the random streams are re-seeded from the step (and the
rollbacks), so a run resumed at step s on any number of ranks continues exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from bifamily.build import Model
from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.resume import RESUME_FILE, restore
from bifamily.data import BatchLayout, BatchStream
from bifamily.distributed import World
from bifamily.ema import EMA
from bifamily.errors import CheckpointError
from bifamily.precision import Precision
from bifamily.randomness import RandomStreams, derive_seed
from bifamily.rundir import RunWriter
from bifamily.train_config import OptimConfig, TrainSettings


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
    stream: BatchStream  # the real images, in the order of the run's seed
    streams: RandomStreams  # the latents and noise, and each rank's private stream
    seed: int  # the recipe's
    step: int = 0
    rollbacks: int = 0  # in this run's history: each one re-seeds data order and latents

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

    def set_rollbacks(self, rollbacks: int) -> None:
        """Re-seed the data order and the latent and noise streams for the history after ``rollbacks``
        rollbacks (call right after the stream's position was loaded)."""
        self.rollbacks = rollbacks
        seed = self.seed if rollbacks == 0 else derive_seed(self.seed, "rollback", rollbacks) % 2**32
        self.streams.seed = seed
        self.stream.seed = seed


def _adam(params: list[dict[str, Any]], o: OptimConfig) -> torch.optim.Adam:
    # Fused Adam runs the whole update in one kernel per dtype/device (CPU and CUDA).
    return torch.optim.Adam(params, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)


def make_state(settings: TrainSettings, model: Model, dataset: Any, world: World = World()) -> TrainState:
    """The state of a fresh run of ``model`` on ``dataset``: step 0, optimizers without history."""
    o, t, seed = settings.optim, settings.train, settings.run.seed
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
        seed,
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
        RandomStreams(seed, world.rank, model.prior),
        seed,
    )


def save_state(state: TrainState, checkpoints: CheckpointManager, snapshot_metadata: dict[str, str]) -> Path:
    """Write ``state`` as the checkpoint of its step (rank 0); the folder."""
    extra = {
        "data": state.stream.state(),
        "step": state.step,
        "scalers": {name: scaler.state_dict() for name, scaler in state.scalers().items()},
        "guard": {"rollbacks": state.rollbacks},
    }
    metadata = {**snapshot_metadata, "step": str(state.step)}
    return checkpoints.save(state.step, state.snapshot_modules(), state.optimizers(), metadata, extra)


def load_state(state: TrainState, checkpoints: CheckpointManager, checkpoint: Path, writer: RunWriter | None) -> int:
    """Load a checkpoint folder into ``state`` (on every rank); returns the step it was taken at. Rank 0
    passes its ``writer``: the log lines of steps after the checkpoint are dropped.

    A damaged checkpoint is refused before anything changes, naming an earlier whole one if there is one.
    """
    try:
        step, extra = restore(checkpoint, state.snapshot_modules(), state.optimizers())
    except CheckpointError as error:
        previous = checkpoints.whole_before(checkpoint)
        if previous is None:
            raise
        hint = f"the checkpoint before it, {previous}, is whole: move {checkpoint} aside to resume from that one"
        raise CheckpointError(f"{error}\n{hint}") from None
    _check_extra(checkpoint, extra)
    for optimizer in state.optimizers().values():
        _match_parameter_layouts(optimizer)
    state.step = step
    state.stream.load_state(extra["data"])
    state.set_rollbacks(extra.get("guard", {}).get("rollbacks", 0))
    for name, scaler in state.scalers().items():
        saved = extra.get("scalers", {}).get(name)
        if saved and scaler.is_enabled():
            scaler.load_state_dict(saved)
    if writer is not None:
        writer.truncate_after(step)
    return step


def _check_extra(checkpoint: Path, extra: dict) -> None:
    """Refuse a resume file whose ``extra`` (written by :func:`save_state`) has another shape."""
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
