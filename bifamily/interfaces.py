"""The typed interfaces every component implements.

Conventions: images are NCHW float tensors in [-1, 1]; latents are (N, D) float tensors.
A joint discriminator returns a :class:`Scores` of per-sample scores, each of shape (N,) or None.
"""

from __future__ import annotations

import abc
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn


class Scores(NamedTuple):
    """Per-sample discriminator scores for (x, z) pairs: unary image, unary latent and joint terms.

    A plain BiGAN/ALI discriminator fills only ``s_xz``; BigBiGAN's F/H/J discriminator fills all three.
    """

    s_x: torch.Tensor | None
    s_z: torch.Tensor | None
    s_xz: torch.Tensor | None

    def present(self) -> dict[str, torch.Tensor]:
        """The scores that are not None, by name."""
        return {name: value for name, value in zip(self._fields, self) if value is not None}

    def split(self, n: int) -> tuple[Scores, Scores]:
        """Split scores of a concatenated batch into its first ``n`` rows and the rest."""
        first = Scores(*(None if s is None else s[:n] for s in self))
        rest = Scores(*(None if s is None else s[n:] for s in self))
        return first, rest


class Posterior:
    """q(z | x) produced by an encoder. ``sample`` is reparameterised, so gradients reach the encoder.

    ``mean`` is the point estimate used for reconstructions and evaluation; ``scale`` is None for a
    deterministic (Dirac) posterior.
    """

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor | None = None, squash: bool = False):
        self.mean = mean
        self.scale = scale
        self.squash = squash

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.scale is None:
            z = self.mean
        else:
            eps = torch.randn(
                self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
            )
            z = self.mean + eps * self.scale
        return torch.tanh(z) if self.squash else z

    @property
    def point(self) -> torch.Tensor:
        """The deterministic code: the mean, squashed for a tanh-uniform posterior."""
        return torch.tanh(self.mean) if self.squash else self.mean


class LatentPrior(abc.ABC):
    """P(z): the latent distribution the generator is fed from."""

    dim: int

    @abc.abstractmethod
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Draw ``n`` latents of shape (n, dim)."""


class Generator(nn.Module):
    """G: maps latents (N, latent_dim) to images (N, channels, resolution, resolution) in [-1, 1]."""

    latent_dim: int
    resolution: int
    channels: int


class EncoderBackbone(nn.Module):
    """The body of E: images (N, C, R, R) to hidden features (N, feature_dim) for the posterior head.

    ``features`` returns the representation used for evaluation (linear probe, k-NN). It defaults to
    ``forward``; backbones with a head MLP return the globally pooled output before it, which is what
    the paper evaluates.
    """

    feature_dim: int
    resolution: int  # the side of the images it reads (ctx.encoder_input_resolution)
    channels: int

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


class PosteriorHead(nn.Module):
    """Maps backbone features (N, feature_dim) to a :class:`Posterior` over (N, latent_dim)."""

    latent_dim: int

    def forward(self, h: torch.Tensor) -> Posterior:  # pragma: no cover - interface
        raise NotImplementedError


class Encoder(nn.Module):
    """E = posterior head after a backbone. ``forward(x)`` returns a :class:`Posterior`."""

    def __init__(self, backbone: EncoderBackbone, head: PosteriorHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def latent_dim(self) -> int:
        return self.head.latent_dim

    @property
    def resolution(self) -> int:
        return self.backbone.resolution

    def forward(self, x: torch.Tensor) -> Posterior:
        return self.head(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen-feature representation for evaluation (see :meth:`EncoderBackbone.features`)."""
        return self.backbone.features(x)


class JointDiscriminator(nn.Module):
    """D(x, z) -> :class:`Scores`. ``resolution``/``channels``/``latent_dim`` declare its inputs.

    ``has_batch_statistics`` tells the trainer whether real and fake pairs may share one forward call
    (they may only when no layer mixes samples, e.g. no batch norm).
    """

    latent_dim: int
    resolution: int
    channels: int
    has_batch_statistics: bool = False

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> Scores:  # pragma: no cover - interface
        raise NotImplementedError


class Loss(abc.ABC):
    """An adversarial objective over real = D(x, E(x)) and fake = D(G(z), z) scores.

    Each method returns the scalar loss to minimise and a dict of detached scalar statistics (by
    convention ``loss_d`` and ``loss_eg`` hold the losses themselves; every name starting with
    ``loss`` is shown in the progress line).
    """

    required_scores: tuple[str, ...]
    """The :class:`Scores` fields the loss reads (``"s_x"``, ``"s_z"``, ``"s_xz"``); building a recipe
    checks that the discriminator returns each of them."""

    @abc.abstractmethod
    def discriminator(self, real: Scores, fake: Scores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_D, minimised by the discriminator."""

    @abc.abstractmethod
    def generator_encoder(
        self, real: Scores, fake: Scores
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_EG, minimised jointly by the generator and the encoder."""

    reconstructs: bool = False
    """Whether L_EG also has a term on reconstructions G(E(x)) (ALICE's explicit cycle). Only then does
    the trainer decode the real images' latent samples and add :meth:`reconstruction` to L_EG."""

    def reconstruction(self, x: torch.Tensor, x_rec: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reconstruction term of L_EG for real images ``x`` and ``x_rec`` = G(a sample of E(x))."""
        raise NotImplementedError(f"{type(self).__name__} has no reconstruction term")


@runtime_checkable
class LabelledDataset(Protocol):
    """A map-style data set of (image, label) pairs; images (C, R, R) float in [-1, 1], label an int.

    ``num_classes`` is 0 for a data set without labels. A data set may implement ``__getitems__``
    (a list of indices to a list of samples) to produce whole batches at once.
    """

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...
