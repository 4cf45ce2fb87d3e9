"""Build every component of a recipe and check that they agree with each other.

Components are built from their own configs with a :class:`BuildContext`; the trainer receives the
built objects, never the recipe. Every disagreement (latent dims, resolutions, channels, scores the
loss needs) is reported at once as a recipe error naming the keys on both sides.

:func:`build_on_meta` builds on the ``meta`` device: tensors with shapes and dtypes but no memory and
no values, so a model of any size is built and checked in well under a second (the pre-flight of
every command, :mod:`bifamily.preflight`).
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Iterator

import attrs
import torch
from torch import nn
from torch.nn.utils.parametrizations import _SpectralNorm as SpectralNorm

from bifamily.context import BuildContext
from bifamily.errors import BifamilyError, RecipeError
from bifamily.interfaces import Encoder, Generator, JointDiscriminator, LatentPrior, Loss, Scores
from bifamily.recipe import Recipe


@attrs.define
class Model:
    """The built components of a run."""

    context: BuildContext
    prior: LatentPrior
    generator: Generator
    encoder: Encoder
    discriminator: JointDiscriminator
    loss: Loss

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "encoder": self.encoder, "discriminator": self.discriminator}

    def parameter_counts(self) -> dict[str, int]:
        counts = {name: count_parameters(module) for name, module in self.modules().items()}
        counts["encoder.backbone"] = count_parameters(self.encoder.backbone)
        counts["encoder.head"] = count_parameters(self.encoder.head)
        return counts


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_context(recipe: Recipe, device: torch.device | str = "cpu", **overrides: Any) -> BuildContext:
    data = recipe.components["data"]
    return BuildContext(
        resolution=data.resolution,
        channels=data.channels,
        latent_dim=recipe.components["prior"].dim,
        encoder_resolution=getattr(data, "encoder_resolution", None),
        device=torch.device(device),
        **overrides,
    )


def _build(recipe: Recipe, kind: str, *args: Any) -> Any:
    config = recipe.components[kind]
    try:
        return config.build(*args)
    except BifamilyError:
        raise
    except Exception as exc:  # a plugin's own failure: name the component, keep it one line
        name = recipe.kinds[kind]
        raise RecipeError([f"$.{kind}: building {kind} {name!r} failed: {type(exc).__name__}: {exc}"]) from exc


META = torch.device("meta")


def build_model(recipe: Recipe, ctx: BuildContext) -> Model:
    """Build the model components and check that they agree (:func:`model_mismatches`)."""
    model = build_components(recipe, ctx)
    problems = model_mismatches(model)
    if problems:
        raise RecipeError(problems, source=recipe.source)
    return model


def build_on_meta(recipe: Recipe, ctx: BuildContext) -> Model:
    """:func:`build_model` on the meta device: every check, with no memory allocated and nothing
    initialised (a component that builds on the CPU by default builds on meta too)."""
    with torch.device(META), _shapes_only():
        return build_model(recipe, attrs.evolve(ctx, device=META))


_INITIALISERS = [name for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")]


@contextlib.contextmanager
def _shapes_only() -> Iterator[None]:
    """Skip the work that only computes values, which meta tensors do not have: torch.nn.init's
    initialisers, and spectral norm's power iterations and division by sigma (it keeps the weight's
    shape). On meta tensors these run as Python decompositions: half a minute for a full-size BigBiGAN."""
    replacements = {(nn.init, name): _unchanged_tensor for name in _INITIALISERS}
    replacements[(SpectralNorm, "_power_method")] = _no_power_iteration
    replacements[(SpectralNorm, "forward")] = _unnormalised_weight
    originals = {(owner, name): getattr(owner, name) for owner, name in replacements}
    for (owner, name), replacement in replacements.items():
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)


def _unchanged_tensor(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


def _no_power_iteration(self: nn.Module, *args: Any) -> None:
    return None


def _unnormalised_weight(self: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    return weight


def build_components(recipe: Recipe, ctx: BuildContext) -> Model:
    """Build the model components with the run seed, so the same recipe always gives the same weights.

    Each component checks its own config against ``ctx``; whether the components agree with each
    other is :func:`model_mismatches`'s question."""
    torch.manual_seed(recipe.run.seed)
    problems: list[str] = []
    built: dict[str, Any] = {}
    for kind in ("prior", "generator", "encoder", "discriminator", "loss"):
        try:
            built[kind] = _build(recipe, kind, ctx)
        except RecipeError as exc:
            problems.extend(exc.problems)
    if "encoder" in built:
        try:
            head = _build(recipe, "posterior", ctx, built["encoder"].feature_dim)
            built["encoder"] = Encoder(built["encoder"], head)
        except RecipeError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RecipeError(problems, source=recipe.source)
    return Model(context=ctx, **built)


