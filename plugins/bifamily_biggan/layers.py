"""Layers shared by the BigGAN generator and the BigBiGAN discriminator.

Every convolution and linear layer is spectrally normalised with
``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per training-mode forward) and
orthogonally initialised, as in BigGAN. Biases start at zero (BigGAN leaves PyTorch's default uniform
bias init in place; zero is the usual choice and removes a source of seed-dependence).

Autocast: CUDA autocast runs ``torch.mv`` (the power iteration and sigma = u^T W v) in float16, so the
normalised weight is computed with autocast disabled and stays float32; only the convolution or
matmul that uses it is autocast. CPU autocast does not touch ``mv``, but the same rule applies there.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from bifamily.precision import autocast_off

# BigGAN's 128x128 launch scripts use --SN_eps 1e-6; BatchNorm keeps PyTorch's eps 1e-5 (= --BN_eps).
SPECTRAL_NORM_EPS = 1e-6


def _initialise_and_normalise(layer: nn.Conv2d | nn.Linear) -> None:
    """Orthogonal weight, zero bias, then spectral norm (whose power iteration starts from this weight)."""
    nn.init.orthogonal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    spectral_norm(layer, eps=SPECTRAL_NORM_EPS)


def _normalised_weight(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """W / sigma(W), computed in float32 whatever autocast is active."""
    with autocast_off(layer.parametrizations.weight.original.device.type):
        return layer.weight


class SNConv2d(nn.Conv2d):
    """Spectrally normalised, orthogonally initialised convolution with "same" padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        _initialise_and_normalise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _normalised_weight(self), self.bias)


class SNLinear(nn.Linear):
    """Spectrally normalised, orthogonally initialised linear layer."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        _initialise_and_normalise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _normalised_weight(self), self.bias)


class ConditionalBatchNorm(nn.Module):
    """BN without affine parameters, then a per-sample gain ``1 + W_g c`` and bias ``W_b c``.

    ``c`` is the conditioning vector (shared embedding and, with hierarchical latents, a z chunk);
    ``W_g`` and ``W_b`` are bias-free spectrally normalised linear maps, as in BigGAN's shared-embedding
    generator. The normalisation comes from ``batch_norm`` so distributed runs can make it cross-replica.
    """

    def __init__(self, channels: int, condition_dim: int, batch_norm: Callable[..., nn.Module]):
        super().__init__()
        self.norm = batch_norm(channels, affine=False)
        self.gain = SNLinear(condition_dim, channels, bias=False)
        self.bias = SNLinear(condition_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.gain(condition)
        bias = self.bias(condition)
        return torch.addcmul(bias[:, :, None, None], self.norm(x), gain[:, :, None, None])


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H*W, C): one attention head over spatial positions (a view in both layouts)."""
    return x.flatten(2).transpose(1, 2).unsqueeze(1)


class SelfAttention(nn.Module):
    """SAGAN self-attention with BigGAN's reductions: queries and keys C/8, values C/2 channels, keys
    and values max-pooled 2x2, unscaled softmax(QK^T) V, output ``x + gamma * W_o(attended)`` with
    gamma starting at 0. Widths below 8 channels keep one key channel (only tiny test models hit this).
    """

    def __init__(self, channels: int):
        super().__init__()
        key_channels = max(1, channels // 8)
        value_channels = max(1, channels // 2)
        self.query = SNConv2d(channels, key_channels, 1, bias=False)
        self.key = SNConv2d(channels, key_channels, 1, bias=False)
        self.value = SNConv2d(channels, value_channels, 1, bias=False)
        self.out = SNConv2d(value_channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        query = _tokens(self.query(x))
        key = _tokens(F.max_pool2d(self.key(x), 2))
        value = _tokens(F.max_pool2d(self.value(x), 2))
        attended = F.scaled_dot_product_attention(query, key, value, scale=1.0)
        attended = attended.squeeze(1).transpose(1, 2).reshape(n, -1, height, width)
        return x + self.gamma * self.out(attended.contiguous(memory_format=_memory_format(x)))
