"""Contract checks for adversarial objectives (:class:`bifamily.interfaces.Loss`).

Scores follow one convention: higher means "more like a real pair". Every loss must be finite with
finite gradients for any finite scores, depend on the batches only through their distribution
(invariant to permuting or duplicating them), treat real and fake symmetrically (swapping them and
negating every score leaves L_D unchanged), never push a score further to the wrong side of 0 (L_D: a
real score <= 0 down or a fake score >= 0 up; L_EG the reverse), and read only the scores it declares
in ``required_scores``. On the right side of 0 a loss may pull a score back toward a target, as a
least-squares loss does.

Each ``check_*`` function tests one invariant on given scores; :func:`check_loss` runs them all on
scores drawn by hypothesis.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from bifamily.context import BuildContext
from bifamily.interfaces import Loss, Scores
from bifamily.testing.building import SMALL_CONTEXT, build
from bifamily.testing.strategies import FLOAT_DTYPES, SCORE_NAMES, real_and_fake

# Relative rounding allowed on a sum of scores, in units of the dtype's machine epsilon: 1e-12 in
# float64, 5e-4 in float32.
ROUNDING_EPSILONS = 4500

LossMethod = Callable[[Scores, Scores], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def score_leaves(scores: Scores) -> Scores:
    """Copies of the scores that autograd can differentiate a loss with respect to."""
    return Scores(*(None if t is None else t.detach().clone().requires_grad_() for t in scores))


def mapped(scores: Scores, fn: Callable[[torch.Tensor], torch.Tensor]) -> Scores:
    """``fn`` applied to every score that is present."""
    return Scores(*(None if t is None else fn(t) for t in scores))


def without(scores: Scores, name: str) -> Scores:
    """The scores with ``name`` set to None."""
    return scores._replace(**{name: None})


def scale_of(*all_scores: Scores) -> float:
    """Magnitude of the scores, for tolerances on sums whose rounding grows with it."""
    return 1.0 + max(t.abs().max().item() for s in all_scores for t in s if t is not None)


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, scale: float = 1.0, rtol: float | None = None, what: str = ""
) -> None:
    """Scalars equal up to rounding: ``rtol`` relative and ``rtol * scale`` absolute, where ``scale``
    is the magnitude of the scores they were computed from. ``rtol`` defaults to what the dtype of
    ``actual`` allows (:data:`ROUNDING_EPSILONS`); 0 asks for exact equality."""
    if rtol is None:
        rtol = ROUNDING_EPSILONS * torch.finfo(actual.dtype).eps
    a, e = actual.item(), expected.item()
    if not math.isclose(a, e, rel_tol=rtol, abs_tol=rtol * scale):
        prefix = f"{what}: " if what else ""
        raise AssertionError(f"{prefix}{a!r} != {e!r} (relative tolerance {rtol:g}, scale {scale:g})")


def _name(loss: Loss) -> str:
    return f"loss {type(loss).__name__}"


def _methods(loss: Loss) -> dict[str, LossMethod]:
    return {"L_D (discriminator)": loss.discriminator, "L_EG (generator_encoder)": loss.generator_encoder}


def required_scores(loss: Loss) -> tuple[str, ...]:
    """The loss's ``required_scores``, checked to be a non-empty tuple of :class:`Scores` field names."""
    names = getattr(loss, "required_scores", None)
    if not isinstance(names, tuple) or not names or not set(names) <= set(SCORE_NAMES):
        raise AssertionError(
            f"{_name(loss)}: required_scores must be a non-empty tuple of names from {SCORE_NAMES}, "
            f"got {names!r} (the build step checks the discriminator against it)"
        )
    return names


def check_loss_outputs(loss: Loss, real: Scores, fake: Scores) -> None:
    """Both methods return a finite 0-dim loss and a dict of detached 0-dim statistics, and the
    gradients with respect to every score are finite."""
    real, fake = score_leaves(real), score_leaves(fake)
    inputs = [t for t in (*real, *fake) if t is not None]
    for what, method in _methods(loss).items():
        result = method(real, fake)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise AssertionError(f"{_name(loss)}: {what} must return (loss, stats), got {type(result).__name__}")
        value, stats = result
        if not (isinstance(value, torch.Tensor) and value.dim() == 0):
            raise AssertionError(f"{_name(loss)}: {what} must be a 0-dim tensor, got {value!r}")
        if not torch.isfinite(value):
            raise AssertionError(f"{_name(loss)}: {what} is {value.item()} for finite scores")
        for key, stat in stats.items():
            if not (isinstance(key, str) and isinstance(stat, torch.Tensor) and stat.dim() == 0):
                raise AssertionError(f"{_name(loss)}: {what} statistic {key!r} must be a 0-dim tensor, got {stat!r}")
            if stat.requires_grad:
                raise AssertionError(f"{_name(loss)}: {what} statistic {key!r} must be detached")
        for grad in torch.autograd.grad(value, inputs, allow_unused=True):
            if grad is not None and not torch.isfinite(grad).all():
                raise AssertionError(f"{_name(loss)}: the gradient of {what} has non-finite entries for finite scores")


def check_permutation_invariance(loss: Loss, real: Scores, fake: Scores, seed: int = 0) -> None:
    """Shuffling the real and the fake batch leaves both losses unchanged (up to rounding)."""
    generator = torch.Generator().manual_seed(seed)
    order_real = torch.randperm(_batch_size(real), generator=generator)
    order_fake = torch.randperm(_batch_size(fake), generator=generator)
    shuffled_real, shuffled_fake = mapped(real, lambda t: t[order_real]), mapped(fake, lambda t: t[order_fake])
    scale = scale_of(real, fake)
    for what, method in _methods(loss).items():
        expected = method(real, fake)[0]
        actual = method(shuffled_real, shuffled_fake)[0]
        assert_close(actual, expected, scale, what=f"{_name(loss)}: {what} changes when the batch is permuted")


