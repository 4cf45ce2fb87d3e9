"""Every built-in component passes the contract checks plugin authors run (bifamily.testing), at small
sizes; a new built-in fails the coverage test until it is added here."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import attrs
import pytest
import torch
from hypothesis import given, settings
from torch import nn

from bifamily.config import option
from bifamily.context import BuildContext
from bifamily.interfaces import (
    Encoder,
    EncoderBackbone,
    Generator,
    JointDiscriminator,
    LatentPrior,
    Loss,
    Posterior,
    PosteriorHead,
    Scores,
)
from bifamily.plugins import KINDS, REGISTERED_KINDS
from bifamily.testing import (
    check_discriminator,
    check_encoder,
    check_generator,
    check_loss,
    check_loss_on,
    check_plugin,
    check_prior,
    component_config,
    plugin_set,
)
from bifamily.testing.strategies import images, latents

CTX = BuildContext(resolution=32, channels=3, latent_dim=16)
HIGH_RES_E = BuildContext(resolution=32, channels=3, latent_dim=16, encoder_resolution=64)
GRAY_16 = BuildContext(resolution=16, channels=1, latent_dim=8)

# Small settings of each built-in (kind -> name -> recipe fields).
GENERATORS = {
    "dcgan": {"ch": 4, "max_ch": 16},
    "biggan": {"ch": 4, "shared_dim": 8, "attention": 16},
}
ENCODERS = {
    "dcgan": {"ch": 4, "max_ch": 16},
    "resnet_v2": {"base_width": 4, "mlp_width": 16, "mlp_layers": 2},
    "revnet": {"base_width": 4, "mlp_width": 16, "mlp_layers": 2},
}
POSTERIORS = {"deterministic": {}, "gaussian": {"min_scale": 1e-4}, "tanh_uniform": {}}
DISCRIMINATORS = {
    "dcgan": {"ch": 4, "max_ch": 16, "z_width": 8, "joint_width": 8, "dropout": 0.2},
    "bigbigan": {"ch": 4, "attention": 8, "mlp_width": 16, "mlp_blocks": 2},
}
PRIORS = {"gaussian": {"dim": 8}, "uniform": {"dim": 8}}
LOSSES = {"bigan": {}, "bigbigan": {}}
SMALL_DCGAN_G = component_config("generator", "dcgan", **GENERATORS["dcgan"]).build(CTX)
_backbone = component_config("encoder", "dcgan", **ENCODERS["dcgan"]).build(CTX)
SMALL_DCGAN_E = Encoder(_backbone, component_config("posterior", "gaussian").build(CTX, _backbone.feature_dim)).eval()
COVERED = {
    "generator": GENERATORS,
    "encoder": ENCODERS,
    "posterior": POSTERIORS,
    "discriminator": DISCRIMINATORS,
    "prior": PRIORS,
    "loss": LOSSES,
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The models are tiny: a second intra-op thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "data"])
def test_every_builtin_component_is_checked_here(kind: str) -> None:
    assert sorted(COVERED[kind]) == plugin_set().registry.names(kind)


@pytest.mark.parametrize("plugin", sorted(info.name for info in plugin_set().infos))
def test_builtin_plugins_pass_the_plugin_check(plugin: str) -> None:
    """Valid hooks; documented, frozen config classes that read back from their recipe form; and
    check_plugin reports what the module's hooks register when called directly."""
    module = plugin_set().manager.get_plugin(plugin)
    direct: dict[str, dict[str, type]] = {}
    for kind, hook in REGISTERED_KINDS.items():
        if hasattr(module, hook):
            getattr(module, hook)(register=direct.setdefault(kind, {}).__setitem__)
    assert check_plugin(module) == direct


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators(name: str) -> None:
    check_generator(component_config("generator", name, **GENERATORS[name]), CTX)


def test_dcgan_generator_grayscale_16() -> None:
    check_generator(component_config("generator", "dcgan", **GENERATORS["dcgan"]), GRAY_16)


