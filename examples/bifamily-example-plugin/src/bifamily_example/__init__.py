"""bifamily-example-plugin: a third-party bifamily plugin adding three components.

- generator ``pixel_shuffle``: sub-pixel convolution up-stages with ICNR initialisation;
- encoder ``convmixer``: a ConvMixer backbone (patch embedding, depthwise/pointwise conv blocks);
- prior ``gaussian_mixture``: K isotropic Gaussians with centres on a sphere.

bifamily finds this module through the entry point ``example = "bifamily_example"`` in the
``bifamily`` group (pyproject.toml) and calls the hooks below.
"""

from __future__ import annotations

from bifamily.hookspecs import Register, hookimpl

from .convmixer import ConvMixer, ConvMixerConfig
from .mixture_prior import GaussianMixturePrior, GaussianMixturePriorConfig
from .pixel_shuffle import PixelShuffleGenerator, PixelShuffleGeneratorConfig

__all__ = [
    "ConvMixer",
    "ConvMixerConfig",
    "GaussianMixturePrior",
    "GaussianMixturePriorConfig",
    "PixelShuffleGenerator",
    "PixelShuffleGeneratorConfig",
]


@hookimpl
def bifamily_register_generators(register: Register) -> None:
    register("pixel_shuffle", PixelShuffleGeneratorConfig)


@hookimpl
def bifamily_register_encoders(register: Register) -> None:
    register("convmixer", ConvMixerConfig)


@hookimpl
def bifamily_register_priors(register: Register) -> None:
    register("gaussian_mixture", GaussianMixturePriorConfig)
