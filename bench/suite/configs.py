"""What the suite measures: the models (recipes plus overrides), the modes, and how many steps."""

from __future__ import annotations

import attrs

# A compute-equivalent stand-in for ImageNet: procedural images at the full-size model's resolutions.
_FULL_SIZE_DATA = 'data={kind = "procedural", resolution = 128, encoder_resolution = 256, channels = 3}'
# --quick swaps the 50-layer encoders for a 4-layer one: tracing them for torch.compile takes minutes.
_QUICK_ENCODER = 'encoder={kind = "dcgan", ch = 4}'


@attrs.frozen
class ModelSpec:
    """One benchmarked model: a shipped recipe with overrides (``--set`` syntax).

    ``overrides`` apply to every measurement; ``step_data`` replaces the data section for the
    training-step and evaluation measurements only (the data-pipeline measurement reads the recipe's
    own data set); ``quick`` shrinks the model for ``--quick`` (checks the suite, not the speed).
    """

    name: str
    recipe: str
    overrides: tuple[str, ...] = ()
    step_data: str | None = None
    quick: tuple[str, ...] = ()
    timed_steps: int = 10
    eval_images: int = 2048


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "quickstart",
        "recipes/quickstart.toml",
        quick=(
            "train.batch_size=8", "generator.ch=8", "encoder.ch=8", "discriminator.ch=8",
            "discriminator.z_width=32", "discriminator.joint_width=32",
        ),
    ),
    ModelSpec(
        "bigbigan_small",
        "recipes/bigbigan_small.toml",
        quick=(
            "train.batch_size=4", "generator.ch=4", "discriminator.ch=4", "discriminator.mlp_width=32", _QUICK_ENCODER,
        ),
        eval_images=1024,
    ),
    ModelSpec(
        "bigbigan_highres",
        "recipes/bigbigan_highres.toml",
        overrides=("train.batch_size=2",),
        step_data=_FULL_SIZE_DATA,
        quick=(
            "generator.ch=4", "discriminator.ch=4", "discriminator.mlp_width=32", _QUICK_ENCODER,
        ),
        timed_steps=5,
        eval_images=32,
    ),
    ModelSpec(
        "mnist32_matched",
        "recipes/bench/mnist32_matched.toml",
        quick=(
            "train.batch_size=4", "generator.ch=4", "discriminator.ch=4", "discriminator.mlp_width=16",
            "encoder.ch=4", "encoder.features=16",
        ),
    ),
)


@attrs.frozen
class Mode:
    """A precision / memory-layout / compile setting of the training step (the ``[train]`` keys)."""

    precision: str
    channels_last: bool = False
    compile: bool = False

    def overrides(self) -> tuple[str, ...]:
        return (
            f'train.precision="{self.precision}"',
            f"train.channels_last={str(self.channels_last).lower()}",
            f"train.compile={str(self.compile).lower()}",
        )


BASELINE = "fp32"
MODES: dict[str, Mode] = {
    BASELINE: Mode("fp32"),
    "bf16": Mode("bf16"),
    "compile": Mode("fp32", compile=True),
    "compile_channels_last": Mode("fp32", channels_last=True, compile=True),
    "fp32_channels_last": Mode("fp32", channels_last=True),
    "bf16_channels_last": Mode("bf16", channels_last=True),
}


@attrs.frozen
class Effort:
    """How long each measurement runs: the full suite, or ``--quick``."""

    quick: bool
    warmup_steps: int
    timed_steps: int | None  # None: each model's own ``timed_steps``
    pipeline_batches: int
    eval_images: int | None  # None: each model's own ``eval_images``
    compile_backend: str  # torch.compile backend; "eager" (tracing only) keeps --quick fast
    scaling_batches: tuple[int, ...]
    scaling_resolutions: tuple[int, ...]
    scaling_batch_at_resolution: int
    scaling_timed_steps: int
    jpeg_images: int
    revnet_arguments: tuple[str, ...]

    def steps(self, spec: ModelSpec) -> int:
        return spec.timed_steps if self.timed_steps is None else self.timed_steps

    def images(self, spec: ModelSpec) -> int:
        return spec.eval_images if self.eval_images is None else self.eval_images


FULL = Effort(
    quick=False,
    warmup_steps=3,
    timed_steps=None,
    pipeline_batches=30,
    eval_images=None,
    compile_backend="inductor",
    scaling_batches=(8, 16, 32, 64, 128),
    scaling_resolutions=(32, 64, 128),
    scaling_batch_at_resolution=16,
    scaling_timed_steps=3,
    jpeg_images=64,
    revnet_arguments=(),
)
QUICK = Effort(
    quick=True,
    warmup_steps=1,
    timed_steps=2,
    pipeline_batches=3,
    eval_images=16,
    compile_backend="eager",
    scaling_batches=(2, 4),
    scaling_resolutions=(32, 64, 128),
    scaling_batch_at_resolution=2,
    scaling_timed_steps=1,
    jpeg_images=8,
    revnet_arguments=("--batch", "2", "--resolution", "32", "--base-width", "4", "--steps", "1"),
)

# Step time against batch size and resolution: bigbigan_small with a latent size (120) that splits
# into the generator's hierarchical chunks at all three resolutions.
SCALING_MODEL = "bigbigan_small"
SCALING_OVERRIDES = ("prior.dim=120",)
SCALING_MODES = ("fp32", "bf16")
