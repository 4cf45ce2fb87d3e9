"""The BigBiGAN loss invariants (DESIGN.md §4) on scores from the real F/H/J discriminator.

The loss tests in test_losses.py draw the scores themselves; here they come from BigBiGAN's joint
discriminator (small widths) applied to drawn images and latents, so the invariants are checked on
the scores training actually produces, and through D's parameters and inputs where the chain rule
makes them say something about D too. D runs in eval mode: its spectral-norm power iteration would
otherwise move between two calls that must agree (D has no batch norm, so nothing else changes).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from bifamily.context import BuildContext
from bifamily.interfaces import Scores
from bifamily.testing import check_loss_on
from bifamily.testing.strategies import images, latents
from bifamily_biggan import BigBiGANDiscriminatorConfig
from bifamily_biggan.discriminator import BigBiGANDiscriminator
from bifamily_losses import BigbiganLoss

RESOLUTION, LATENT_DIM = 32, 8
CTX = BuildContext(resolution=RESOLUTION, channels=3, latent_dim=LATENT_DIM)
TINY_D = BigBiGANDiscriminatorConfig(ch=4, attention=16, mlp_width=16, mlp_blocks=2)
HEADS = {"s_x": "image_head", "s_z": "latent_head", "s_xz": "joint_head"}
PROPERTY = settings(max_examples=30, deadline=None)
# Table 1's loss rows: Base, x Unary Only, z Unary Only, No Unaries; and uneven weights.
LOSSES = st.sampled_from(
    [
        BigbiganLoss(),
        BigbiganLoss(z_unary=0),
        BigbiganLoss(x_unary=0),
        BigbiganLoss(x_unary=0, z_unary=0),
        BigbiganLoss(x_unary=0.5, z_unary=2.0, joint=3.0),
    ]
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def discriminator() -> BigBiGANDiscriminator:
    torch.manual_seed(0)
    return TINY_D.build(CTX).double().eval()


@st.composite
def pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 1-4 (image, latent) pairs in float64."""
    n = draw(st.integers(1, 4))
    x = draw(images(n, 3, RESOLUTION, dtype=torch.float64))
    z = draw(latents(n, LATENT_DIM, dtype=torch.float64))
    return x, z


def score(discriminator: BigBiGANDiscriminator, pair: tuple[torch.Tensor, torch.Tensor]) -> Scores:
    with torch.no_grad():
        return discriminator(*pair)


def random_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, RESOLUTION, RESOLUTION, generator=generator, dtype=torch.float64) * 2 - 1
    return x, torch.randn(n, LATENT_DIM, generator=generator, dtype=torch.float64)


def hinge(s: torch.Tensor) -> torch.Tensor:
    return torch.relu(1 - s)


def trained(module: torch.nn.Module) -> bool:
    """Whether the last backward gave any parameter of ``module`` a non-zero gradient."""
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@PROPERTY
@given(loss=LOSSES, real=pairs(), fake=pairs(), seed=st.integers(0, 2**32 - 1))
def test_every_loss_contract_holds_on_discriminator_scores(discriminator, loss, real, fake, seed):
    """Finite values and gradients, permutation and duplication invariance, real/fake symmetry,
    gradient signs, reading only the required scores (bifamily.testing.check_loss_on)."""
    real_scores, fake_scores = score(discriminator, real), score(discriminator, fake)
    assert all(s.dtype == torch.float32 for s in (*real_scores, *fake_scores))
    check_loss_on(loss, real_scores, fake_scores, seed=seed)


@PROPERTY
@given(loss=LOSSES, real=pairs(), fake=pairs())
def test_hinge_loss_is_the_weighted_per_term_hinge_and_bounds_the_hinge_of_the_sum(
    discriminator, loss, real, fake
):
    real_scores, fake_scores = score(discriminator, real), score(discriminator, fake)
    value = loss.discriminator(real_scores, fake_scores)[0]
    expected = sum(
        w * (hinge(getattr(real_scores, name)).mean() + hinge(-getattr(fake_scores, name)).mean())
        for name, w in loss.weights.items()
    )
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    assert value >= 0
    weighted_sum = lambda s: sum(w * getattr(s, k) for k, w in loss.weights.items())  # noqa: E731
    of_sum = hinge(weighted_sum(real_scores)).mean() + hinge(-weighted_sum(fake_scores)).mean()
    # max(0, 1 - sum w_k s_k) <= sum w_k max(0, 1 - s_k) holds when sum w_k >= 1, as in every row
    assert value >= of_sum - 1e-5 * (1 + of_sum.abs())


