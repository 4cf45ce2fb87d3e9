"""Frozen feature networks for IS/FID/KID: clean-fid's Inception-v3 and a small random stand-in.

Inception weights: clean-fid runs the TorchScript export of TF Inception-v3 (2015-12-05) that
StyleGAN2-ADA published, and downloads it into the system temp folder on first use. bifamily never
downloads: :func:`load_inception` takes a local copy (argument or ``BIFAMILY_INCEPTION_WEIGHTS``) and
raises a one-line :class:`BifamilyError` saying where to get it. The file is a TorchScript archive;
``torch.jit.load`` is the only way to run it (it holds compiled code and tensors, not pickled Python
objects, but it is code all the same: use a copy from the URL below).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from cleanfid.downloads_helper import inception_url
from cleanfid.resize import make_resizer
from torch import Tensor, nn

from bifamily.errors import BifamilyError

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_ENV = "BIFAMILY_INCEPTION_WEIGHTS"
_INCEPTION_SIZE = 299
_INCEPTION_FEATURES = 2048


class FeatureNetwork(Protocol):
    """Images (N, C, H, W), uint8 in [0, 255] or float in [-1, 1], to pool features (N, F) and logits
    (N, classes) or None. ``name`` and ``resizer`` describe it in cache keys and reports."""

    name: str
    resizer: str

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]: ...

    def to(self, device: torch.device | str) -> FeatureNetwork: ...


def to_pixels(images: Tensor) -> Tensor:
    """Float pixels in [0, 255]: uint8 as is, floats mapped from [-1, 1] (clamped)."""
    if images.dtype == torch.uint8:
        return images.float()
    return ((images.float() + 1.0) * 127.5).clamp(0.0, 255.0)


def to_unit(images: Tensor) -> Tensor:
    """Floats in [-1, 1]: uint8 rescaled, floats as is."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float()


class InceptionNetwork(nn.Module):
    """clean-fid's "clean" Inception: PIL bicubic resize to 299x299 of float pixels (no quantisation),
    then TF Inception-v3; returns the 2048-d pool features and, when the archive has its ``output``
    layer, the 1008 logits for the Inception Score.

    The logits omit the output bias, as the original Inception Score code and StyleGAN2-ADA's
    (``no_output_bias=True``) do. Grey images are repeated to three channels.
    """

    name = "inception-v3-2015-12-05"
    resizer = "clean-fid clean: PIL bicubic to 299x299 on float pixels in [0, 255]"

    def __init__(self, scripted: nn.Module):
        super().__init__()
        self.base = scripted.eval()
        self.has_logits = hasattr(scripted, "output")
        self._resize = make_resizer("PIL", False, "bicubic", (_INCEPTION_SIZE, _INCEPTION_SIZE))
        self.requires_grad_(False)

    @torch.inference_mode()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        pixels = to_pixels(images).cpu()
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        hwc = pixels.permute(0, 2, 3, 1).numpy()
        resized = np.stack([self._resize(image) for image in hwc])
        device = next(self.base.parameters()).device
        x = torch.from_numpy(resized).permute(0, 3, 1, 2).to(device)
        features = self.base.layers((x - 128.0) / 128.0).reshape(x.shape[0], _INCEPTION_FEATURES)
        logits = features @ self.base.output.weight.t() if self.has_logits else None
        return features, logits


def load_inception(weights_path: str | os.PathLike | None = None) -> InceptionNetwork:
    """clean-fid's Inception from a local ``inception-2015-12-05.pt`` (or a folder holding it).

    The path comes from ``weights_path``, else the ``BIFAMILY_INCEPTION_WEIGHTS`` environment
    variable. Loaded on the CPU; move it with ``.to(device)``. Never touches the network.
    """
    source = weights_path if weights_path is not None else os.environ.get(INCEPTION_ENV)
    path = Path(source) if source else None
    if path is not None and path.is_dir():
        path = path / INCEPTION_FILE
    if path is None or not path.is_file():
        looked = f" (not found at {path})" if path is not None else ""
        raise BifamilyError(
            f"IS/FID/KID need clean-fid's Inception weights {INCEPTION_FILE}{looked}; bifamily does not "
            f"download it: get it from {inception_url} and pass its path or set {INCEPTION_ENV}"
        )
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export, but this archive exists only as TorchScript.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise BifamilyError(f"{path}: not a TorchScript archive of {INCEPTION_FILE} ({error})") from error
    if not hasattr(scripted, "layers"):
        raise BifamilyError(f"{path}: has no `layers` module, so it is not clean-fid's {INCEPTION_FILE}")
    return InceptionNetwork(scripted)


class RandomConvFeatures(nn.Module):
    """A fixed random conv net (three stride-2 convs, global average pool), deterministic from the seed.

    A cheap stand-in for Inception in tests and on small domains where Inception's ImageNet features say
    little (its distances are only comparable between runs using the same seed, channels and dim).
    Works at any resolution, so it does no resizing; returns no logits.
    """

    resizer = "none"

    def __init__(self, channels: int, seed: int, dim: int = 64):
        super().__init__()
        self.channels = channels
        self.name = f"random-conv(channels={channels}, dim={dim}, seed={seed})"
        generator = torch.Generator().manual_seed(seed)
        widths = [channels, 32, 64, dim]
        self.convs = nn.ModuleList(
            nn.Conv2d(w_in, w_out, kernel_size=3, stride=2, padding=1) for w_in, w_out in zip(widths, widths[1:])
        )
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.in_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
        self.requires_grad_(False)

    @torch.inference_mode()
    def forward(self, images: Tensor) -> tuple[Tensor, None]:
        if images.shape[1] != self.channels:
            raise ValueError(f"{self.name} takes {self.channels}-channel images, got {images.shape[1]}")
        x = to_unit(images).to(self.convs[0].weight.device)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = torch.relu(x)
        return x.mean(dim=(2, 3)), None
