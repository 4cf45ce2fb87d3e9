"""ResNet-v2 encoder backbone: shapes, widths, depths, paper-size layer shapes and recipe errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from bifamily.config import structure
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.interfaces import EncoderBackbone
from bifamily_resnet import bifamily_register_encoders
from bifamily_resnet.configs import ResNetV2Config, RevNetConfig
from bifamily_resnet.layers import PreActBottleneck

TINY = dict(base_width=8, mlp_width=32)


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny networks run fastest on one thread, and other tests may share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def context(resolution: int = 32, encoder_resolution: int | None = None) -> BuildContext:
    return BuildContext(
        resolution=resolution, channels=3, latent_dim=16, encoder_resolution=encoder_resolution
    )


def conv_shapes(module: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_registers_both_backbones() -> None:
    registered: dict[str, type] = {}
    bifamily_register_encoders(register=registered.__setitem__)
    assert registered == {"resnet_v2": ResNetV2Config, "revnet": RevNetConfig}


@pytest.mark.parametrize(("resolution", "trunk_side"), [(32, 4), (64, 8), (128, 4)])
def test_shapes_at_each_resolution(resolution: int, trunk_side: int) -> None:
    torch.manual_seed(0)
    backbone = ResNetV2Config(**TINY).build(context(resolution))
    x = torch.randn(4, 3, resolution, resolution)
    with torch.no_grad():
        trunk_out = backbone.trunk(x)
        pooled = backbone.features(x)
        out = backbone(x)
    assert isinstance(backbone, EncoderBackbone)
    # <= 64 px: stride-1 3x3 stem, side / 8 after three stride-2 stages; else 7x7/2 + max-pool too.
    assert trunk_out.shape == (4, 32 * 8, trunk_side, trunk_side)
    assert pooled.shape == (4, 256) and backbone.pooled_dim == 256
    assert out.shape == (4, 32) and backbone.feature_dim == 32
    assert torch.allclose(pooled, trunk_out.mean(dim=(2, 3)))
    assert backbone.resolution == resolution and backbone.channels == 3


def test_small_input_switch_overrides_auto_choice() -> None:
    large_stem = ResNetV2Config(**TINY, small_input=False).build(context(32))
    with torch.no_grad():
        assert large_stem.trunk(torch.randn(2, 3, 32, 32)).shape[-1] == 1
    assert conv_shapes(large_stem)[0] == (8, 3, 7, 7)
    assert conv_shapes(ResNetV2Config(**TINY, small_input=True).build(context(128)))[0] == (8, 3, 3, 3)


def test_odd_and_minimum_resolutions_build_and_run() -> None:
    for resolution in (16, 17, 65):
        backbone = ResNetV2Config(**TINY).build(context(resolution)).eval()
        with torch.no_grad():
            assert backbone(torch.randn(2, 3, resolution, resolution)).shape == (2, 32)


def test_mlp_head_layers_and_width() -> None:
    backbone = ResNetV2Config(base_width=8, mlp_width=48, mlp_layers=6).build(context())
    linears = [m for m in backbone.head.modules() if isinstance(m, nn.Linear)]
    # three residual blocks of two layers; the first also projects its 256-d input for the skip
    assert len(linears) == 7
    assert linears[0].in_features == 256 and all(m.out_features == 48 for m in linears)
    bn_inputs = [m.num_features for m in backbone.head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_inputs == [256, 48, 48, 48, 48, 48, 48]


def test_depth_101_has_33_bottlenecks() -> None:
    def bottlenecks(depth: int) -> int:
        backbone = ResNetV2Config(**TINY, depth=depth).build(context())
        return sum(isinstance(m, PreActBottleneck) for m in backbone.modules())

    assert bottlenecks(50) == 16 and bottlenecks(101) == 33


@pytest.mark.parametrize("width", [2, 4])
def test_width_multiplier_scales_every_layer(width: int) -> None:
    narrow = ResNetV2Config(**TINY).build(context())
    wide = ResNetV2Config(**TINY, width=width).build(context())
    scaled = [
        (out * width, in_ * width if in_ != 3 else 3, kh, kw) for out, in_, kh, kw in conv_shapes(narrow)
    ]
    assert conv_shapes(wide) == scaled
    assert wide.pooled_dim == width * narrow.pooled_dim
    assert wide.feature_dim == narrow.feature_dim == 32


def test_paper_size_matches_torchvision_resnet50_convs_and_published_size() -> None:
    """Same convolutions as torchvision's ResNet-50 (which also strides in the 3x3 conv), layer
    for layer; v2 only moves the batch norms. Trunk sizes as published (23.5M x1, ~375M x4)."""
    with torch.device("meta"):
        ours = ResNetV2Config().build(context(256))
        reference = torchvision.models.resnet50()
        wide = ResNetV2Config(width=4).build(context(256))
    assert ours.trunk[0][0].stride == (2, 2)  # 256 px: the 7x7 stride-2 stem
    assert conv_shapes(ours.trunk) == conv_shapes(reference)
    trunk_params = sum(p.numel() for p in ours.trunk.parameters())
    assert round(trunk_params / 1e6, 1) == 23.5
    assert round(sum(p.numel() for p in wide.trunk.parameters()) / 1e6) == 375
    assert ours.pooled_dim == 2048 and wide.pooled_dim == 8192 and ours.feature_dim == 4096


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    backbone = ResNetV2Config(**TINY).build(context())
    backbone(torch.randn(4, 3, 32, 32)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


def test_batch_norm_comes_from_the_context_factory() -> None:
    made: list[int] = []

    def counting_batch_norm(num_features: int, affine: bool = True) -> nn.Module:
        made.append(num_features)
        return nn.BatchNorm2d(num_features, affine=affine)

    ctx = BuildContext(resolution=32, channels=3, latent_dim=16, batch_norm=counting_batch_norm)
    backbone = ResNetV2Config(**TINY).build(ctx)
    assert len(made) == sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert len(made) == 3 * 16 + 1 + 5  # three per bottleneck, the final one, and the MLP's


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"depth": 34}, "$.encoder.depth"),
        ({"width": 3}, "$.encoder.width"),
        ({"mlp_layers": 3}, "$.encoder.mlp_layers"),
        ({"mlp_layers": 0}, "$.encoder.mlp_layers"),
        ({"base_width": 0}, "$.encoder.base_width"),
        ({"small_input": "yes"}, "$.encoder.small_input"),
    ],
)
def test_bad_config_values_are_recipe_errors(data: dict, key: str) -> None:
    with pytest.raises(RecipeError) as error:
        structure(data, ResNetV2Config, "$.encoder")
    assert error.value.problems[0].startswith(f"{key}: ")


def test_too_small_resolution_names_the_recipe_key() -> None:
    with pytest.raises(RecipeError, match=r"^\$\.data\.resolution: .*at least 16 px, got 8"):
        ResNetV2Config(**TINY).build(context(8))
    with pytest.raises(RecipeError, match=r"^\$\.data\.encoder_resolution: .*got 12"):
        ResNetV2Config(**TINY).build(context(32, encoder_resolution=12))
    assert ResNetV2Config(**TINY).build(context(8, encoder_resolution=16)).resolution == 16
