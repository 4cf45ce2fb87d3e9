"""bifamily built-in plugin: DCGAN-scale generator, encoder backbone and joint discriminator.

Small, fast components for BiGAN/ALI/BigBiGAN at 8..256 pixels (the quickstart trains one on CPU).
"""

from __future__ import annotations

from bifamily.hookspecs import Register, hookimpl

from .discriminator import DCGANDiscriminatorConfig
from .encoder import DCGANEncoderConfig
from .generator import DCGANGeneratorConfig


@hookimpl
def bifamily_register_generators(register: Register) -> None:
    register("dcgan", DCGANGeneratorConfig)


@hookimpl
def bifamily_register_encoders(register: Register) -> None:
    register("dcgan", DCGANEncoderConfig)


@hookimpl
def bifamily_register_discriminators(register: Register) -> None:
    register("dcgan", DCGANDiscriminatorConfig)
