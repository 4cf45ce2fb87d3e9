"""Mixed precision: autocast for the forward passes, loss scaling for fp16, spectral norm kept in fp32.

``train.precision``:
- ``auto``: ``bf16`` where the device computes in bfloat16 natively (CUDA with bf16 support; a CPU with
  AMX or AVX512-BF16 instructions), else ``fp32``. On a CPU without those, bf16 is emulated and slower.
- ``fp32``: no autocast.
- ``bf16``: ``torch.autocast`` to bfloat16 (CPU and CUDA). bf16 has fp32's exponent range, so no loss
  scaling is needed.
- ``fp16``: autocast to float16 plus dynamic loss scaling with ``torch.amp.GradScaler``, one scaler per
  optimizer (D and G+E see gradients of very different sizes). CUDA only.

Spectral norm under autocast: torch's parametrization estimates sigma with ``torch.mv``, which CUDA
autocast runs in the low-precision dtype (CPU autocast leaves ``mv`` alone). A power iteration in
fp16/bf16 drifts and the normalised weight inherits the error, so :func:`spectral_norm_in_fp32`
turns autocast off inside every spectral-norm parametrization: u, v and sigma are computed in fp32 from
the fp32 weight, and only the layer's own conv/linear runs in the low-precision dtype.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils import parametrizations

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 arithmetic in hardware, so autocast to it is a speed-up."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch's own CPU feature checks (private, hence looked up defensively)
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision ``train.precision = name`` means on ``device``: ``auto`` becomes bf16 or fp32."""
    if name != "auto":
        return name
    return "bf16" if native_bf16(device) else "fp32"


class Precision:
    """Autocast context and loss scalers for one ``train.precision`` setting on one device type."""

    def __init__(self, name: str, device: torch.device):
        self.name = resolve_precision(name, device)
        self.device_type = device.type
        self.dtype = DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A loss scaler; a pass-through (scale 1, plain ``optimizer.step``) unless fp16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device_type``; on the meta device (shapes only, as the pre-flight
    builds models) there is no autocast to switch off."""
    if device_type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


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
