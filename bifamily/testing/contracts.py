"""Contract checks for components and plugins, to call from a plugin's own pytest tests.

Each ``check_*`` function builds the component from its config and a :class:`BuildContext` exactly as
``bifamily run`` does, exercises it on a small batch, and raises ``AssertionError`` naming the first
contract it breaks (a shape, a range, a gradient that does not arrive...). It returns the built object,
which the checks have run in training and in evaluation mode.

The interfaces are in :mod:`bifamily.interfaces`; the hooks in :mod:`bifamily.hookspecs`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import attrs
import torch
from torch import nn

from bifamily.config import structure, unstructure
from bifamily.context import BuildContext
from bifamily.errors import BifamilyError
from bifamily.interfaces import (
    Encoder,
    EncoderBackbone,
    Generator,
    JointDiscriminator,
    LatentPrior,
    Posterior,
    PosteriorHead,
    Scores,
)
from bifamily.plugins import REGISTERED_KINDS
from bifamily.testing.building import SMALL_CONTEXT, build, plugin_set

BATCH_SIZE = 3
# Eval-mode outputs of one sample alone and within a batch may differ by this much (kernels for
# different batch sizes round differently).
BATCH_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def _fail(subject: str, message: str) -> None:
    raise AssertionError(f"{subject}: {message}")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _uniform_images(n: int, channels: int, resolution: int, ctx: BuildContext, seed: int = 0) -> torch.Tensor:
    unit = torch.rand((n, channels, resolution, resolution), generator=_seeded(seed))
    return (unit * 2 - 1).to(ctx.device)


def _gaussian(shape: tuple[int, ...], ctx: BuildContext, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=_seeded(seed)).to(ctx.device)


@contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    was_training = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was_training)


def _require_instance(subject: str, obj: Any, cls: type, built_by: Any) -> None:
    if not isinstance(obj, cls):
        expected = f"{cls.__module__}.{cls.__name__}"
        _fail(subject, f"{type(built_by).__name__}.build must return a {expected}, got {type(obj).__name__}")


def _require_declared(subject: str, module: Any, expected: dict[str, tuple[int, str]]) -> None:
    for attribute, (value, source) in expected.items():
        declared = getattr(module, attribute, None)
        if declared != value:
            _fail(subject, f"declares {attribute} = {declared!r}, but it was built with {source} = {value}")


def _require_finite(subject: str, what: str, tensor: torch.Tensor) -> None:
    if not tensor.is_floating_point():
        _fail(subject, f"{what} must be a floating-point tensor, got {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        _fail(subject, f"{what} has non-finite entries")


def _require_shape(subject: str, what: str, tensor: Any, shape: tuple[int, ...], meaning: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        _fail(subject, f"{what} must be a tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != shape:
        _fail(subject, f"{what} has shape {tuple(tensor.shape)}, expected {shape} = {meaning}")


def _require_gradient(subject: str, what: str, grad: torch.Tensor | None) -> None:
    if grad is None:
        _fail(subject, f"no gradient reaches {what}")
    if not torch.isfinite(grad).all():
        _fail(subject, f"the gradient reaching {what} has non-finite entries")
    if not grad.abs().sum() > 0:
        _fail(subject, f"the gradient reaching {what} is zero everywhere")


def _without_gradient(value: torch.Tensor, module: nn.Module) -> set[str]:
    """Names of the trainable parameters of ``module`` that ``value`` does not depend on."""
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if not named:
        return set()
    grads = torch.autograd.grad(value, [p for _, p in named], retain_graph=True, allow_unused=True)
    return {name for (name, _), grad in zip(named, grads) if grad is None}


def _require_same_parameters_in_both_modes(subject: str, train_unused: set[str], eval_unused: set[str]) -> None:
    """The trainer finds the parameters a module leaves without gradient by one eval-mode pass (for
    DistributedDataParallel); a module whose training mode uses other parameters would hang DDP."""
    if train_unused != eval_unused:
        differ = sorted(train_unused ^ eval_unused)
        _fail(subject, f"parameters {differ} take part in training mode or in evaluation mode but not in both")


def _require_batch_independent(subject: str, what: str, whole: torch.Tensor, alone: torch.Tensor) -> None:
    if not torch.allclose(whole[:1], alone, **BATCH_TOLERANCE):
        _fail(subject, f"in evaluation mode, {what} of a sample changes with the rest of its batch")


# --- generator ------------------------------------------------------------------------------------


def check_generator(config: Any, ctx: BuildContext = SMALL_CONTEXT, *, batch_size: int = BATCH_SIZE) -> Generator:
    """``config.build(ctx)`` is a :class:`Generator` declaring ``ctx``'s latent dim, resolution and
    channels that maps (N, latent_dim) latents to finite (N, channels, resolution, resolution) images
    in [-1, 1] (also for latents far outside the prior, and in both modes), passes gradients to the
    latents, uses the same parameters in both modes and, in evaluation mode, draws each image
    independently of the rest of the batch."""
    generator = build(config, ctx)
    subject = f"generator {type(generator).__name__}"
    _require_instance(subject, generator, Generator, config)
    _require_declared(
        subject,
        generator,
        {
            "latent_dim": (ctx.latent_dim, "ctx.latent_dim"),
            "resolution": (ctx.resolution, "ctx.resolution"),
            "channels": (ctx.channels, "ctx.channels"),
        },
    )
    shape = (batch_size, ctx.channels, ctx.resolution, ctx.resolution)
    meaning = "(N, ctx.channels, ctx.resolution, ctx.resolution)"
    z = _gaussian((batch_size, ctx.latent_dim), ctx).requires_grad_()
    inputs = {"": z, " from zero latents": torch.zeros_like(z), " from latents 10x the prior's": 10 * z}
    unused = {}
    for training in (True, False):
        mode = "training" if training else "evaluation"
        with _mode(generator, training):
            for what, latents in inputs.items():
                x = generator(latents)
                _require_shape(subject, f"output{what} in {mode} mode", x, shape, meaning)
                _require_finite(subject, f"output{what} in {mode} mode", x)
                low, high = x.min().item(), x.max().item()
                if low < -1 or high > 1:
                    _fail(subject, f"output{what} in {mode} mode spans [{low:.4g}, {high:.4g}], outside [-1, 1]")
            x = generator(z)
            weighted = (x * _gaussian(shape, ctx, seed=1)).sum()
            unused[training] = _without_gradient(weighted, generator)
            grad = torch.autograd.grad(weighted, z, allow_unused=True)[0]
            _require_gradient(subject, f"the latents in {mode} mode", grad)
            if not training:
                with torch.no_grad():
                    _require_batch_independent(subject, "the image", x, generator(z[:1]))
    _require_same_parameters_in_both_modes(subject, unused[True], unused[False])
    return generator


# --- encoder --------------------------------------------------------------------------------------


def _check_posterior(subject: str, posterior: Any, n: int, latent_dim: int) -> None:
    if not isinstance(posterior, Posterior):
        _fail(subject, f"the posterior head must return a bifamily.interfaces.Posterior, got {type(posterior).__name__}")
    shape, meaning = (n, latent_dim), "(N, ctx.latent_dim)"
    _require_shape(subject, "posterior mean", posterior.mean, shape, meaning)
    _require_finite(subject, "posterior mean", posterior.mean)
    if posterior.scale is not None:
        _require_shape(subject, "posterior scale", posterior.scale, shape, meaning)
        _require_finite(subject, "posterior scale", posterior.scale)
        if not (posterior.scale > 0).all():
            _fail(subject, "posterior scale must be > 0 everywhere (None for a deterministic posterior)")
    sample = posterior.sample(_seeded(0))
    _require_shape(subject, "posterior sample", sample, shape, meaning)
    _require_finite(subject, "posterior sample", sample)
    if not torch.equal(sample, posterior.sample(_seeded(0))):
        _fail(subject, "two posterior samples with the same seeded torch.Generator differ")
    _require_shape(subject, "posterior point", posterior.point, shape, meaning)
    if posterior.squash and sample.abs().max() > 1:
        _fail(subject, "a squashed (tanh) posterior sampled outside [-1, 1]")


def check_encoder(
    backbone_config: Any,
    posterior_config: Any,
    ctx: BuildContext = SMALL_CONTEXT,
    *,
    features_dim: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> Encoder:
    """The encoder a recipe builds from ``[encoder]`` and ``[posterior]``: ``backbone_config.build(ctx)``
    is an :class:`EncoderBackbone` reading ``ctx.encoder_input_resolution`` images with ``ctx.channels``
    channels into (N, feature_dim) features; ``posterior_config.build(ctx, feature_dim)`` a
    :class:`PosteriorHead` whose :class:`Posterior` over (N, ctx.latent_dim) is finite, has a positive
    scale (or none), samples reproducibly from a seeded generator, and whose samples are differentiable
    with respect to the input images. ``features(x)`` (the representation evaluation uses) is
    finite, (N, features_dim) -- ``features_dim`` defaults to ``feature_dim`` when the backbone does not
    override ``features`` -- and independent of the rest of the batch in evaluation mode.

    Pass any backbone with a new posterior head, or a new backbone with any head, e.g.
    ``component_config("posterior", "gaussian")``.
    """
    backbone = build(backbone_config, ctx)
    subject = f"encoder backbone {type(backbone).__name__}"
    _require_instance(subject, backbone, EncoderBackbone, backbone_config)
    resolution = ctx.encoder_input_resolution
    _require_declared(
        subject,
        backbone,
        {"resolution": (resolution, "ctx.encoder_input_resolution"), "channels": (ctx.channels, "ctx.channels")},
    )
    feature_dim = getattr(backbone, "feature_dim", None)
    if not (isinstance(feature_dim, int) and feature_dim > 0):
        _fail(subject, f"must declare feature_dim, a positive int (the width the posterior head reads), got {feature_dim!r}")
    head = build(posterior_config, ctx, feature_dim)
    _require_instance(f"posterior head {type(head).__name__}", head, PosteriorHead, posterior_config)
    _require_declared(f"posterior head {type(head).__name__}", head, {"latent_dim": (ctx.latent_dim, "ctx.latent_dim")})
    encoder = Encoder(backbone, head)
    subject = f"encoder {type(backbone).__name__} + {type(head).__name__}"
    if features_dim is None and type(backbone).features is EncoderBackbone.features:
        features_dim = feature_dim
    x = _uniform_images(batch_size, ctx.channels, resolution, ctx).requires_grad_()
    unused = {}
    for training in (True, False):
        mode = "training" if training else "evaluation"
        with _mode(encoder, training):
            h = backbone(x)
            _require_shape(subject, f"backbone output in {mode} mode", h, (batch_size, feature_dim), "(N, feature_dim)")
            _require_finite(subject, f"backbone output in {mode} mode", h)
            posterior = head(h)
            _check_posterior(subject, posterior, batch_size, ctx.latent_dim)
            z = posterior.sample(_seeded(0))
            weighted = (z * _gaussian(z.shape, ctx, seed=1)).sum()
            unused[training] = _without_gradient(weighted, encoder)
            grad = torch.autograd.grad(weighted, x, allow_unused=True)[0]
            _require_gradient(subject, f"the input images from posterior samples in {mode} mode", grad)
            for value in (-1.0, 1.0):
                constant = torch.full_like(x, value)
                _check_posterior(f"{subject} (images all {value:+g})", encoder(constant), batch_size, ctx.latent_dim)
    with _mode(encoder, False), torch.no_grad():
        features = encoder.features(x)
        if not isinstance(features, torch.Tensor) or features.dim() != 2:
            got = getattr(features, "shape", type(features).__name__)
            _fail(subject, f"features() must return a (N, F) tensor, got {got}")
        if features_dim is not None:
            _require_shape(subject, "features()", features, (batch_size, features_dim), "(N, features_dim)")
        _require_finite(subject, "features()", features)
        _require_batch_independent(subject, "features()", features, encoder.features(x[:1]))
    _require_same_parameters_in_both_modes(subject, unused[True], unused[False])
    return encoder


# --- prior ----------------------------------------------------------------------------------------


def check_prior(config: Any, *, n: int = 256) -> LatentPrior:
    """``config`` has the int field ``dim`` and builds a :class:`LatentPrior` of that dim whose
    ``sample(n)`` is a finite floating (n, dim) tensor on the requested device; the same seeded
    generator gives the same latents whatever the global RNG state, other seeds other latents.
    If the prior has ``log_prob(z)``, it is finite and of shape (n,) on its own samples."""
    fields = attrs.fields_dict(type(config)) if attrs.has(type(config)) else {}
    if "dim" not in fields or not isinstance(config.dim, int):
        message = "must have an int field `dim` (the latent dimension every component is built with)"
        _fail(f"prior config {type(config).__name__}", message)
    ctx = attrs.evolve(SMALL_CONTEXT, latent_dim=config.dim)
    prior = build(config, ctx)
    subject = f"prior {type(prior).__name__}"
    _require_instance(subject, prior, LatentPrior, config)
    _require_declared(subject, prior, {"dim": (config.dim, "dim")})
    shape, meaning = (n, config.dim), "(n, dim)"
    z = prior.sample(n)
    _require_shape(subject, "sample(n)", z, shape, meaning)
    _require_finite(subject, "sample(n)", z)
    on_device = prior.sample(n, device="cpu")
    if on_device.device.type != "cpu":
        _fail(subject, f"sample(n, device='cpu') returned a tensor on {on_device.device}")
    torch.manual_seed(1)
    first = prior.sample(n, generator=_seeded(0))
    torch.manual_seed(2)
    second = prior.sample(n, generator=_seeded(0))
    _require_shape(subject, "sample(n, generator=...)", first, shape, meaning)
    if not torch.equal(first, second):
        _fail(subject, "sample(n, generator=g) must depend only on g: the same seed gave different latents")
    if torch.equal(first, prior.sample(n, generator=_seeded(1))):
        _fail(subject, "sample(n, generator=g) ignores g: two seeds gave the same latents")
    if hasattr(prior, "log_prob"):
        log_prob = prior.log_prob(first)
        _require_shape(subject, "log_prob(z)", log_prob, (n,), "(n,)")
        _require_finite(subject, "log_prob of its own samples", log_prob)
    return prior


# --- discriminator --------------------------------------------------------------------------------

# Which inputs each score must depend on (True) or must not depend on (False).
_SCORE_INPUTS = {"s_x": {"x": True, "z": False}, "s_z": {"x": False, "z": True}, "s_xz": {"x": True, "z": True}}


def check_discriminator(
    config: Any,
    ctx: BuildContext = SMALL_CONTEXT,
    *,
    scores: tuple[str, ...] | None = None,
    batch_size: int = BATCH_SIZE,
) -> JointDiscriminator:
    """``config.build(ctx)`` is a :class:`JointDiscriminator` declaring ``ctx``'s latent dim, resolution
    and channels whose ``forward(x, z)`` returns :class:`Scores` with at least one score (exactly
    ``scores`` when given), each finite of shape (N,). Gradients of s_xz reach x and z, of s_x only x,
    of s_z only z. ``has_batch_statistics = False`` requires that no batch norm layer mixes samples
    and that, in evaluation mode, every score of a pair is independent of the rest of its batch (a
    discriminator that declares batch statistics, e.g. a minibatch standard deviation, may mix
    samples in either mode: the trainer scores real and fake pairs in separate calls)."""
    discriminator = build(config, ctx)
    subject = f"discriminator {type(discriminator).__name__}"
    _require_instance(subject, discriminator, JointDiscriminator, config)
    _require_declared(
        subject,
        discriminator,
        {
            "latent_dim": (ctx.latent_dim, "ctx.latent_dim"),
            "resolution": (ctx.resolution, "ctx.resolution"),
            "channels": (ctx.channels, "ctx.channels"),
        },
    )
    if not discriminator.has_batch_statistics:
        for name, module in discriminator.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                layer = f"{name!r} is a batch norm layer ({type(module).__name__})"
                _fail(subject, f"declares has_batch_statistics = False but {layer}")
    x = _uniform_images(batch_size, ctx.channels, ctx.resolution, ctx).requires_grad_()
    z = _gaussian((batch_size, ctx.latent_dim), ctx).requires_grad_()
    unused = {}
    for training in (True, False):
        mode = "training" if training else "evaluation"
        with _mode(discriminator, training):
            result = discriminator(x, z)
            if not isinstance(result, Scores):
                _fail(subject, f"forward(x, z) must return bifamily.interfaces.Scores, got {type(result).__name__}")
            present = result.present()
            if not present or (scores is not None and set(present) != set(scores)):
                expected = "at least one score" if scores is None else f"exactly {sorted(scores)}"
                _fail(subject, f"returned scores {sorted(present)}, expected {expected}")
            for name, value in present.items():
                _require_shape(subject, f"score {name} in {mode} mode", value, (batch_size,), "(N,)")
                _require_finite(subject, f"score {name} in {mode} mode", value)
                grads = dict(zip("xz", torch.autograd.grad(value.sum(), [x, z], retain_graph=True, allow_unused=True)))
                for input_name, depends in _SCORE_INPUTS[name].items():
                    if depends:
                        _require_gradient(subject, f"{input_name} from {name} in {mode} mode", grads[input_name])
                    elif grads[input_name] is not None and grads[input_name].abs().sum() > 0:
                        _fail(subject, f"the unary score {name} depends on {input_name}")
            unused[training] = _without_gradient(sum(v.sum() for v in present.values()), discriminator)
            if not training and not discriminator.has_batch_statistics:
                with torch.no_grad():
                    alone = discriminator(x[:1], z[:1])
                for name, value in present.items():
                    _require_batch_independent(subject, f"score {name}", value, getattr(alone, name))
    _require_same_parameters_in_both_modes(subject, unused[True], unused[False])
    return discriminator


# --- config classes and plugins -------------------------------------------------------------------


def check_config_class(config_cls: type) -> None:
    """A frozen attrs class with a docstring, a ``build`` method and a help text on every field
    (:func:`bifamily.config.option`); with defaults for every field, the default config survives the
    round trip through the recipe converter."""
    subject = f"config class {config_cls.__module__}.{config_cls.__qualname__}"
    if not attrs.has(config_cls):
        _fail(subject, "must be an attrs class (@attrs.frozen)")
    if not callable(getattr(config_cls, "build", None)):
        _fail(subject, "must have a build method")
    if not (config_cls.__doc__ or "").strip():
        _fail(subject, "needs a docstring: the recipe reference shows it")
    fields = attrs.fields(config_cls)
    for field in fields:
        if not field.metadata.get("help"):
            _fail(subject, f"field {field.name!r} has no help text: declare it with bifamily.config.option(..., help=...)")
    if any(field.default is attrs.NOTHING for field in fields):
        return
    default = config_cls()
    if fields:
        try:
            setattr(default, fields[0].name, getattr(default, fields[0].name))
        except attrs.exceptions.FrozenInstanceError:
            pass
        else:
            _fail(subject, "must be frozen (@attrs.frozen): a recipe's configs never change once read")
    try:
        again = structure(unstructure(default), config_cls, "$")
    except BifamilyError as exc:
        raise AssertionError(f"{subject}: the default config does not read back from its recipe form: {exc}") from exc
    if again != default:
        _fail(subject, f"the default config reads back from its recipe form as {again!r}, not {default!r}")


def check_plugin(module: ModuleType) -> dict[str, dict[str, type]]:
    """Load ``module`` through bifamily's plugin machinery beside the built-ins and check it: every hook
    it implements is a bifamily hook, it loads without error, registers at least one component, no name
    clashes with a built-in, and every config class passes :func:`check_config_class`.

    Returns what it registered: ``{kind: {name: config_cls}}``, kinds as in recipe sections
    (``"generator"``, ``"prior"``, ...).
    """
    subject = f"plugin {module.__name__}"
    plugins = plugin_set(module)
    for info in plugins.failed:  # a hook name bifamily does not define fails the plugin too
        _fail(subject, f"plugin {info.name!r} failed to load: {info.error}")
    name = plugins.manager.get_name(module)
    registered = {
        kind: {entry.name: entry.config_cls for entry in plugins.registry.entries(kind) if entry.plugin == name}
        for kind in REGISTERED_KINDS
    }
    registered = {kind: entries for kind, entries in registered.items() if entries}
    if not registered:
        _fail(subject, "registers no component (is a hook missing its @bifamily.hookspecs.hookimpl?)")
    for entries in registered.values():
        for config_cls in entries.values():
            check_config_class(config_cls)
    return registered
