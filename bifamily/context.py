"""What components must agree on when they are built from a recipe."""

from __future__ import annotations

from typing import Callable

import attrs
import torch
from torch import nn


def _plain_batch_norm(num_features: int, affine: bool = True) -> nn.Module:
    return nn.BatchNorm2d(num_features, affine=affine)


@attrs.frozen
class BuildContext:
    """Passed to every component config's ``build(ctx)``.

    resolution: side of the images G produces and D reads (recipe key ``data.resolution``).
    encoder_resolution: side of the images E reads (``data.encoder_resolution``, defaults to resolution).
    channels: image channels (``data.channels``).
    latent_dim: dimension of z (``prior.dim``).
    device: where the modules will live; build on CPU and move, or build here directly.
    batch_norm: factory ``batch_norm(num_features, affine=True)`` for the 2-D batch norm layers of G
      and E; distributed runs swap in a cross-replica batch norm here, so components never need to
      know about torch.distributed. (1-D features: apply it to a (N, C, 1, 1) view.)
    """

    resolution: int
    channels: int
    latent_dim: int
    encoder_resolution: int | None = None
    device: torch.device = torch.device("cpu")
    batch_norm: Callable[..., nn.Module] = _plain_batch_norm

    @property
    def encoder_input_resolution(self) -> int:
        return self.encoder_resolution or self.resolution

    @property
    def data_resolution(self) -> int:
        """Side of the images the data pipeline yields: the larger of the two model resolutions."""
        return max(self.resolution, self.encoder_input_resolution)