def model_mismatches(model: Model) -> list[str]:
    """What the modules declare against the context, then (if that agrees) a batch through them."""
    return declared_mismatches(model) or dry_run_mismatches(model)


def declared_mismatches(model: Model) -> list[str]:
    """Compare what each module declares with the context it was built from."""
    ctx = model.context
    expected = {
        "latent_dim": (ctx.latent_dim, "$.prior.dim"),
        "resolution": (ctx.resolution, "$.data.resolution"),
        "channels": (ctx.channels, "$.data.channels"),
    }
    encoder_expected = {
        "latent_dim": (ctx.latent_dim, "$.prior.dim"),
        "resolution": (ctx.encoder_input_resolution, "$.data.encoder_resolution"),
    }
    problems = []
    if model.prior.dim != ctx.latent_dim:
        problems.append(f"$.prior: samples {model.prior.dim}-d latents but $.prior.dim is {ctx.latent_dim}")
    checks = [
        ("generator", model.generator, expected),
        ("discriminator", model.discriminator, expected),
        ("encoder", model.encoder, encoder_expected),
    ]
    for kind, module, wanted in checks:
        for attribute, (value, key) in wanted.items():
            declared = getattr(module, attribute, None)
            if declared is not None and declared != value:
                problems.append(f"$.{kind}: built for {attribute} {declared} but {key} is {value}")
    return problems


@torch.no_grad()
def dry_run_mismatches(model: Model) -> list[str]:
    """Push a batch of two through every module (eval mode, so no state changes) and check shapes."""
    ctx = model.context
    n = 2
    modules = model.modules()
    was_training = {name: module.training for name, module in modules.items()}
    for module in modules.values():
        module.eval()
    problems: list[str] = []
    running = "$.prior"  # the component whose failure is reported
    try:
        z = model.prior.sample(n, device=_placed(model.generator, ctx.device))
        running = "$.generator"
        x = model.generator(z)
        want = (n, ctx.channels, ctx.resolution, ctx.resolution)
        if tuple(x.shape) != want:
            problems.append(f"$.generator: produced images of shape {tuple(x.shape)}, expected {want} from $.data")
            return problems
        side = ctx.encoder_input_resolution
        x_e = torch.zeros(n, ctx.channels, side, side, device=_placed(model.encoder, ctx.device))
        running = "$.encoder"
        h = model.encoder.backbone(x_e)
        running = "$.posterior"
        z_hat = model.encoder.head(h).sample()
        if tuple(z_hat.shape) != (n, ctx.latent_dim):
            problems.append(f"$.posterior: produced latents of shape {tuple(z_hat.shape)}, expected {(n, ctx.latent_dim)} ($.prior.dim)")
            return problems
        running = "$.discriminator"
        d_device = _placed(model.discriminator, ctx.device)
        scores = model.discriminator(x.to(d_device), z.to(d_device))
        problems.extend(_score_problems(scores, n, model.loss))
    except Exception as exc:  # report, never crash: the recipe is what is wrong
        problems.append(f"{running}: fails on a batch of {n}: {type(exc).__name__}: {exc}")
    finally:
        for name, module in modules.items():
            module.train(was_training[name])
    return problems


def _placed(module: nn.Module, default: torch.device) -> torch.device:
    """Where ``module``'s tensors are: a component may build on the CPU and be moved later."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return default if tensor is None else tensor.device


def _score_problems(scores: Any, n: int, loss: Loss) -> list[str]:
    if not isinstance(scores, Scores):
        return [f"$.discriminator: must return bifamily.interfaces.Scores, returned {type(scores).__name__}"]
    problems = []
    for name, value in scores.present().items():
        if tuple(value.shape) != (n,):
            problems.append(f"$.discriminator: score {name} has shape {tuple(value.shape)}, expected ({n},)")
    present = scores.present()
    for name in getattr(loss, "required_scores", ()):
        if name not in present:
            problems.append(
                f"$.loss: needs score {name} but $.discriminator does not produce it "
                "(enable its unary heads, or set the loss weight of that term to 0)"
            )
    return problems
