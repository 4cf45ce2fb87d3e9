"""Hypothesis strategies for the tensors bifamily components exchange: latents, images and scores.

Values mix ordinary draws with the edge cases that break components: exact zeros, the hinge margins
±1, the image bounds ±1 and very large scores.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from bifamily.interfaces import Scores

SCORE_NAMES: tuple[str, ...] = Scores._fields
FLOAT_DTYPES = st.sampled_from([torch.float32, torch.float64])
BATCH_SIZES = st.integers(1, 4)


def score_values(limit: float = 1e4) -> st.SearchStrategy[float]:
    """Any finite score up to ``|s| = limit``, mixed with values at and around the hinge margins."""
    return st.one_of(
        st.floats(-limit, limit, allow_nan=False, allow_infinity=False),
        st.sampled_from([-1.0, 0.0, 1.0, -limit, limit]),
        st.floats(-1.5, 1.5),
    )


@st.composite
def scores(
    draw: st.DrawFn,
    n: int,
    dtype: torch.dtype = torch.float64,
    names: tuple[str, ...] = SCORE_NAMES,
    limit: float = 1e4,
) -> Scores:
    """A :class:`Scores` for a batch of ``n`` pairs with the fields ``names`` filled, the others None."""
    values = st.lists(score_values(limit), min_size=n, max_size=n)
    return Scores(
        *(torch.tensor(draw(values), dtype=dtype) if name in names else None for name in SCORE_NAMES)
    )


@st.composite
def real_and_fake(
    draw: st.DrawFn,
    dtype: torch.dtype = torch.float64,
    names: tuple[str, ...] = SCORE_NAMES,
    batch_sizes: st.SearchStrategy[int] = BATCH_SIZES,
) -> tuple[Scores, Scores]:
    """Scores of real pairs D(x, E(x)) and of fake pairs D(G(z), z); the two batches may differ in size."""
    real = draw(scores(draw(batch_sizes), dtype, names))
    fake = draw(scores(draw(batch_sizes), dtype, names))
    return real, fake


def _float_tensors(
    shape: tuple[int, ...], elements: st.SearchStrategy[float], dtype: torch.dtype
) -> st.SearchStrategy[torch.Tensor]:
    count = 1
    for side in shape:
        count *= side
    values = st.lists(elements, min_size=count, max_size=count)
    return values.map(lambda flat: torch.tensor(flat, dtype=dtype).reshape(shape))


def latents(
    n: int, dim: int, *, limit: float = 10.0, dtype: torch.dtype = torch.float32
) -> st.SearchStrategy[torch.Tensor]:
    """(n, dim) latents with entries in [-limit, limit]: covers both priors' supports and beyond."""
    elements = st.one_of(
        st.floats(-limit, limit, allow_nan=False, width=32),
        st.sampled_from([0.0, -1.0, 1.0, -limit, limit]),
    )
    return _float_tensors((n, dim), elements, dtype)


def images(
    n: int, channels: int, resolution: int, *, dtype: torch.dtype = torch.float32
) -> st.SearchStrategy[torch.Tensor]:
    """(n, channels, resolution, resolution) images in [-1, 1]: noise, constant images and both bounds.

    Per-pixel draws are slow at large sides, so the noise images come from a drawn seed.
    """
    shape = (n, channels, resolution, resolution)

    def noise(seed: int) -> torch.Tensor:
        unit = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        return unit * 2 - 1

    constant = st.sampled_from([-1.0, 0.0, 1.0]).map(lambda v: torch.full(shape, v, dtype=dtype))
    return st.one_of(st.integers(0, 2**32 - 1).map(noise), constant)
