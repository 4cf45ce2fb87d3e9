"""Reading the scores a loss needs out of a :class:`Scores`; a clear error when one is missing."""

from __future__ import annotations

import torch

from bifamily.interfaces import Scores


def required_score(scores: Scores, name: str, *, loss: str, side: str) -> torch.Tensor:
    """Score ``name`` of ``scores`` (the ``side`` pairs, "real" or "fake"), in at least float32.

    Scores computed under bf16/fp16 autocast are promoted, so the batch means and the loss are
    accumulated in float32; float64 scores stay float64.
    """
    value = getattr(scores, name)
    if value is None:
        raise ValueError(
            f"loss {loss!r} needs the score {name}, but the discriminator returned None for it "
            f"on the {side} pairs"
        )
    return value.to(torch.promote_types(value.dtype, torch.float32))


def mean_stats(name: str, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached batch means of one score on real and fake pairs (no host sync)."""
    return {f"real_{name}": real.detach().mean(), f"fake_{name}": fake.detach().mean()}
