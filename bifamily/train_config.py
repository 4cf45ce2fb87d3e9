"""The settings of a training run: the [run], [train], [optim], [ema] and [guard] sections of a recipe,
and :class:`TrainSettings`, the object the trainer takes (these sections without the components)."""

from __future__ import annotations

from typing import Any

import attrs

from bifamily.config import (
    SAFE_NAME_RULE,
    InvalidValue,
    check,
    device_name,
    in_range,
    is_safe_name,
    non_negative,
    one_of,
    option,
    positive,
)


@attrs.frozen
class RunConfig:
    """[run]: what this run is and how often it reports."""

    name: str = option(
        "",
        help=f"Run name, part of the run directory's name; defaults to the recipe file's stem. {SAFE_NAME_RULE}.",
        validator=check(lambda v: v == "" or is_safe_name(v), f"must be one folder name of {SAFE_NAME_RULE}, got {{value}}"),
    )
    seed: int = option(
        0, help="Seed for weights, data order, latents and noise (0 to 2**32 - 1).", validator=in_range(0, 2**32 - 1)
    )
    steps: int = option(1000, help="Training iterations; one = `train.d_steps` D updates + 1 G/E update (or one simultaneous update of both).", validator=positive)
    device: str = option(
        "auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'.", validator=device_name
    )
    out_root: str = option("runs", help="Folder that holds run directories when --out is not given.")
    log_every: int = option(50, help="Write a stats.jsonl line every this many steps.", validator=positive)
    sample_every: int = option(500, help="Write sample and reconstruction grids every this many steps (and at the end).", validator=positive)
    checkpoint_every: int = option(500, help="Write a checkpoint every this many steps (and at the end).", validator=positive)
    keep_checkpoints: int = option(3, help="How many recent checkpoints to keep on disk.", validator=positive)
    tensorboard: bool = option(
        False,
        help="Also write losses, metrics and sample grids as TensorBoard event files to RUN_DIR/tensorboard/ "
        "(needs the tensorboard package: pip install tensorboard).",
    )


def _one_d_step_when_simultaneous(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value == "simultaneous" and instance.d_steps != 1:
        raise InvalidValue(
            attribute.name, f"'simultaneous' updates D once per step, from the G+E update's batch; set d_steps = 1 (got {instance.d_steps})"
        )


@attrs.frozen
class TrainConfig:
    """[train]: the shape of one training iteration."""

    batch_size: int = option(
        64,
        help="Global images per update, summed over all ranks (each D step and the G/E step draw a fresh batch). "
        "Must be a multiple of accumulation x the number of ranks.",
        validator=positive,
    )
    accumulation: int = option(
        1,
        help="Micro-steps per update (gradient accumulation): each rank computes batch_size / (accumulation x "
        "ranks) images at a time. Batch norm in G and E normalises over the batch_size / accumulation images "
        "of a micro-step, on any number of ranks.",
        validator=positive,
    )
    d_steps: int = option(2, help="Discriminator updates before each joint generator+encoder update.", validator=positive)
    updates: str = option(
        "alternating",
        help="'alternating': each D update and the G+E update draw their own batch, and G+E is updated against "
        "the D just updated. 'simultaneous': one batch and one forward pass of G, E and D give both D's and "
        "G+E's gradients, and both step together (one pass of G, E and D fewer per step; needs d_steps = 1).",
        validator=[one_of("alternating", "simultaneous"), _one_d_step_when_simultaneous],
    )
    precision: str = option(
        "fp32",
        help="'fp32'; 'bf16' autocast (CPU and CUDA); 'fp16' autocast with dynamic loss scaling (CUDA only); or "
        "'auto': bf16 where the device has bf16 in hardware (CUDA, or a CPU with AMX or AVX512-BF16), else fp32. "
        "Spectral norm's power iteration always runs in fp32.",
        validator=one_of("auto", "fp32", "bf16", "fp16"),
    )
    channels_last: bool = option(False, help="Keep images and conv weights in NHWC memory layout (faster convs on tensor cores and oneDNN).")
    compile: bool = option(False, help="torch.compile the G+E and D step modules (slow first steps, faster after).")
    keep_freed_memory: bool = option(
        True,
        help="CPU runs: have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel, "
        "so each step does not fault in fresh pages (process-wide; no effect on other C libraries or devices; "
        "see docs/performance.md).",
    )
    num_workers: int = option(0, help="Data-loader worker processes per rank (0 = load in the training process).", validator=non_negative)
    collective_timeout_s: int = option(
        900,
        help="Distributed runs: seconds a rank waits in a collective (all-reduce, barrier) before the job fails; "
        "covers rank 0 writing a checkpoint while the others wait.",
        validator=in_range(1, 10**8),
    )

    @property
    def batches_per_step(self) -> int:
        """Global batches one step draws: one per D update and one for G+E, or one when simultaneous."""
        return 1 if self.updates == "simultaneous" else self.d_steps + 1


@attrs.frozen
class OptimConfig:
    """[optim]: Adam as in BigGAN. One optimizer updates G and E together; D has its own."""

    g_lr: float = option(1e-4, help="Generator learning rate.", validator=positive)
    e_lr: float | None = option(None, help="Encoder learning rate; defaults to g_lr ('E up-LR' rows use 10x).")
    d_lr: float = option(4e-4, help="Discriminator learning rate.", validator=positive)
    beta1: float = option(0.0, help="Adam beta1.", validator=in_range(0.0, 1.0))
    beta2: float = option(0.999, help="Adam beta2.", validator=in_range(0.0, 1.0))
    eps: float = option(1e-8, help="Adam epsilon.", validator=positive)

    @property
    def encoder_lr(self) -> float:
        return self.g_lr if self.e_lr is None else self.e_lr


@attrs.frozen
class EmaConfig:
    """[ema]: exponential moving average of G and E weights, used for every evaluation."""

    decay: float = option(0.9999, help="EMA decay per G/E update.", validator=in_range(0.0, 1.0))
    warmup: bool = option(True, help="Ramp the decay as min(decay, (1+t)/(10+t)) so short runs average recent weights, not the initialisation.")
    start_step: int = option(0, help="Copy weights (no averaging) until this step.", validator=non_negative)


@attrs.frozen
class GuardConfig:
    """[guard]: what happens when a loss or gradient stops being finite (the run diverged).

    The check runs at every logging, grid and checkpoint step, before anything is written, so a
    diverged state is never checkpointed (docs/reliability.md)."""

    on_nonfinite: str = option(
        "stop",
        help="'stop': report the step and the module, write nothing more and exit with code 3. 'rollback': "
        "reload the latest checkpoint and continue with a fresh data order and fresh latents.",
        validator=one_of("stop", "rollback"),
    )
    max_rollbacks: int = option(
        3,
        help="With 'rollback': rollbacks allowed without a new checkpoint in between; one more divergence "
        "stops the run as 'stop' would.",
        validator=positive,
    )



@attrs.frozen
class TrainSettings:
    """What the trainer needs from a recipe: the loop's sections and the snapshot metadata (the resolved
    recipe, so that every checkpoint can rebuild its model)."""

    run: RunConfig
    train: TrainConfig
    optim: OptimConfig
    ema: EmaConfig
    guard: GuardConfig
    snapshot_metadata: dict[str, str]
