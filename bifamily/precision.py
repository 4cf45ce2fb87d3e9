"""Mixed precision: autocast for the forward passes, loss scaling for fp16.

``train.precision``:
- ``auto``: ``bf16`` where the device computes in bfloat16 natively (CUDA with bf16 support; a CPU with
  AMX or AVX512-BF16 instructions), else ``fp32``. On a CPU without those, bf16 is emulated and slower.
- ``fp32``: no autocast.
- ``bf16``: ``torch.autocast`` to bfloat16 (CPU and CUDA). bf16 has fp32's exponent range, so no loss
  scaling is needed.
- ``fp16``: autocast to float16 plus dynamic loss scaling with ``torch.amp.GradScaler``, one scaler per
  optimizer (D and G+E see gradients of very different sizes). CUDA only.

Spectral norm's power iteration stays in fp32 under autocast (:mod:`bifamily.spectral_norm`).
"""

from __future__ import annotations

import contextlib

import torch

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
