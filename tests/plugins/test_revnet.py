"""RevNet encoder backbone: the reversible backward is exact, keeps batch-norm statistics right and
really stores less than ordinary autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bifamily.config import structure
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily_resnet.configs import RevNetConfig
from bifamily_resnet.layers import preactivated_bottleneck
from bifamily_resnet.reversible import AdditiveCoupling, ReversibleStage

TINY = dict(base_width=8, mlp_width=32)
CTX = BuildContext(resolution=32, channels=3, latent_dim=16)
# Both stems at 32 px: the 3x3 conv (the default there) and the 7x7 conv + max-pool with its own
# memory-saving backward (ArgmaxStem).
STEMS = pytest.mark.parametrize("small_input", [True, False], ids=["3x3 stem", "7x7 stem + max-pool"])


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny networks run fastest on one thread, and other tests may share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(reversible: bool, dtype: torch.dtype = torch.float64, **overrides) -> nn.Module:
    torch.manual_seed(0)  # same weights in both modes
    config = RevNetConfig(**{**TINY, **overrides}, reversible_backward=reversible)
    return config.build(CTX).to(dtype).train()


def batch(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=generator, dtype=dtype)
    weights = torch.randn(4, 32, generator=generator, dtype=dtype)
    return x, weights


def gradients(model: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_()
    (model(x) * weights).sum().backward()
    return {"input": x.grad, **{name: p.grad for name, p in model.named_parameters()}}


@STEMS
def test_reversible_gradients_equal_stored_gradients(small_input: bool) -> None:
    x, weights = batch()
    reversible = gradients(build(True, small_input=small_input), x, weights)
    stored = gradients(build(False, small_input=small_input), x, weights)
    assert reversible.keys() == stored.keys()
    for name, grad in stored.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(reversible[name], grad, rtol=1e-9, atol=1e-9 * grad.abs().max())


@STEMS
def test_running_statistics_after_a_training_step_are_identical(small_input: bool) -> None:
    x, weights = batch()
    models = {mode: build(mode, small_input=small_input) for mode in (True, False)}
    for model in models.values():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        (model(x) * weights).sum().backward()
        optimizer.step()
    reversible, stored = (dict(models[mode].named_buffers()) for mode in (True, False))
    assert reversible.keys() == stored.keys()
    for name, buffer in stored.items():
        assert torch.equal(reversible[name], buffer), name
        if name.endswith("num_batches_tracked"):
            assert buffer.item() == 1, "the recomputation must not count the batch again"
    for (name, p_rev), p_stored in zip(models[True].named_parameters(), models[False].parameters()):
        torch.testing.assert_close(p_rev, p_stored, rtol=1e-10, atol=1e-12, msg=name)


def test_reversible_training_stores_a_fraction_of_the_activations() -> None:
    def saved_bytes(model: nn.Module) -> int:
        x, weights = batch(torch.float32)
        owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), x]}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.untyped_storage().data_ptr() not in owned:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = (model(x) * weights).sum()
        loss.backward()
        return sum(saved.values())

    # At 32 px the 3x3 stem stores only the image, so the couplings' activations dominate.
    assert saved_bytes(build(True, torch.float32)) < 0.25 * saved_bytes(build(False, torch.float32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stage_inputs_are_reconstructed_from_outputs(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    couplings = [AdditiveCoupling(preactivated_bottleneck(16, 4, nn.BatchNorm2d)) for _ in range(6)]
    stage = ReversibleStage(couplings, recompute=True).to(dtype)
    x = torch.randn(4, 32, 8, 8, dtype=dtype)
    with torch.no_grad():
        y = stage(x)
    grad = torch.zeros_like(y)
    for coupling in reversed(couplings):
        y, grad, _ = coupling.backward_step(y, grad)
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(y, x, rtol=tolerance, atol=tolerance)


def test_two_couplings_form_a_revnet_block() -> None:
    """(x1, x2) -> (y1, y2) with y1 = x1 + F(x2), y2 = x2 + G(y1) (Gomez et al. 2017)."""
    torch.manual_seed(0)
    f, g = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
    x1, x2 = torch.randn(2, 2, 5, 5), torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        out = AdditiveCoupling(g)(AdditiveCoupling(f)(torch.cat([x1, x2], dim=1)))
        y1 = x1 + f(x2)
        torch.testing.assert_close(out, torch.cat([y1, x2 + g(y1)], dim=1))


@STEMS
def test_bfloat16_autocast_recomputes_under_the_same_autocast(small_input: bool) -> None:
    x, weights = batch(torch.float32)
    grads = {}
    for mode in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            grads[mode] = gradients(build(mode, torch.float32, small_input=small_input), x, weights)
    # The 7x7 stem's backward convolves in bfloat16 too, but in batch chunks and with its own
    # max-pool scatter, so its two gradients round differently: they agree to bfloat16 precision.
    stem_gradients = set() if small_input else {"input", "trunk.0.0.weight"}
    for name, grad in grads[False].items():
        if name in stem_gradients:
            torch.testing.assert_close(grads[True][name], grad, rtol=0, atol=2e-2 * grad.abs().max())
        else:
            # the branches recompute the very same bfloat16 values; only the float32 stream rounds
            tolerance = dict(rtol=1e-4, atol=1e-5 * grad.abs().max())
            torch.testing.assert_close(grads[True][name], grad, **tolerance)


@STEMS
def test_eval_and_no_grad_forward_match_the_stored_network(small_input: bool) -> None:
    x, _ = batch()
    reversible = build(True, small_input=small_input).eval()
    stored = build(False, small_input=small_input).eval()
    expected = stored(x)
    torch.testing.assert_close(reversible(x), expected, rtol=0, atol=0)  # through the autograd function
    with torch.no_grad():
        torch.testing.assert_close(reversible(x), expected, rtol=0, atol=0)  # plain loop, no graph


@pytest.mark.parametrize(("resolution", "trunk_side"), [(32, 4), (64, 8), (128, 4)])
def test_shapes_at_each_resolution(resolution: int, trunk_side: int) -> None:
    backbone = RevNetConfig(**TINY).build(BuildContext(resolution=resolution, channels=3, latent_dim=16))
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        assert backbone.trunk(x).shape == (2, 256, trunk_side, trunk_side)
        assert backbone.features(x).shape == (2, 256) and backbone.pooled_dim == 256
        assert backbone(x).shape == (2, 32) and backbone.feature_dim == 32


def test_layout_matches_resnet50_layer_count_and_widths() -> None:
    backbone = build(True, width=2)
    stages = [m for m in backbone.trunk if isinstance(m, ReversibleStage)]
    assert [len(stage.couplings) for stage in stages] == [3, 4, 6, 3]
    convs = [m for m in backbone.trunk.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 3 * 16  # stem + three per coupling, as ResNet-50's stem + bottlenecks
    assert convs[0].out_channels == 4 * 8 * 2
    first_residual = stages[0].couplings[0].residual
    assert first_residual[0].num_features == 32 and first_residual[2][0].out_channels == 8
    assert backbone.pooled_dim == 2 * 256


def test_odd_base_width_and_small_resolution_are_recipe_errors() -> None:
    with pytest.raises(RecipeError, match=r"^\$\.encoder\.base_width: must be an even number"):
        structure({"base_width": 7}, RevNetConfig, "$.encoder")
    with pytest.raises(RecipeError, match=r"^\$\.encoder\.depth: "):
        structure({"depth": 152}, RevNetConfig, "$.encoder")
    with pytest.raises(RecipeError, match=r"^\$\.data\.resolution: the revnet encoder .* got 15"):
        RevNetConfig(**TINY).build(BuildContext(resolution=15, channels=3, latent_dim=16))
