"""The finiteness record: the first non-finite step of each source, and what a tick reads from it."""

from __future__ import annotations

import torch
from torch import nn

from bifamily.distributed import World
from bifamily.guard import NonFinite, NonFiniteWatch


def test_the_earliest_non_finite_step_is_kept_with_every_source_that_failed_there():
    watch = NonFiniteWatch("cpu")
    watch.record("discriminator loss", torch.tensor(1.0), step=3)
    assert watch.first_failure(World()) is None
    watch.record("discriminator loss", torch.tensor([0.0, float("nan")]), step=5)
    watch.record("generator+encoder loss", torch.tensor(float("inf")), step=5)
    watch.record("discriminator loss", torch.tensor(float("nan")), step=8)  # later: the first stays
    failure = watch.first_failure(World())
    assert failure == NonFinite(5, ("discriminator loss", "generator+encoder loss"))
    assert failure.describe() == "at step 5 the discriminator loss and generator+encoder loss were not finite (NaN or infinite)"
    watch.reset()
    assert watch.first_failure(World()) is None


def test_gradients_are_judged_by_their_total_norm_and_missing_gradients_are_skipped():
    layer = nn.Linear(2, 1)
    watch = NonFiniteWatch("cpu")
    watch.record_gradients("encoder gradients", layer.parameters(), step=1)  # no .grad yet
    assert watch.first_failure(World()) is None
    layer.weight.grad = torch.tensor([[1.0, float("inf")]])
    watch.record_gradients("encoder gradients", layer.parameters(), step=2)
    assert watch.first_failure(World()) == NonFinite(2, ("encoder gradients",))
