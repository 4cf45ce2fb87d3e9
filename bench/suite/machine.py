"""The machine: what it is, and its practical compute limits measured with torch's own kernels.

The practical limit of a precision is the best throughput torch reaches on a large 3x3 convolution
and on a large square matmul in that dtype (NCHW and channels-last convolutions both tried, the best
kept). Model FLOP/s are reported as a fraction of both: on CPUs with AMX, bf16 matmuls run far ahead
of bf16 convolutions, and in fp32 the two are close, so neither alone is "the" peak.

A precision the device cannot run in hardware is not measured at all: emulated bf16 kernels at these
sizes take many minutes on a CPU without AMX or AVX512-BF16 and describe nothing a run would use
(``train.precision = "auto"`` picks fp32 there).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from bifamily.distributed import resolve_device
from bifamily.precision import native_bf16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@attrs.frozen
class LimitShapes:
    """Problem sizes of the limit kernels and how often each is timed (best of ``repeats``)."""

    conv_batch: int
    conv_channels: int
    conv_side: int
    matmul_size: int
    repeats: int


FULL_SHAPES = LimitShapes(conv_batch=32, conv_channels=256, conv_side=32, matmul_size=4096, repeats=8)
QUICK_SHAPES = LimitShapes(conv_batch=4, conv_channels=64, conv_side=16, matmul_size=512, repeats=2)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Any, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: picks the kernel, allocates workspace
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def conv_gflops(dtype: torch.dtype, device: torch.device, shapes: LimitShapes) -> float:
    """Best GFLOP/s of a same-padded 3x3 convolution, C -> C channels, over both memory layouts."""
    n, c, side = shapes.conv_batch, shapes.conv_channels, shapes.conv_side
    x = torch.randn(n, c, side, side, device=device, dtype=dtype)
    weight = torch.randn(c, c, 3, 3, device=device, dtype=dtype)
    flops = 2 * n * c * c * 9 * side * side
    best = float("inf")
    for layout in (torch.contiguous_format, torch.channels_last):
        xl, wl = x.contiguous(memory_format=layout), weight.contiguous(memory_format=layout)
        best = min(best, _best_seconds(lambda: torch.conv2d(xl, wl, padding=1), device, shapes.repeats))
    return flops / best / 1e9


@torch.inference_mode()
def matmul_gflops(dtype: torch.dtype, device: torch.device, shapes: LimitShapes) -> float:
    size = shapes.matmul_size
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / _best_seconds(lambda: a @ b, device, shapes.repeats) / 1e9


def skipped_precisions(device: torch.device) -> dict[str, str]:
    """The precisions ``device`` would only emulate, each with the reason it is skipped."""
    if native_bf16(device):
        return {}
    return {"bf16": f"skipped: no bf16 arithmetic in hardware on {device} (emulated kernels are slow and measure nothing a run uses)"}


def practical_limits(device: torch.device, shapes: LimitShapes, precisions: list[str]) -> dict[str, dict[str, float]]:
    """``{"fp32": {"conv_gflops", "matmul_gflops"}, "bf16": {...}}`` on ``device``, for ``precisions``."""
    return {
        name: {"conv_gflops": conv_gflops(DTYPES[name], device, shapes), "matmul_gflops": matmul_gflops(DTYPES[name], device, shapes)}
        for name in precisions
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module reports."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text(encoding="utf-8").splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def describe(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on. Call only in a child process: asking about CUDA initialises it."""
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def measure_machine(shapes: LimitShapes) -> dict[str, Any]:
    """The machine's description, the precisions skipped on it and the practical limits of the others,
    on the device a recipe's ``run.device = "auto"`` picks (call in a child process)."""
    device = resolve_device("auto")
    skipped = skipped_precisions(device)
    native = [name for name in DTYPES if name not in skipped]
    return {"machine": describe(device), "skipped_precisions": skipped, "limits": practical_limits(device, shapes, native)}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine makes every timing slower."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None
