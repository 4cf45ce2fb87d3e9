"""``bench/conv_ceiling.py``: the recorder sees exactly what torch's flop counter counts, and a tiny
recipe end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench import conv_ceiling

REPO = Path(__file__).resolve().parents[2]
TINY = ["train.batch_size=8", "generator.ch=8", "encoder.ch=8", "discriminator.ch=8", "prior.dim=16"]



def train_twice(model: nn.Module, x: torch.Tensor) -> None:
    for _ in range(2):
        model(x).square().mean().backward()


def test_replayed_operations_count_the_same_flops_as_the_flop_counter():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)
    ).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        train_twice(model, x)
    with conv_ceiling.Recorder() as recorder:
        train_twice(model, x)
    calls = list(recorder.calls.values())
    names = sorted(call.func.__name__ for call in calls)
    # two convolutions forward and backward and the linear layer's addmm and its two gradient mm's:
    # every one run twice, and nothing else (no ReLU, no reductions)
    assert names == sorted(["convolution.default"] * 2 + ["convolution_backward.default"] * 2 + ["addmm.default"] + ["mm.default"] * 2)
    assert {call.count for call in calls} == {2}
    result = conv_ceiling.kernel_ceiling(calls, repeats=1)
    assert result["counted_flops"] == counter.get_total_flops()
    assert result["distinct_ops"] == 7
    assert result["ceiling_gflops"] == result["counted_flops"] / result["isolated_kernel_seconds"] / 1e9
    assert abs(sum(row["share_of_time"] for row in result["slowest_ops"]) - 1.0) < 1e-9


def test_stand_ins_keep_the_recorded_layout():
    recorded = torch.empty(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).to(torch.bfloat16)
    stand_in = conv_ceiling._stand_in(conv_ceiling._spec(recorded))
    assert stand_in.shape == recorded.shape and stand_in.stride() == recorded.stride()
    assert stand_in.dtype == torch.bfloat16


def test_the_quickstart_at_tiny_widths_end_to_end(tmp_path):
    command = [
        sys.executable, "-m", "bench.conv_ceiling", "--recipe", "recipes/quickstart.toml", "--modes", "fp32",
        "--warmup", "0", "--steps", "1", "--repeats", "1", "--output", str(tmp_path / "out.json"), *[f"--set={item}" for item in TINY],
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    fp32 = report["modes"]["fp32"]
    assert report["overrides"] == TINY
    assert fp32["counted_flops"] > 0 and fp32["conv_limit_gflops"] > 0
    assert fp32["ceiling_fraction_of_conv_limit"] == fp32["ceiling_gflops"] / fp32["conv_limit_gflops"]
    assert fp32["achieved_gflops"] == fp32["counted_flops"] / fp32["step_seconds"] / 1e9
    assert "fp32: counted" in result.stdout
