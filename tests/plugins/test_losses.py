"""The adversarial objectives: BiGAN/ALI logistic loss, BigBiGAN per-term hinge (DESIGN.md §4)."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bifamily_losses
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.interfaces import Loss, Scores
from bifamily.testing.losses import (
    assert_close,
    check_duplication_invariance,
    check_gradient_directions,
    check_loss_outputs,
    check_permutation_invariance,
    check_reads_only_required_scores,
    check_real_fake_symmetry,
    scale_of,
    score_leaves,
    without,
)
from bifamily.testing.strategies import BATCH_SIZES, FLOAT_DTYPES, real_and_fake, scores
from bifamily_losses import BiganLoss, BiganLossConfig, BigbiganLoss, BigbiganLossConfig

CTX = BuildContext(resolution=32, channels=3, latent_dim=8)
FIELDS = Scores._fields
# 50 examples per property keep the file at a few seconds on 2 cores; raise locally to dig deeper.
PROPERTY = settings(max_examples=50, deadline=None)

# --- strategies (scores and real/fake batches come from bifamily.testing.strategies) ---------------

WEIGHTS = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.01, 10.0))


@st.composite
def bigbigan_losses(draw: st.DrawFn) -> BigbiganLoss:
    weights = draw(
        st.fixed_dictionaries({"x_unary": WEIGHTS, "z_unary": WEIGHTS, "joint": WEIGHTS}).filter(
            lambda w: any(value > 0 for value in w.values())
        )
    )
    return BigbiganLoss(**weights)


ANY_LOSS = st.one_of(st.just(BiganLoss()), bigbigan_losses())

# --- helpers (the score helpers come from bifamily.testing.losses) --------------------------------


def weight_of(loss: Loss, name: str) -> float:
    return loss.weights.get(name, 0.0) if isinstance(loss, BigbiganLoss) else float(name == "s_xz")


# --- registration, config, contract ---------------------------------------------------------------


def test_registers_both_losses() -> None:
    registered: dict[str, type] = {}
    bifamily_losses.bifamily_register_losses(register=registered.__setitem__)
    assert registered == {"bigan": BiganLossConfig, "bigbigan": BigbiganLossConfig}


@pytest.mark.parametrize("config_cls", [BiganLossConfig, BigbiganLossConfig])
def test_every_field_is_documented(config_cls: type) -> None:
    assert all(field.metadata.get("help") for field in attrs.fields(config_cls))


@pytest.mark.parametrize(
    ("config", "required"),
    [
        (BiganLossConfig(), ("s_xz",)),
        (BigbiganLossConfig(), ("s_x", "s_z", "s_xz")),
        (BigbiganLossConfig(x_unary=0, z_unary=0), ("s_xz",)),  # No Unaries
        (BigbiganLossConfig(z_unary=0), ("s_x", "s_xz")),  # x Unary Only
        (BigbiganLossConfig(x_unary=0), ("s_z", "s_xz")),  # z Unary Only
    ],
)
def test_required_scores_follow_the_weights(config, required: tuple[str, ...]) -> None:
    loss = config.build(CTX)
    assert isinstance(loss, Loss)
    assert loss.required_scores == required


def test_all_zero_weights_is_a_recipe_error_naming_the_keys() -> None:
    with pytest.raises(RecipeError) as error:
        BigbiganLossConfig(x_unary=0, z_unary=0, joint=0).build(CTX)
    assert "$.loss.x_unary" in str(error.value) and "$.loss.joint" in str(error.value)


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_weights_must_be_finite_and_non_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="finite number >= 0"):
        BigbiganLossConfig(z_unary=bad)


@pytest.mark.parametrize("loss", [BiganLoss(), BigbiganLoss()], ids=repr)
@pytest.mark.parametrize("side", ["real", "fake"])
@pytest.mark.parametrize("method", ["discriminator", "generator_encoder"])
def test_a_missing_required_score_names_the_score_and_the_loss(loss, side, method) -> None:
    full = Scores(*(torch.zeros(3) for _ in FIELDS))
    missing = without(full, "s_xz")
    real, fake = (missing, full) if side == "real" else (full, missing)
    with pytest.raises(ValueError, match=rf"'{loss.name}'.*s_xz.*{side}"):
        getattr(loss, method)(real, fake)


def test_a_term_with_weight_zero_may_have_no_score() -> None:
    loss = BigbiganLoss(x_unary=0, z_unary=0)
    only_joint = Scores(None, None, torch.tensor([0.5, 2.0]))
    loss_d, _ = loss.discriminator(only_joint, only_joint)
    loss_eg, _ = loss.generator_encoder(only_joint, only_joint)
    assert loss_d.item() == (0.25 + 0) + (1.5 + 3) / 2 and loss_eg.item() == 0.0


def test_stats_are_detached_scalars_with_the_score_means() -> None:
    real = score_leaves(
        Scores(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0]))
    )
    fake = score_leaves(Scores(torch.tensor([-1.0]), torch.tensor([4.0]), torch.tensor([-3.0])))
    loss_d, d_stats = BigbiganLoss().discriminator(real, fake)
    loss_eg, eg_stats = BigbiganLoss().generator_encoder(real, fake)
    assert set(d_stats) == {"loss_d"} | {f"{side}_{n}" for side in ("real", "fake") for n in FIELDS}
    assert set(eg_stats) == {"loss_eg"}
    for value in [*d_stats.values(), *eg_stats.values()]:
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
    assert d_stats["loss_d"] == loss_d.detach() and eg_stats["loss_eg"] == loss_eg.detach()
    assert d_stats["real_s_x"] == 2.0 and d_stats["real_s_z"] == 0.5 and d_stats["fake_s_z"] == 4.0
    _, bigan_stats = BiganLoss().discriminator(real, fake)
    assert set(bigan_stats) == {"loss_d", "real_s_xz", "fake_s_xz"}
    assert bigan_stats["real_s_xz"] == 2.0 and bigan_stats["fake_s_xz"] == -3.0


@pytest.mark.parametrize("loss", [BiganLoss(), BigbiganLoss()], ids=repr)
def test_low_precision_scores_are_reduced_in_float32(loss: Loss) -> None:
    s = Scores(*(torch.tensor([0.3, -2.0], dtype=torch.bfloat16) for _ in FIELDS))
    assert loss.discriminator(s, s)[0].dtype == torch.float32
    assert loss.generator_encoder(s, s)[0].dtype == torch.float32


# --- exact values ---------------------------------------------------------------------------------

EXACT_REAL = Scores(torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 1.0]), torch.tensor([0.0, 3.0]))
EXACT_FAKE = Scores(
    torch.tensor([-2.0, 0.0]), torch.tensor([1.0, -0.5]), torch.tensor([-1.0, 0.25])
)


@pytest.mark.parametrize(
    ("weights", "loss_d", "loss_eg"),
    [
        # Real hinges: s_x (0 + 0.5)/2, s_z (2 + 0)/2, s_xz (1 + 0)/2.
        # Fake hinges of -s: s_x (0 + 1)/2, s_z (2 + 0.5)/2, s_xz (0 + 1.25)/2.
        # L_EG: real means 1.25, 0, 1.5; fake means -1, 0.25, -0.375.
        ({}, 0.25 + 1 + 0.5 + 0.5 + 1.25 + 0.625, (1.25 + 1) + (0 - 0.25) + (1.5 + 0.375)),
        (
            {"x_unary": 0.5, "z_unary": 2.0},
            0.5 * 0.75 + 2 * 2.25 + 1.125,
            0.5 * 2.25 + 2 * -0.25 + 1.875,
        ),
        ({"x_unary": 0.0, "z_unary": 0.0}, 1.125, 1.875),
    ],
)
def test_bigbigan_hand_computed(weights: dict[str, float], loss_d: float, loss_eg: float) -> None:
    loss = BigbiganLoss(**weights)
    assert loss.discriminator(EXACT_REAL, EXACT_FAKE)[0].item() == loss_d
    assert loss.generator_encoder(EXACT_REAL, EXACT_FAKE)[0].item() == loss_eg


def test_bigan_hand_computed() -> None:
    log3 = math.log(3.0)
    real = Scores(None, None, torch.tensor([0.0, log3], dtype=torch.float64))
    fake = Scores(None, None, torch.tensor([0.0, -log3], dtype=torch.float64))
    # softplus(0) = log 2, softplus(-log 3) = log(4/3), softplus(log 3) = log 4.
    assert BiganLoss().discriminator(real, fake)[0].item() == pytest.approx(
        math.log(8 / 3), rel=1e-15
    )
    assert BiganLoss().generator_encoder(real, fake)[0].item() == pytest.approx(
        math.log(8), rel=1e-15
    )


@PROPERTY
@given(
    st.lists(st.floats(-15, 15), min_size=1, max_size=6),
    st.lists(st.floats(-15, 15), min_size=1, max_size=6),
)
def test_bigan_is_the_negated_log_likelihood_of_the_discriminator(real_values, fake_values) -> None:
    """Against V written with log and sigmoid (|s| <= 15 keeps 1 - sigmoid(s) accurate)."""
    s_real = torch.tensor(real_values, dtype=torch.float64)
    s_fake = torch.tensor(fake_values, dtype=torch.float64)
    real, fake = Scores(None, None, s_real), Scores(None, None, s_fake)
    value = torch.log(torch.sigmoid(s_real)).mean() + torch.log(1 - torch.sigmoid(s_fake)).mean()
    assert_close(BiganLoss().discriminator(real, fake)[0], -value, rtol=1e-8)
    swapped = (
        torch.log(torch.sigmoid(-s_real)).mean() + torch.log(1 - torch.sigmoid(-s_fake)).mean()
    )
    assert_close(BiganLoss().generator_encoder(real, fake)[0], -swapped, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bigan_at_huge_logits_is_finite_with_the_right_limit(dtype: torch.dtype) -> None:
    big = torch.tensor([1e4, 1e4], dtype=dtype)
    right = (Scores(None, None, big), Scores(None, None, -big))  # D is right and confident
    wrong = (Scores(None, None, -big), Scores(None, None, big))  # D is wrong and confident
    for real, fake, loss_d, loss_eg in [(*right, 0.0, 2e4), (*wrong, 2e4, 0.0)]:
        real, fake = score_leaves(real), score_leaves(fake)
        d, _ = BiganLoss().discriminator(real, fake)
        eg, _ = BiganLoss().generator_encoder(real, fake)
        assert d.item() == loss_d and eg.item() == loss_eg
        for grad in torch.autograd.grad(d + eg, [real.s_xz, fake.s_xz]):
            assert torch.isfinite(grad).all()
    # Where D is confidently wrong, the gradient is the full -1/N on real and +1/N on fake.
    real, fake = score_leaves(wrong[0]), score_leaves(wrong[1])
    d, _ = BiganLoss().discriminator(real, fake)
    grad_real, grad_fake = torch.autograd.grad(d, [real.s_xz, fake.s_xz])
    assert torch.equal(grad_real, torch.full_like(grad_real, -0.5))
    assert torch.equal(grad_fake, torch.full_like(grad_fake, 0.5))


# --- properties (DESIGN.md §4) --------------------------------------------------------------------


@PROPERTY
@given(ANY_LOSS, FLOAT_DTYPES.flatmap(real_and_fake))
def test_losses_and_gradients_are_finite_for_any_finite_scores(loss: Loss, pair) -> None:
    check_loss_outputs(loss, *pair)


@PROPERTY
@given(ANY_LOSS, real_and_fake())
def test_losses_read_only_their_required_scores(loss: Loss, pair) -> None:
    check_reads_only_required_scores(loss, *pair)


@PROPERTY
@given(bigbigan_losses(), real_and_fake())
def test_hinge_loss_is_non_negative_and_zero_iff_every_margin_is_met(
    loss: BigbiganLoss, pair
) -> None:
    real, fake = pair
    value = loss.discriminator(real, fake)[0].item()
    margins_met = all(
        (getattr(real, name) >= 1).all() and (getattr(fake, name) <= -1).all()
        for name in loss.required_scores
    )
    assert value >= 0
    assert (value == 0) == margins_met


@PROPERTY
@given(
    bigbigan_losses(),
    st.lists(st.floats(1, 1e4), min_size=3, max_size=3),
    st.lists(st.floats(-1e4, -1), min_size=3, max_size=3),
    st.sampled_from(FIELDS),
    st.booleans(),
    st.floats(-1e4, 1, exclude_max=True),
)
def test_breaking_one_margin_makes_the_hinge_loss_positive(
    loss: BigbiganLoss, met_real, met_fake, name: str, on_real: bool, violation: float
) -> None:
    """Targets the zero set directly: random scores rarely meet every margin."""
    real = Scores(*(torch.tensor([v, 2.0], dtype=torch.float64) for v in met_real))
    fake = Scores(*(torch.tensor([v], dtype=torch.float64) for v in met_fake))
    assert loss.discriminator(real, fake)[0].item() == 0
    if name not in loss.required_scores:
        return
    if on_real:
        real = real._replace(**{name: torch.tensor([violation, 2.0], dtype=torch.float64)})
    else:
        fake = fake._replace(**{name: torch.tensor([-violation], dtype=torch.float64)})
    assert loss.discriminator(real, fake)[0].item() > 0


@PROPERTY
@given(real_and_fake())
def test_bigan_logistic_loss_is_non_negative(pair) -> None:
    assert BiganLoss().discriminator(*pair)[0].item() >= 0


@PROPERTY
@given(real_and_fake())
def test_hinge_of_each_term_summed_bounds_the_hinge_of_the_sum(pair) -> None:
    real, fake = pair
    per_term = BigbiganLoss().discriminator(real, fake)[0]
    summed = lambda s: Scores(None, None, s.s_x + s.s_z + s.s_xz)  # noqa: E731
    of_sum = BigbiganLoss(x_unary=0, z_unary=0).discriminator(summed(real), summed(fake))[0]
    assert per_term >= of_sum - 1e-12 * scale_of(real, fake)


@PROPERTY
@given(ANY_LOSS, FLOAT_DTYPES.flatmap(real_and_fake), st.integers(0, 2**32 - 1))
def test_losses_are_invariant_to_permuting_the_batch(loss: Loss, pair, seed: int) -> None:
    check_permutation_invariance(loss, *pair, seed=seed)


@PROPERTY
@given(ANY_LOSS, FLOAT_DTYPES.flatmap(real_and_fake))
def test_losses_are_invariant_to_duplicating_the_batch(loss: Loss, pair) -> None:
    check_duplication_invariance(loss, *pair)


@PROPERTY
@given(bigbigan_losses(), BATCH_SIZES, BATCH_SIZES, st.data())
def test_generator_encoder_hinge_loss_is_linear_in_the_scores(loss, n_real, n_fake, data) -> None:
    real_a, real_b = data.draw(scores(n_real)), data.draw(scores(n_real))
    fake_a, fake_b = data.draw(scores(n_fake)), data.draw(scores(n_fake))
    a, b = data.draw(st.floats(-10, 10)), data.draw(st.floats(-10, 10))
    combine = lambda x, y: Scores(*(a * s + b * t for s, t in zip(x, y, strict=True)))  # noqa: E731
    combined = loss.generator_encoder(combine(real_a, real_b), combine(fake_a, fake_b))[0]
    expected = (
        a * loss.generator_encoder(real_a, fake_a)[0]
        + b * loss.generator_encoder(real_b, fake_b)[0]
    )
    assert_close(combined, expected, 100 * scale_of(real_a, real_b, fake_a, fake_b))


@PROPERTY
@given(bigbigan_losses(), real_and_fake())
def test_generator_encoder_gradient_is_exactly_plus_and_minus_weight_over_n(loss, pair) -> None:
    real, fake = score_leaves(pair[0]), score_leaves(pair[1])
    value = loss.generator_encoder(real, fake)[0]
    grads = torch.autograd.grad(value, [*real, *fake], allow_unused=True)
    for name, grad_real, grad_fake in zip(FIELDS, grads[:3], grads[3:], strict=True):
        weight = weight_of(loss, name)
        if weight == 0:
            assert grad_real is None and grad_fake is None
            continue
        assert torch.equal(grad_real, torch.full_like(grad_real, weight / len(grad_real)))
        assert torch.equal(grad_fake, torch.full_like(grad_fake, -weight / len(grad_fake)))


@PROPERTY
@given(bigbigan_losses(), real_and_fake())
def test_discriminator_hinge_gradient_is_minus_weight_over_n_inside_the_margin(loss, pair) -> None:
    real, fake = score_leaves(pair[0]), score_leaves(pair[1])
    value = loss.discriminator(real, fake)[0]
    for name in loss.required_scores:
        s_real, s_fake = getattr(real, name), getattr(fake, name)
        grad_real, grad_fake = torch.autograd.grad(value, [s_real, s_fake], retain_graph=True)
        weight = weight_of(loss, name)
        expected_real = torch.full_like(s_real, -weight / len(s_real)).where(s_real < 1, 0.0)
        expected_fake = torch.full_like(s_fake, weight / len(s_fake)).where(s_fake > -1, 0.0)
        assert torch.equal(grad_real, expected_real)
        assert torch.equal(grad_fake, expected_fake)


@PROPERTY
@given(ANY_LOSS, real_and_fake())
def test_swapping_real_and_fake_with_negated_scores_leaves_the_discriminator_loss_unchanged(
    loss: Loss, pair
) -> None:
    check_real_fake_symmetry(loss, *pair, rtol=0.0)  # exactly: h(-(-s)) is h(s)


@PROPERTY
@given(
    real_and_fake(),
    st.sampled_from(["x_unary", "z_unary"]),
    WEIGHTS,
    WEIGHTS.filter(lambda weight: weight > 0),
)
def test_disabling_a_unary_term_equals_removing_its_score(
    pair, key: str, other_unary: float, joint: float
) -> None:
    real, fake = pair
    name = {"x_unary": "s_x", "z_unary": "s_z"}[key]
    disabled = BigbiganLoss(
        **{"x_unary": other_unary, "z_unary": other_unary, key: 0.0}, joint=joint
    )
    removed_real, removed_fake = without(real, name), without(fake, name)
    for method in ("discriminator", "generator_encoder"):
        full_scores = getattr(disabled, method)(real, fake)[0]
        assert torch.equal(full_scores, getattr(disabled, method)(removed_real, removed_fake)[0])


@PROPERTY
@given(real_and_fake(), st.sampled_from(["s_x", "s_z"]), st.floats(0.01, 10))
def test_zeroing_a_unary_score_equals_disabling_it_up_to_the_hinge_at_zero(
    pair, name, weight
) -> None:
    """A zero score adds nothing to L_EG and the constant w (h(0) + h(-0)) = 2 w to L_D."""
    real, fake = pair
    key = {"s_x": "x_unary", "s_z": "z_unary"}[name]
    enabled, disabled = BigbiganLoss(**{key: weight}), BigbiganLoss(**{key: 0.0})
    zero = lambda s: s._replace(**{name: torch.zeros_like(getattr(s, name))})  # noqa: E731
    scale = scale_of(real, fake)
    assert_close(
        enabled.generator_encoder(zero(real), zero(fake))[0],
        disabled.generator_encoder(real, fake)[0],
        scale,
    )
    assert_close(
        enabled.discriminator(zero(real), zero(fake))[0],
        disabled.discriminator(real, fake)[0] + 2 * weight,
        scale,
    )


@PROPERTY
@given(ANY_LOSS, real_and_fake())
def test_discriminator_pushes_real_scores_up_and_fake_down_generator_encoder_the_reverse(
    loss: Loss, pair
) -> None:
    check_gradient_directions(loss, *pair)
    real, fake = score_leaves(pair[0]), score_leaves(pair[1])
    loss_d = loss.discriminator(real, fake)[0]
    loss_eg = loss.generator_encoder(real, fake)[0]
    for name in loss.required_scores:
        s_real, s_fake = getattr(real, name), getattr(fake, name)
        d_real, d_fake = torch.autograd.grad(loss_d, [s_real, s_fake], retain_graph=True)
        eg_real, eg_fake = torch.autograd.grad(loss_eg, [s_real, s_fake], retain_graph=True)
        # Strictly, wherever the loss is not saturated (check_gradient_directions: never the wrong way).
        if isinstance(loss, BiganLoss):
            moderate_real, moderate_fake = s_real.abs() < 30, s_fake.abs() < 30
            assert (d_real[moderate_real] < 0).all() and (d_fake[moderate_fake] > 0).all()
            assert (eg_real[moderate_real] > 0).all() and (eg_fake[moderate_fake] < 0).all()
        else:
            assert (d_real[s_real < 1] < 0).all() and (d_fake[s_fake > -1] > 0).all()
            assert (eg_real > 0).all() and (eg_fake < 0).all()


@pytest.mark.parametrize("loss", [BiganLoss(cycle=2.5), BigbiganLoss(cycle=2.5)])
def test_the_cycle_term_is_its_weight_times_the_mean_absolute_difference(loss: Loss) -> None:
    x = torch.tensor([[0.5, -1.0], [0.0, 1.0]])
    x_rec = torch.tensor([[0.0, -1.0], [1.0, 0.5]], dtype=torch.bfloat16)
    term, stats = loss.reconstruction(x, x_rec)
    assert loss.reconstructs
    assert term.dtype == torch.float32 and float(term) == 2.5 * (0.5 + 0.0 + 1.0 + 0.5) / 4
    assert float(stats["cycle_l1"]) == 0.5 and not stats["cycle_l1"].requires_grad


@pytest.mark.parametrize("config", [BiganLossConfig(), BigbiganLossConfig()])
def test_without_a_cycle_weight_a_loss_does_not_reconstruct(config) -> None:
    assert not config.build(CTX).reconstructs


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_the_cycle_weight_must_be_finite_and_non_negative(bad: float) -> None:
    for config_cls in (BiganLossConfig, BigbiganLossConfig):
        with pytest.raises(ValueError, match="finite number >= 0"):
            config_cls(cycle=bad)
