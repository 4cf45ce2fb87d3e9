"""The stride-2 pyramid every DCGAN component is built on: 4x4 at the bottom, doubling up to R."""

from __future__ import annotations

from bifamily.errors import RecipeError

BOTTOM = 4
"""Side of the smallest feature map: G starts from it, E and D flatten it."""


def stride2_stages(resolution: int, *, component: str, key: str) -> int:
    """How many stride-2 layers separate a ``resolution`` x ``resolution`` image from the 4x4 map.

    ``component`` is the recipe section being built and ``key`` the recipe key the resolution comes
    from; both are named in the error raised for a resolution that is not a power of two >= 8.
    """
    if resolution < 2 * BOTTOM or resolution & (resolution - 1):
        problem = (
            f"{key}: the dcgan {component} ($.{component}.kind) needs a power-of-two "
            f"resolution >= {2 * BOTTOM}, got {resolution}"
        )
        raise RecipeError([problem])
    return resolution.bit_length() - BOTTOM.bit_length()


def widths(ch: int, max_ch: int, stages: int) -> list[int]:
    """Layer widths from the image side inwards: ch, 2 ch, 4 ch, ... capped at ``max_ch``."""
    return [min(ch << level, max_ch) for level in range(stages)]