@PROPERTY
@given(loss=LOSSES, real=pairs(), fake=pairs())
def test_generator_encoder_gradient_reaches_the_inputs_as_weighted_score_means(
    discriminator, loss, real, fake
):
    """L_EG has gradient +w/N on real and -w/N on fake scores, so its gradient with respect to the
    pairs fed to D is the weighted mean of the score gradients: the signal E and G receive."""
    inputs = [t.clone().requires_grad_() for t in (*real, *fake)]
    x_real, z_real, x_fake, z_fake = inputs
    real_scores, fake_scores = discriminator(x_real, z_real), discriminator(x_fake, z_fake)
    value = loss.generator_encoder(real_scores, fake_scores)[0]
    actual = torch.autograd.grad(value, inputs, retain_graph=True)
    direct = sum(
        w * (getattr(real_scores, k).sum() / len(x_real) - getattr(fake_scores, k).sum() / len(x_fake))
        for k, w in loss.weights.items()
    )
    for got, want in zip(actual, torch.autograd.grad(direct, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "weights",
    [{}, {"z_unary": 0}, {"x_unary": 0}, {"x_unary": 0, "z_unary": 0}],
    ids=["base", "x unary only", "z unary only", "no unaries"],
)
def test_a_disabled_term_trains_nothing_of_its_head_and_the_rest_trains(discriminator, weights):
    loss = BigbiganLoss(**weights)
    real, fake = random_pairs(3, seed=1), random_pairs(2, seed=2)
    for method in ("discriminator", "generator_encoder"):
        discriminator.zero_grad(set_to_none=True)
        value = getattr(loss, method)(discriminator(*real), discriminator(*fake))[0]
        value.backward()
        for name, head in HEADS.items():
            assert trained(getattr(discriminator, head)) == (name in loss.required_scores), head
        # F, H and J are trained whatever the unaries: the joint term reads all three.
        for path in ("image_path", "latent_path", "joint_path"):
            assert trained(getattr(discriminator, path)), (method, path)
    discriminator.zero_grad(set_to_none=True)


MAX_MOVE = 1e-2


def _descend(
    tensors: list[torch.Tensor], grads: list[torch.Tensor | None], decrease: float
) -> list[torch.Tensor]:
    """``tensors`` moved against ``grads`` by the step of first-order loss decrease ``decrease``.

    Only where that step is small (a move of at most ``MAX_MOVE`` in L2 norm): with a near-zero
    gradient (nearly every hinge margin met) the step would leave the region where the loss is linear,
    and the first-order prediction says nothing there.
    """
    norm_squared = sum(g.square().sum() for g in grads if g is not None)
    assume(decrease <= MAX_MOVE * norm_squared.sqrt())
    step = decrease / norm_squared
    return [t if g is None else t - step * g for t, g in zip(tensors, grads)]


@PROPERTY
@given(loss=LOSSES, real=pairs(), fake=pairs())
def test_small_steps_lower_each_loss_through_the_real_network(discriminator, loss, real, fake):
    """Gradient directions, end to end: a small step of D's parameters against grad L_D, or of the
    pairs fed to D against grad L_EG (what G and E do), lowers that loss. The step is sized for a
    first-order decrease of 0.1% of the loss, well above the float32 rounding of the scores."""
    names, params = zip(*discriminator.named_parameters())
    value = loss.discriminator(discriminator(*real), discriminator(*fake))[0]
    grads = torch.autograd.grad(value, params, allow_unused=True)
    if value > 0:  # at zero every margin is met and there is nothing to descend
        moved = dict(zip(names, _descend(list(params), list(grads), 1e-3 * value.item())))
        with torch.no_grad():
            call = lambda pair: functional_call(discriminator, moved, pair)  # noqa: E731
            assert loss.discriminator(call(real), call(fake))[0] < value

    inputs = [t.clone().requires_grad_() for t in (*real, *fake)]
    value = loss.generator_encoder(discriminator(*inputs[:2]), discriminator(*inputs[2:]))[0]
    grads = torch.autograd.grad(value, inputs)
    moved = _descend(inputs, list(grads), 1e-3 * (1 + value.abs().item()))
    with torch.no_grad():
        assert loss.generator_encoder(discriminator(*moved[:2]), discriminator(*moved[2:]))[0] < value


@PROPERTY
@given(loss=LOSSES, real=pairs(), fake=pairs())
def test_scoring_real_and_fake_in_one_batch_gives_the_same_losses(discriminator, loss, real, fake):
    """Training may score real and fake pairs in one concatenated batch (D has no batch norm)."""
    n = len(real[0])
    together = score(discriminator, (torch.cat([real[0], fake[0]]), torch.cat([real[1], fake[1]])))
    joint_real, joint_fake = together.split(n)
    apart_real, apart_fake = score(discriminator, real), score(discriminator, fake)
    for method in ("discriminator", "generator_encoder"):
        got = getattr(loss, method)(joint_real, joint_fake)[0]
        want = getattr(loss, method)(apart_real, apart_fake)[0]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_under_bfloat16_autocast_the_losses_are_float32_and_finite():
    model = TINY_D.build(CTX)  # float32 weights, as training keeps them
    real, fake = (tuple(t.float() for t in random_pairs(n, seed=n)) for n in (2, 3))
    loss = BigbiganLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real_scores, fake_scores = model(*real), model(*fake)
        for method in (loss.discriminator, loss.generator_encoder):
            value = method(real_scores, fake_scores)[0]
            assert value.dtype == torch.float32 and torch.isfinite(value)