@pytest.mark.parametrize("posterior", sorted(POSTERIORS))
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoders_with_every_posterior(name: str, posterior: str) -> None:
    backbone = component_config("encoder", name, **ENCODERS[name])
    head = component_config("posterior", posterior, **POSTERIORS[posterior])
    check_encoder(backbone, head, CTX)


@pytest.mark.parametrize(("name", "features_dim"), [("dcgan", 16 * 4 * 4), ("resnet_v2", 4 * 4 * 8)])
def test_encoder_features_at_a_higher_encoder_resolution(name: str, features_dim: int) -> None:
    """dcgan: the flattened 4x4 map of the last width (16); resnet_v2: the pooled 4 * base_width * 8."""
    backbone = component_config("encoder", name, **ENCODERS[name], **({"features": 12} if name == "dcgan" else {}))
    encoder = check_encoder(backbone, component_config("posterior", "gaussian"), HIGH_RES_E, features_dim=features_dim)
    assert encoder.resolution == 64


@pytest.mark.parametrize(("unary", "minibatch_std"), [(True, 0), (False, 0), (True, 2)])
def test_dcgan_discriminator(unary: bool, minibatch_std: int) -> None:
    config = component_config(
        "discriminator", "dcgan", **DISCRIMINATORS["dcgan"], unary=unary, minibatch_std=minibatch_std
    )
    check_discriminator(config, CTX, scores=("s_x", "s_z", "s_xz") if unary else ("s_xz",))


def test_bigbigan_discriminator() -> None:
    config = component_config("discriminator", "bigbigan", **DISCRIMINATORS["bigbigan"])
    check_discriminator(config, CTX, scores=("s_x", "s_z", "s_xz"))


@settings(max_examples=10, deadline=None)
@given(latents(4, CTX.latent_dim, limit=100.0))
def test_dcgan_generator_images_stay_in_range_for_any_latents(z: torch.Tensor) -> None:
    generator = SMALL_DCGAN_G.eval()
    with torch.no_grad():
        x = generator(z)
    assert torch.isfinite(x).all() and x.abs().max() <= 1


@settings(max_examples=10, deadline=None)
@given(images(4, CTX.channels, CTX.resolution))
def test_dcgan_encoder_posterior_is_finite_for_any_images(x: torch.Tensor) -> None:
    with torch.no_grad():
        posterior = SMALL_DCGAN_E(x)
    assert torch.isfinite(posterior.mean).all() and (posterior.scale > 0).all()


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_priors(name: str) -> None:
    check_prior(component_config("prior", name, **PRIORS[name]))


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("bigan", {}),
        ("bigbigan", {}),
        ("bigbigan", {"x_unary": 0.0, "z_unary": 0.0}),
        ("bigbigan", {"x_unary": 0.5, "z_unary": 0.0, "joint": 2.0}),
    ],
)
def test_losses(name: str, fields: dict[str, float]) -> None:
    check_loss(component_config("loss", name, **fields), CTX, max_examples=25)


# --- the checks catch broken components -----------------------------------------------------------


@attrs.frozen
class Makes:
    """Builds whatever ``make(ctx, *args)`` returns: wraps the deliberately broken components below."""

    make: Callable[..., Any] = option(help="Factory called by build.")

    def build(self, ctx: BuildContext, *args: Any) -> Any:
        return self.make(ctx, *args)


class LinearGenerator(Generator):
    def __init__(self, ctx: BuildContext):
        super().__init__()
        self.latent_dim, self.resolution, self.channels = ctx.latent_dim, ctx.resolution, ctx.channels
        self.linear = nn.Linear(ctx.latent_dim, ctx.channels * ctx.resolution**2)

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z).unflatten(1, (self.channels, self.resolution, self.resolution))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pixels(z))


class UnboundedGenerator(LinearGenerator):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 3 * self.pixels(z)


class DetachingGenerator(LinearGenerator):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pixels(z.detach()))


class HalfSizeGenerator(LinearGenerator):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(z)[..., ::2, ::2]


class BatchMixingGenerator(LinearGenerator):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pixels(z - z.mean(dim=0)))


