"""RevNet's 7x7 stem + max-pool with the memory-saving backward (ArgmaxStem): exact gradients while
keeping only the argmax positions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bifamily.context import BuildContext
from bifamily_resnet.argmax_stem import ArgmaxStem, _index_dtype
from bifamily_resnet.configs import RevNetConfig
from bifamily_resnet.layers import stem


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These tiny convolutions run fastest on one thread, and other tests may share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stems(channels: int = 4) -> tuple[nn.Sequential, ArgmaxStem]:
    torch.manual_seed(0)
    plain = stem(3, channels, small_input=False).double()
    argmax = ArgmaxStem(*stem(3, channels, small_input=False)).double()
    argmax.load_state_dict(plain.state_dict())
    return plain, argmax


def test_gradients_of_input_and_weight_pass_gradcheck() -> None:
    _, argmax = stems(channels=2)
    x = torch.randn(5, 3, 9, 7, dtype=torch.float64, requires_grad=True)  # 5: uneven batch chunks
    weight = argmax[0].weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w: functional_call(argmax, {"0.weight": w}, (x,)), (x, weight), fast_mode=True
    )


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_outputs_and_gradients_equal_the_plain_stem(batch: int) -> None:
    plain, argmax = stems()
    x = torch.randn(batch, 3, 21, 18, dtype=torch.float64)
    weights = torch.randn(batch, 4, 6, 5, dtype=torch.float64)
    results = []
    for module in (plain, argmax):
        inputs = x.clone().requires_grad_()
        out = module(inputs)
        (out * weights).sum().backward()
        results.append((out.detach(), inputs.grad, module[0].weight.grad))
    for expected, actual in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_overlapping_windows_sharing_a_maximum_add_their_gradients() -> None:
    """3x3 stride-2 windows (padding 1) on 8 px start at -1, 1, 3, 5: position 3 lies in two of
    them along each axis, so a single bright pixel there is the maximum of four windows. The other
    pixels are distinct and negative, so no window has a tie."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.ones_(conv.weight)
    argmax = ArgmaxStem(conv, nn.MaxPool2d(3, stride=2, padding=1))
    x = -torch.randperm(64, generator=torch.Generator().manual_seed(0)).float().add(1).view(1, 1, 8, 8)
    x[0, 0, 3, 3] = 1.0
    x.requires_grad_()
    argmax(x).sum().backward()
    assert x.grad[0, 0, 3, 3] == 4.0
    assert x.grad.sum() == 16.0  # each of the 4 x 4 windows routes its unit gradient once


def test_training_keeps_only_the_argmax_positions_in_the_narrowest_type() -> None:
    _, argmax = stems()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = argmax(x)
    out.sum().backward()
    activations = [t for t in saved if t is not x and t is not argmax[0].weight]
    assert [(t.dtype, t.shape) for t in activations] == [(torch.int16, out.shape)]


def test_index_type_holds_every_position_of_a_plane() -> None:
    assert _index_dtype(128 * 128) == torch.int16  # a 256 px input: the paper's encoder resolution
    assert _index_dtype(2**15) == torch.int16  # last position 32767
    assert _index_dtype(2**15 + 1) == torch.int32


def test_only_the_memory_saving_revnet_with_a_pooled_stem_uses_it() -> None:
    def root(reversible: bool, resolution: int) -> nn.Module:
        ctx = BuildContext(resolution=resolution, channels=3, latent_dim=8)
        config = RevNetConfig(base_width=4, mlp_width=8, reversible_backward=reversible)
        return config.build(ctx).trunk[0]

    assert isinstance(root(True, 128), ArgmaxStem)
    assert type(root(False, 128)) is nn.Sequential
    assert type(root(True, 32)) is nn.Sequential  # the 3x3 small-input stem has no max-pool


def test_rejects_a_convolution_it_cannot_differentiate() -> None:
    with pytest.raises(ValueError, match="bias-free"):
        ArgmaxStem(nn.Conv2d(3, 4, 7, stride=2, padding=3), nn.MaxPool2d(3, 2, 1))
