"""The RevNet memory claim, measured with bench/revnet_memory.py's own functions at a small size:
peak training memory of RevNet-50 at most 40% of the same network with stored activations."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

from bench import revnet_memory
from bifamily.context import BuildContext
from bifamily_resnet.configs import RevNetConfig


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield revnet_memory
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def measured(bench: ModuleType) -> dict[str, dict[str, int]]:
    # 96 px takes the 7x7 stem + max-pool, like the paper's 256 px inputs; memory ratios do not
    # depend on the width or the batch (the bench's 1/4-width, batch-32 run gives the same figures).
    ctx = BuildContext(resolution=96, channels=3, latent_dim=8)
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    config = RevNetConfig(base_width=8, mlp_width=8)
    cpu = torch.device("cpu")
    return {mode: bench.memory(bench.build_mode(mode, config, ctx, cpu), x) for mode in bench.MODES}


def test_peak_training_memory_is_at_most_40_percent_of_stored_activations(measured) -> None:
    assert measured["reversible"]["peak_bytes"] <= 0.40 * measured["stored"]["peak_bytes"]
    assert measured["reversible"]["saved_bytes"] <= 0.15 * measured["stored"]["saved_bytes"]


def test_both_the_reversible_stages_and_the_stem_contribute(measured) -> None:
    stages_only = measured["reversible_stages_only"]
    assert stages_only["saved_bytes"] <= 0.40 * measured["stored"]["saved_bytes"]
    assert measured["reversible"]["peak_bytes"] < 0.65 * stages_only["peak_bytes"]


def test_stages_only_mode_swaps_in_the_plain_stem(bench: ModuleType) -> None:
    ctx = BuildContext(resolution=96, channels=3, latent_dim=8)
    config = RevNetConfig(base_width=4, mlp_width=8)
    cpu = torch.device("cpu")
    models = {mode: bench.build_mode(mode, config, ctx, cpu) for mode in bench.MODES}
    assert [type(models[mode].trunk[0]).__name__ for mode in bench.MODES] == [
        "Sequential",
        "ArgmaxStem",
        "Sequential",
    ]
    states = [models[mode].state_dict() for mode in bench.MODES]
    for name, tensor in states[0].items():
        assert all(torch.equal(state[name], tensor) for state in states[1:]), name