class TrainingOnlyParameterGenerator(LinearGenerator):
    def __init__(self, ctx: BuildContext):
        super().__init__(ctx)
        self.noise_scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pixels(z * (1 + self.noise_scale) if self.training else z))


def wrong_resolution(ctx: BuildContext) -> LinearGenerator:
    return LinearGenerator(attrs.evolve(ctx, resolution=16))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (UnboundedGenerator, r"output in training mode spans .* outside \[-1, 1\]"),
        (DetachingGenerator, "no gradient reaches the latents in training mode"),
        (HalfSizeGenerator, r"shape \(3, 3, 16, 16\), expected \(3, 3, 32, 32\)"),
        (BatchMixingGenerator, "evaluation mode, the image of a sample changes with the rest of its batch"),
        (TrainingOnlyParameterGenerator, r"parameters \['noise_scale'\] take part in training mode"),
        (wrong_resolution, "declares resolution = 16, but it was built with ctx.resolution = 32"),
        (lambda ctx: nn.Linear(2, 2), "must return a bifamily.interfaces.Generator, got Linear"),
    ],
)
def test_check_generator_names_what_broke(make: Callable[..., Any], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_generator(Makes(make), CTX)


def test_check_generator_passes_a_correct_generator() -> None:
    assert isinstance(check_generator(Makes(LinearGenerator), CTX), LinearGenerator)


class LinearBackbone(EncoderBackbone):
    def __init__(self, ctx: BuildContext):
        super().__init__()
        self.resolution, self.channels, self.feature_dim = ctx.encoder_input_resolution, ctx.channels, 8
        self.linear = nn.Linear(ctx.channels * self.resolution**2, self.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class DetachingBackbone(LinearBackbone):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.detach())


class NarrowFeaturesBackbone(LinearBackbone):
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[:, :5]


class NegativeScaleHead(PosteriorHead):
    def __init__(self, ctx: BuildContext, feature_dim: int):
        super().__init__()
        self.latent_dim = ctx.latent_dim
        self.linear = nn.Linear(feature_dim, ctx.latent_dim)

    def forward(self, h: torch.Tensor) -> Posterior:
        mean = self.linear(h)
        return Posterior(mean, scale=-torch.ones_like(mean))


class TensorHead(NegativeScaleHead):
    def forward(self, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.linear(h)


GAUSSIAN_HEAD = component_config("posterior", "gaussian")


@pytest.mark.parametrize(
    ("backbone", "head", "features_dim", "message"),
    [
        (DetachingBackbone, GAUSSIAN_HEAD, None, "no gradient reaches the input images from posterior samples"),
        (NarrowFeaturesBackbone, GAUSSIAN_HEAD, 7, r"features\(\) has shape \(3, 5\), expected \(3, 7\)"),
        (LinearBackbone, Makes(NegativeScaleHead), None, "posterior scale must be > 0 everywhere"),
        (LinearBackbone, Makes(TensorHead), None, "must return a bifamily.interfaces.Posterior, got Tensor"),
    ],
)
def test_check_encoder_names_what_broke(backbone: type, head: Any, features_dim: int | None, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_encoder(Makes(backbone), head, CTX, features_dim=features_dim)


def test_check_encoder_passes_a_correct_encoder_and_reads_the_encoder_resolution() -> None:
    encoder = check_encoder(Makes(LinearBackbone), GAUSSIAN_HEAD, HIGH_RES_E)
    assert encoder.resolution == 64 and encoder.latent_dim == 16


class GlobalRandomPrior(LatentPrior):
    def __init__(self, dim: int):
        self.dim = dim

    def sample(self, n: int, *, generator: torch.Generator | None = None, device: Any = "cpu") -> torch.Tensor:
        return torch.randn(n, self.dim, device=device)


class SeededPrior(GlobalRandomPrior):
    def sample(self, n: int, *, generator: torch.Generator | None = None, device: Any = "cpu") -> torch.Tensor:
        return torch.randn(n, self.dim, generator=generator).to(device)


class ColumnLogProbPrior(SeededPrior):
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z**2).sum(dim=1, keepdim=True)


@attrs.frozen
class PriorConfig:
    """A prior config whose build returns ``make(dim)``."""

    make: Callable[[int], Any] = option(help="Prior factory.")
    dim: int = option(4, help="Latent dimension.")

    def build(self, ctx: BuildContext) -> Any:
        return self.make(self.dim)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (GlobalRandomPrior, "must depend only on g: the same seed gave different latents"),
        (ColumnLogProbPrior, r"log_prob\(z\) has shape \(256, 1\), expected \(256,\)"),
        (lambda dim: SeededPrior(dim + 1), "declares dim = 5, but it was built with dim = 4"),
    ],
)
def test_check_prior_names_what_broke(make: Callable[[int], Any], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_prior(PriorConfig(make))


def test_check_prior_needs_a_dim_field_and_passes_a_correct_prior() -> None:
    with pytest.raises(AssertionError, match="must have an int field `dim`"):
        check_prior(Makes(lambda ctx: SeededPrior(4)))
    assert check_prior(PriorConfig(SeededPrior)).dim == 4


class LinearDiscriminator(JointDiscriminator):
    def __init__(self, ctx: BuildContext):
        super().__init__()
        self.latent_dim, self.resolution, self.channels = ctx.latent_dim, ctx.resolution, ctx.channels
        self.image = nn.Linear(ctx.channels * ctx.resolution**2, 1)
        self.latent = nn.Linear(ctx.latent_dim, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> Scores:
        s_x, s_z = self.image(x.flatten(1)).squeeze(1), self.latent(z).squeeze(1)
        return Scores(s_x, s_z, s_x * s_z)


class LeakyUnaryDiscriminator(LinearDiscriminator):
    def forward(self, x: torch.Tensor, z: torch.Tensor) -> Scores:
        scores = super().forward(x, z)
        return scores._replace(s_x=scores.s_x + z.sum(dim=1))


class ColumnDiscriminator(LinearDiscriminator):
    def forward(self, x: torch.Tensor, z: torch.Tensor) -> Scores:
        return Scores(None, None, super().forward(x, z).s_xz.unsqueeze(1))


class BatchMixingDiscriminator(LinearDiscriminator):
    def forward(self, x: torch.Tensor, z: torch.Tensor) -> Scores:
        scores = super().forward(x, z)
        return scores._replace(s_x=scores.s_x + x.flatten(1).std(dim=0).mean())


class DeclaredBatchMixingDiscriminator(BatchMixingDiscriminator):
    has_batch_statistics = True


class HiddenBatchNormDiscriminator(LinearDiscriminator):
    def __init__(self, ctx: BuildContext):
        super().__init__(ctx)
        self.norm = nn.BatchNorm1d(1)


@pytest.mark.parametrize(
    ("make", "scores", "message"),
    [
        (LeakyUnaryDiscriminator, None, "the unary score s_x depends on z"),
        (ColumnDiscriminator, None, r"score s_xz in training mode has shape \(3, 1\), expected \(3,\)"),
        (HiddenBatchNormDiscriminator, None, "has_batch_statistics = False but 'norm' is a batch norm layer"),
        (BatchMixingDiscriminator, None, "evaluation mode, score s_x of a sample changes with the rest of its batch"),
        (LinearDiscriminator, ("s_xz",), r"returned scores \['s_x', 's_xz', 's_z'\], expected exactly \['s_xz'\]"),
    ],
)
def test_check_discriminator_names_what_broke(make: type, scores: tuple[str, ...] | None, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_discriminator(Makes(make), CTX, scores=scores)


def test_a_discriminator_that_declares_batch_statistics_may_mix_samples() -> None:
    check_discriminator(Makes(DeclaredBatchMixingDiscriminator), CTX)


class SummedHingeLoss(Loss):
    required_scores = ("s_xz",)

    def discriminator(self, real: Scores, fake: Scores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.relu(1 - real.s_xz).sum() + torch.relu(1 + fake.s_xz).sum(), {}

    def generator_encoder(self, real: Scores, fake: Scores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return real.s_xz.mean() - fake.s_xz.mean(), {}


class ReversedLoss(SummedHingeLoss):
    def discriminator(self, real: Scores, fake: Scores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return real.s_xz.mean() - fake.s_xz.mean(), {}


class SecretlyUnaryLoss(SummedHingeLoss):
    """Declares only s_xz but also puts a hinge on s_x."""

    def discriminator(self, real: Scores, fake: Scores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        names = ("s_xz", "s_x") if real.s_x is not None else ("s_xz",)
        hinges = [torch.relu(1 - getattr(real, n)).mean() + torch.relu(1 + getattr(fake, n)).mean() for n in names]
        return sum(hinges), {}


class ExponentialLoss(SummedHingeLoss):
    def discriminator(self, real: Scores, fake: Scores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.exp(-real.s_xz).mean() + torch.exp(fake.s_xz).mean(), {}


REAL = Scores(*(torch.tensor(v, dtype=torch.float64) for v in ([2.0, -0.5, 1e4], [0.0, 1.0, -3.0], [0.5, 1e4, -1e4])))
FAKE = Scores(*(torch.tensor(v, dtype=torch.float64) for v in ([-1.0, 3.0], [0.25, -1e4], [-1e4, 0.75])))


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (SummedHingeLoss, "L_D .* changes when the batch is duplicated"),
        (ReversedLoss, "L_D pushes real s_xz scores <= 0 further down or fake ones >= 0 further up"),
        (SecretlyUnaryLoss, r"reads s_x, which is not in required_scores \('s_xz',\)"),
        (ExponentialLoss, "L_D .* is inf for finite scores"),
    ],
)
def test_loss_checks_name_what_broke(loss: type, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_loss_on(loss(), REAL, FAKE)


def test_check_loss_finds_a_broken_loss_with_hypothesis() -> None:
    with pytest.raises(AssertionError, match="L_D pushes real s_xz scores <= 0 further down or fake ones >= 0 further up"):
        check_loss(Makes(lambda ctx: ReversedLoss()), CTX, max_examples=10)


def plugin_module(source: str) -> ModuleType:
    module = ModuleType("thirdparty_contract_check")
    exec(source, module.__dict__)
    return module


PLUGIN_HEADER = textwrap.dedent("""
    import attrs
    from bifamily.config import option
    from bifamily.hookspecs import hookimpl

    @attrs.frozen
    class Config:
        \"\"\"A generator.\"\"\"

        width: int = option(8, help="Width.")

        def build(self, ctx):
            raise NotImplementedError
""")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "@hookimpl\ndef bifamily_register_generator(register):\n    register('x', Config)\n",
            "unknown hook 'bifamily_register_generator'",
        ),
        ("def bifamily_register_generators(register):\n    register('x', Config)\n", "registers no component"),
        ("@hookimpl\ndef bifamily_register_generators(register):\n    register('dcgan', Config)\n", "generator 'dcgan' is registered twice"),
        (
            "@attrs.frozen\nclass Bare:\n    '''Doc.'''\n    width: int = 8\n    def build(self, ctx): ...\n"
            "@hookimpl\ndef bifamily_register_generators(register):\n    register('x', Bare)\n",
            "field 'width' has no help text",
        ),
        (
            "@attrs.define\nclass Mutable:\n    '''Doc.'''\n    width: int = option(8, help='W.')\n    def build(self, ctx): ...\n"
            "@hookimpl\ndef bifamily_register_generators(register):\n    register('x', Mutable)\n",
            "must be frozen",
        ),
        ("@hookimpl\ndef bifamily_register_generators(register):\n    raise RuntimeError('boom')\n", "failed to load: .*boom"),
    ],
)
def test_check_plugin_names_what_broke(source: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_plugin(plugin_module(PLUGIN_HEADER + source))


def test_check_plugin_returns_what_a_correct_plugin_registers() -> None:
    module = plugin_module(PLUGIN_HEADER + "@hookimpl\ndef bifamily_register_generators(register):\n    register('x', Config)\n")
    assert check_plugin(module) == {"generator": {"x": module.Config}}
