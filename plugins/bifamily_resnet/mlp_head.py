"""The residual MLP BigBiGAN puts between E's pooled features and the posterior head.

Paper, Section 3.1: "a 4-layer MLP (size 4096) with skip connections (two residual blocks) after
ResNet's globally average pooled output". Blocks use the same pre-activation ordering as the
ResNet-v2 trunk; batch norm goes through the context's factory on (N, C, 1, 1) views so a
distributed run gets cross-replica statistics here too.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import BatchNormFactory


def _normalise(norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return norm(h[:, :, None, None]).flatten(1)


class ResidualMLPBlock(nn.Module):
    """h -> shortcut(h) + W2 relu(bn(W1 relu(bn(h)))).

    The shortcut is the identity, or a linear projection of the pre-activated input when the width
    changes (the first block, when the pooled features are narrower or wider than the MLP). Linear
    layers have no bias: a batch norm with a learned shift follows each of them.
    """

    def __init__(self, in_dim: int, width: int, batch_norm: BatchNormFactory):
        super().__init__()
        self.norm_in = batch_norm(in_dim, affine=True)
        self.fc_in = nn.Linear(in_dim, width, bias=False)
        self.norm_mid = batch_norm(width, affine=True)
        self.fc_out = nn.Linear(width, width, bias=False)
        self.projection = nn.Linear(in_dim, width, bias=False) if in_dim != width else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(_normalise(self.norm_in, h))
        shortcut = h if self.projection is None else self.projection(activated)
        hidden = torch.relu(_normalise(self.norm_mid, self.fc_in(activated)))
        return shortcut + self.fc_out(hidden)


class ResidualMLP(nn.Module):
    """``layers // 2`` residual blocks of width ``width``, then BN -> ReLU.

    The closing BN-ReLU plays the role of ResNet-v2's final activation before its classifier: the
    posterior head's linear map reads normalised features instead of a raw residual sum.
    """

    def __init__(self, in_dim: int, width: int, layers: int, batch_norm: BatchNormFactory):
        super().__init__()
        dims = [in_dim] + [width] * (layers // 2)
        self.blocks = nn.Sequential(
            *(ResidualMLPBlock(d_in, width, batch_norm) for d_in in dims[:-1])
        )
        self.norm_out = batch_norm(width, affine=True)
        self.width = width

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(_normalise(self.norm_out, self.blocks(h)))
