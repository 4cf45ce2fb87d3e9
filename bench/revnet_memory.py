"""RevNet-50: training memory and step time with its memory-saving backward vs stored activations.

    python -m bench.revnet_memory                    # batch 32 at 128x128, RevNet-50 x1 at 1/4 width
    python -m bench.revnet_memory --base-width 64    # paper width (slow on a CPU; the default on CUDA)

Three builds of the same weights (same seed) run forward + backward of the RevNet-50 trunk and its
global average pool (``features``; the residual MLP head after it is the same in every mode and keeps
only (N, 4096) vectors, but its 4096 x 4096 weight-gradient temporaries, 64 MiB each, would swamp
every peak) on the same batch in training mode, with the parameter gradients already allocated, so
that the figures are activation memory:

- stored: ``reversible_backward = false``, ordinary autograd (the equivalent non-reversible network);
- reversible: ``reversible_backward = true`` as shipped: the reversible stages recompute their
  activations from their outputs and the (non-invertible) stem keeps only its max-pool's argmax
  positions;
- reversible_stages_only: the same, but with the stem under ordinary autograd, to show what each of
  the two contributes.

Per mode:

- saved_bytes: bytes autograd keeps between forward and backward (a ``saved_tensors_hooks``
  census of unique storages, excluding parameters, buffers and the input batch; the custom
  backward functions save through the same hooks);
- peak_bytes: peak of live tensor memory above the start of the step, during forward + backward
  (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the allocation/free events of the PyTorch
  profiler, accumulated in time order -- tracemalloc cannot see torch's allocator). Memory does not
  depend on machine load;
- step_seconds / step_cpu_seconds: median wall / process CPU time of forward + backward over
  ``--steps`` steps (no profiler), the modes alternating. Times do depend on load: on a shared
  machine compare the ratios, which are taken from interleaved steps.

Also counts parameters of the paper-size encoders (256x256 input, MLP width 4096), built on the
meta device so nothing is allocated. Prints a summary and writes bench/results/revnet_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.profiler import ProfilerActivity, profile

from bifamily.context import BuildContext
from bifamily_resnet.argmax_stem import ArgmaxStem
from bifamily_resnet.configs import ResNetV2Config, RevNetConfig

RESULTS = Path(__file__).parent / "results" / "revnet_memory.json"


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward during one forward."""
    preexisting = {_storage_key(t) for t in [*model.parameters(), *model.buffers(), x]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in preexisting:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.features(x).square().mean()
    loss.backward()
    return sum(saved.values())


def _step(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.features(x).square().mean().backward()


def peak_step_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak live tensor bytes above the level at the start of one forward + backward."""
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        _step(model, x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(model, x)
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def _timed_step(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(wall, process CPU) seconds of one forward + backward."""
    model.zero_grad(set_to_none=False)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    _step(model, x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def step_times(
    models: dict[str, torch.nn.Module], x: torch.Tensor, steps: int
) -> dict[str, dict[str, float]]:
    """Median wall and CPU time per model. The models take turns, so a change in machine load
    during the run affects both alike; CPU time is the steadier figure on a shared machine."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for _ in range(steps):
        for name, model in models.items():
            times[name].append(_timed_step(model, x))
    return {
        name: {
            "step_seconds": statistics.median(wall for wall, _ in values),
            "step_cpu_seconds": statistics.median(cpu for _, cpu in values),
        }
        for name, values in times.items()
    }


def memory(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    _step(model, x)  # warm-up; also allocates every .grad, so the figures below exclude them
    model.zero_grad(set_to_none=False)
    saved = saved_activation_bytes(model, x)
    model.zero_grad(set_to_none=False)
    return {"saved_bytes": saved, "peak_bytes": peak_step_bytes(model, x)}


MODES = ("stored", "reversible", "reversible_stages_only")


def build_mode(
    mode: str, config: RevNetConfig, ctx: BuildContext, device: torch.device
) -> torch.nn.Module:
    torch.manual_seed(0)  # every mode gets the same weights
    model = attrs.evolve(config, reversible_backward=mode != "stored").build(ctx)
    if mode == "reversible_stages_only" and isinstance(model.trunk[0], ArgmaxStem):
        model.trunk[0] = torch.nn.Sequential(*model.trunk[0])  # same modules, ordinary autograd
    return model.to(device).train()


def _millions(config: Any, ctx: BuildContext) -> dict[str, float]:
    with torch.device("meta"):
        model = config.build(ctx)
    trunk = sum(p.numel() for p in model.trunk.parameters())
    head = sum(p.numel() for p in model.head.parameters())
    return {
        "trunk_M": round(trunk / 1e6, 2),
        "mlp_head_M": round(head / 1e6, 2),
        "pooled_dim": model.pooled_dim,
    }


def paper_size_parameter_counts() -> dict[str, dict[str, float]]:
    ctx = BuildContext(resolution=128, encoder_resolution=256, channels=3, latent_dim=120)
    configs = {
        **{f"resnet_v2_50_x{w}": ResNetV2Config(width=w) for w in (1, 2, 4)},
        "resnet_v2_101_x1": ResNetV2Config(depth=101),
        **{f"revnet_50_x{w}": RevNetConfig(width=w) for w in (1, 2, 4)},
    }
    return {name: _millions(config, ctx) for name, config in configs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument(
        "--base-width", type=int, default=None, help="64: paper width (default on CUDA; 16 on CPU)"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if args.base_width is None:
        args.base_width = 64 if device.type == "cuda" else 16
    ctx = BuildContext(resolution=args.resolution, channels=3, latent_dim=120)
    side = args.resolution
    x = torch.randn(args.batch, 3, side, side, generator=torch.Generator().manual_seed(1)).to(device)
    shape = dict(width=args.width, base_width=args.base_width, mlp_width=64)  # head unused
    models = {mode: build_mode(mode, RevNetConfig(**shape), ctx, device) for mode in MODES}
    rows = {mode: memory(model, x) for mode, model in models.items()}
    for mode, seconds in step_times(models, x, args.steps).items():
        rows[mode].update(seconds)
    stored = rows["stored"]
    result = {
        "setup": {
            "model": f"RevNet-50 x{args.width} trunk + average pool (base_width {args.base_width})",
            "arguments": sys.argv[1:],
            "batch": args.batch,
            "resolution": args.resolution,
            "device": str(device),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0],
            "torch": torch.__version__,
            "timed_steps": args.steps,
        },
        **rows,
        **{
            f"ratio_{mode}_to_stored": {key: rows[mode][key] / stored[key] for key in stored}
            for mode in MODES[1:]
        },
        "paper_size_parameter_counts": paper_size_parameter_counts(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    mib = 2**20
    print(result["setup"]["model"], f"batch {args.batch} at {args.resolution}px on {device}")
    print(f"{'':24}{'saved MiB':>12}{'peak MiB':>12}{'step s':>10}{'step CPU s':>12}")
    for mode in MODES:
        row = rows[mode]
        print(
            f"{mode:24}{row['saved_bytes'] / mib:12.1f}{row['peak_bytes'] / mib:12.1f}"
            f"{row['step_seconds']:10.3f}{row['step_cpu_seconds']:12.3f}"
        )
    for mode in MODES[1:]:
        r = result[f"ratio_{mode}_to_stored"]
        print(
            f"{'ratio ' + mode:24}{r['saved_bytes']:12.2f}{r['peak_bytes']:12.2f}"
            f"{r['step_seconds']:10.2f}{r['step_cpu_seconds']:12.2f}"
        )
    print("parameters (millions) at 256px, mlp_width 4096:")
    for name, counts in result["paper_size_parameter_counts"].items():
        print(
            f"  {name:18} trunk {counts['trunk_M']:8.2f}  mlp head {counts['mlp_head_M']:7.2f}"
            f"  pooled {counts['pooled_dim']}"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