def check_duplication_invariance(loss: Loss, real: Scores, fake: Scores) -> None:
    """Repeating both batches twice leaves both losses unchanged: they are batch means, not sums."""
    twice = lambda t: torch.cat([t, t])  # noqa: E731
    scale = scale_of(real, fake)
    for what, method in _methods(loss).items():
        expected = method(real, fake)[0]
        actual = method(mapped(real, twice), mapped(fake, twice))[0]
        assert_close(actual, expected, scale, what=f"{_name(loss)}: {what} changes when the batch is duplicated")


def check_real_fake_symmetry(loss: Loss, real: Scores, fake: Scores, rtol: float | None = None) -> None:
    """L_D(real, fake) = L_D(-fake, -real): real and fake pairs play mirror roles."""
    negated = lambda s: mapped(s, torch.neg)  # noqa: E731
    expected = loss.discriminator(real, fake)[0]
    swapped = loss.discriminator(negated(fake), negated(real))[0]
    assert_close(
        swapped,
        expected,
        scale_of(real, fake),
        rtol,
        what=f"{_name(loss)}: L_D changes when real and fake are swapped and every score negated",
    )


def check_gradient_directions(loss: Loss, real: Scores, fake: Scores) -> None:
    """Minimising L_D never lowers a real score that is <= 0 nor raises a fake one that is >= 0: it
    never pushes a score further to the wrong side (gradient descent follows -grad). Minimising L_EG
    never raises a real score >= 0 nor lowers a fake one <= 0. Monotone losses (hinge, logistic,
    Wasserstein) push every score one way; a least-squares loss pulls scores past its targets back."""
    real, fake = score_leaves(real), score_leaves(fake)
    loss_d, loss_eg = loss.discriminator(real, fake)[0], loss.generator_encoder(real, fake)[0]
    for name in required_scores(loss):
        s_real, s_fake = getattr(real, name), getattr(fake, name)
        d_real, d_fake = _grads(loss_d, [s_real, s_fake])
        eg_real, eg_fake = _grads(loss_eg, [s_real, s_fake])
        if (d_real[s_real <= 0] > 0).any() or (d_fake[s_fake >= 0] < 0).any():
            raise AssertionError(
                f"{_name(loss)}: L_D pushes real {name} scores <= 0 further down or fake ones >= 0 further up"
            )
        if (eg_real[s_real >= 0] < 0).any() or (eg_fake[s_fake <= 0] > 0).any():
            raise AssertionError(
                f"{_name(loss)}: L_EG pushes real {name} scores >= 0 further up or fake ones <= 0 further down"
            )


def check_reads_only_required_scores(loss: Loss, real: Scores, fake: Scores) -> None:
    """A score outside ``required_scores`` may be None and then changes nothing."""
    required = required_scores(loss)
    for name in SCORE_NAMES:
        if name in required or (getattr(real, name) is None and getattr(fake, name) is None):
            continue
        for what, method in _methods(loss).items():
            try:
                dropped = method(without(real, name), without(fake, name))[0]
            except Exception as exc:
                raise AssertionError(
                    f"{_name(loss)}: {what} fails without {name}, which is not in required_scores "
                    f"{required}: {type(exc).__name__}: {exc}"
                ) from exc
            if not torch.equal(dropped, method(real, fake)[0]):
                raise AssertionError(f"{_name(loss)}: {what} reads {name}, which is not in required_scores {required}")


def check_loss_on(loss: Loss, real: Scores, fake: Scores, seed: int = 0) -> None:
    """Every check of this module on one pair of score batches (all three scores present)."""
    check_loss_outputs(loss, real, fake)
    check_permutation_invariance(loss, real, fake, seed)
    check_duplication_invariance(loss, real, fake)
    check_real_fake_symmetry(loss, real, fake)
    check_gradient_directions(loss, real, fake)
    check_reads_only_required_scores(loss, real, fake)


def check_loss(config: Any, ctx: BuildContext = SMALL_CONTEXT, *, max_examples: int = 50) -> Loss:
    """Build ``config`` and check every invariant on ``max_examples`` hypothesis-drawn score batches
    (float32 and float64, |s| up to 1e4, the hinge margins included). Returns the built loss.

    Call it from a plain test function, not from inside another ``@given`` test.
    """
    loss = build(config, ctx)
    if not isinstance(loss, Loss):
        got = type(loss).__name__
        raise AssertionError(f"{type(config).__name__}.build must return a bifamily.interfaces.Loss, got {got}")
    required_scores(loss)

    # No explain phase: it reruns failing examples under coverage tracing, which takes seconds.
    @settings(max_examples=max_examples, deadline=None, phases=set(Phase) - {Phase.explain})
    @given(FLOAT_DTYPES.flatmap(real_and_fake), st.integers(0, 2**32 - 1))
    def invariants_hold(pair: tuple[Scores, Scores], seed: int) -> None:
        check_loss_on(loss, *pair, seed=seed)

    invariants_hold()
    return loss


def _batch_size(scores: Scores) -> int:
    return len(next(t for t in scores if t is not None))


def _grads(value: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of ``value``; an input it does not depend on gets zeros."""
    grads = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
