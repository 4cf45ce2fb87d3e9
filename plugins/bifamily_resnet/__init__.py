"""bifamily built-in plugin: BigBiGAN's encoder backbones, ResNet-v2 and RevNet (x1/x2/x4 widths).

Both end in global average pooling (the evaluation features) and the residual MLP the posterior
head reads.
"""

from __future__ import annotations

from bifamily.hookspecs import Register, hookimpl

from .configs import ResNetV2Config, RevNetConfig


@hookimpl
def bifamily_register_encoders(register: Register) -> None:
    register("resnet_v2", ResNetV2Config)
    register("revnet", RevNetConfig)
