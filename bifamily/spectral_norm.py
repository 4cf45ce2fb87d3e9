"""The spectral-norm parametrization the trainer uses: torch's, with sigma kept in fp32 under autocast.

torch's parametrization estimates sigma with ``torch.mv``, which CUDA autocast runs in the low-precision
dtype (CPU autocast leaves ``mv`` alone). A power iteration in fp16/bf16 drifts and the normalised
weight inherits the error, so :func:`spectral_norm_in_fp32` turns autocast off inside every
spectral-norm parametrization: u, v and sigma are computed in fp32 from the fp32 weight, and only the
layer's own conv/linear runs in the low-precision dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations

from bifamily.precision import autocast_off

_SpectralNorm = parametrizations._SpectralNorm


class _SpectralNormFP32(_SpectralNorm):
    """torch's spectral-norm parametrization with autocast switched off inside (same buffers/keys)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with autocast_off(weight.device.type):
            return super().forward(weight)


def spectral_norm_in_fp32(module: nn.Module) -> int:
    """Make every ``torch.nn.utils.parametrizations.spectral_norm`` in ``module`` run in fp32 under
    autocast. The state dict is unchanged. Returns how many parametrizations were converted."""
    converted = 0
    for child in module.modules():
        if type(child) is _SpectralNorm:
            child.__class__ = _SpectralNormFP32
            converted += 1
    return converted
