"""Joint discriminator D(x, z) at DCGAN scale: BiGAN/ALI's image, latent and joint paths."""

from __future__ import annotations

import attrs
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from bifamily.config import in_range, non_negative, option, positive
from bifamily.context import BuildContext
from bifamily.interfaces import JointDiscriminator, Scores

from .stages import BOTTOM, stride2_stages, widths


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation: one feature map appended, constant per group of samples.

    The batch is split into groups of ``group`` samples (sample i in group i mod N/group); within a
    group the standard deviation of every feature at every position is taken, averaged into one
    number, and broadcast as an extra channel to each of the group's samples. A generator that draws
    too little variety gives smaller values than real batches do, which D can score. Where ``group``
    does not divide the batch, the batch's largest divisor below ``group`` is the group size (a batch
    of one sees no variety).
    """

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = h.shape
        group = next(g for g in range(min(self.group, n), 0, -1) if n % g == 0)
        grouped = h.reshape(group, n // group, channels, height, width)
        std = (grouped.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (N/group, C, H, W)
        per_group = std.mean(dim=(1, 2, 3))  # (N/group,)
        feature = per_group.repeat(group).reshape(n, 1, 1, 1).expand(n, 1, height, width)
        return torch.cat([h, feature.to(h.dtype)], dim=1)


class DCGANJointDiscriminator(JointDiscriminator):
    """F(x): [Conv 4x4 s2, LeakyReLU(0.2), Dropout]* down to 4x4, flattened; H(z): 2-layer MLP;
    J: 2-layer MLP on [F(x), H(z)]. s_xz = linear(J), and with ``unary`` s_x = linear(F(x)),
    s_z = linear(H(z)) as in BigBiGAN. No batch norm, so real and fake pairs may share a batch,
    unless ``minibatch_std`` appends a per-group statistic to F(x)'s last map.
    """

    def __init__(
        self,
        latent_dim: int,
        resolution: int,
        channels: int,
        ch: int,
        max_ch: int,
        z_width: int,
        joint_width: int,
        dropout: float,
        unary: bool,
        normalise: bool,
        minibatch_std: int = 0,
    ):
        super().__init__()
        self.has_batch_statistics = minibatch_std > 0
        self.latent_dim = latent_dim
        self.resolution = resolution
        self.channels = channels
        stages = stride2_stages(resolution, component="discriminator", key="$.data.resolution")
        hidden = widths(ch, max_ch, stages)

        def layer(module: nn.Module) -> nn.Module:
            return spectral_norm(module) if normalise else module

        def activation() -> list[nn.Module]:
            return [nn.LeakyReLU(0.2)] + ([nn.Dropout(dropout)] if dropout else [])

        convs: list[nn.Module] = []
        for width_in, width_out in zip([channels, *hidden], hidden):
            convs += [layer(nn.Conv2d(width_in, width_out, 4, stride=2, padding=1)), *activation()]
        if minibatch_std:
            convs.append(MinibatchStd(minibatch_std))
        self.image_path = nn.Sequential(*convs, nn.Flatten())
        image_dim = (hidden[-1] + (minibatch_std > 0)) * BOTTOM * BOTTOM
        self.latent_path = nn.Sequential(
            layer(nn.Linear(latent_dim, z_width)),
            *activation(),
            layer(nn.Linear(z_width, z_width)),
            *activation(),
        )
        self.joint_path = nn.Sequential(
            layer(nn.Linear(image_dim + z_width, joint_width)),
            *activation(),
            layer(nn.Linear(joint_width, joint_width)),
            *activation(),
            layer(nn.Linear(joint_width, 1)),
        )
        self.image_score = layer(nn.Linear(image_dim, 1)) if unary else None
        self.latent_score = layer(nn.Linear(z_width, 1)) if unary else None

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> Scores:
        fx = self.image_path(x)
        hz = self.latent_path(z)
        s_xz = self.joint_path(torch.cat([fx, hz], dim=1)).squeeze(1)
        if self.image_score is None or self.latent_score is None:
            return Scores(s_x=None, s_z=None, s_xz=s_xz)
        s_x = self.image_score(fx).squeeze(1)
        s_z = self.latent_score(hz).squeeze(1)
        return Scores(s_x=s_x, s_z=s_z, s_xz=s_xz)


@attrs.frozen
class DCGANDiscriminatorConfig:
    """Joint discriminator for BiGAN/ALI/BigBiGAN at DCGAN scale (any power-of-two resolution >= 8).

    The image path is the DCGAN discriminator without batch norm; with ``unary`` it also scores x
    and z on their own (BigBiGAN's s_x and s_z), otherwise only the joint score s_xz (BiGAN, ALI).
    """

    ch: int = option(
        64, help="Width of the first conv layer; doubles up to max_ch.", validator=positive
    )
    max_ch: int = option(512, help="Cap on every conv width.", validator=positive)
    z_width: int = option(
        512, help="Width of both layers of the latent path H(z).", validator=positive
    )
    joint_width: int = option(
        1024,
        help="Width of both hidden layers of the joint path J(F(x), H(z)).",
        validator=positive,
    )
    dropout: float = option(
        0.0,
        help="Dropout rate after every hidden layer, in training mode only (ALI uses 0.2).",
        validator=in_range(0.0, 0.99),
    )
    unary: bool = option(
        True,
        help=(
            "Also produce the unary scores s_x and s_z (linear heads on F(x) and H(z)) for the "
            "BigBiGAN loss; false gives only s_xz, the plain BiGAN/ALI discriminator."
        ),
    )
    spectral_norm: bool = option(
        True,
        help="Spectral normalisation of every conv and linear layer (a power iteration per call).",
    )
    minibatch_std: int = option(
        0,
        help=(
            "Group size of ProGAN's minibatch standard deviation: the image path's last map gains one "
            "channel holding the mean feature standard deviation over each group of samples, so D "
            "sees how varied a batch is (against mode dropping); real and fake pairs then go "
            "through D in separate calls. Groups form within each rank's micro-batch, so the "
            "number of ranks and train.accumulation change them. 0 = off; ProGAN and StyleGAN use 4."
        ),
        validator=non_negative,
    )

    def build(self, ctx: BuildContext) -> DCGANJointDiscriminator:
        return DCGANJointDiscriminator(
            ctx.latent_dim,
            ctx.resolution,
            ctx.channels,
            ch=self.ch,
            max_ch=self.max_ch,
            z_width=self.z_width,
            joint_width=self.joint_width,
            dropout=self.dropout,
            unary=self.unary,
            normalise=self.spectral_norm,
            minibatch_std=self.minibatch_std,
        )
