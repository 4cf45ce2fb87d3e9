"""python -m bench.gpu_check [--output JSON] [--batches 256 128 ...] [--skip-quickstart]

Is this GPU machine ready for bifamily? One command, at most about 10 minutes on one GPU:

1. every CUDA path the project has, each run once and recorded as ok or its error, with its time:
   a built recipe placed on the GPU and trained a step; G converted to nn.SyncBatchNorm and trained in
   a one-rank process group; fp16 with the loss scaler; bf16 autocast; torch.compile; pinned batches
   with non-blocking copies; NCCL initialised and an all-reduce in the one-rank group;
2. a bigbigan_highres training step at the largest batch that fits (a descending list of batches, each
   in a child process of its own so an out-of-memory error costs only that child): images/s and peak
   memory;
3. the quick-start recipe's wall time on the GPU (``bifamily run recipes/quickstart.toml --set
   run.device="cuda"`` in a subprocess).

Prints a table and writes bench/results/gpu_check.json. Without a CUDA GPU it refuses with one line
and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from bench import result_file
from bench.suite.configs import MODELS
from bench.suite.isolation import MeasurementFailed, isolated, preload
from bench.suite.training import load_recipe, measure_steps, warm_trainer
from bifamily.data import BatchStream
from bifamily.session import prepare

REPO = Path(__file__).resolve().parents[1]

OUTPUT = REPO / "bench" / "results" / "gpu_check.json"
QUICKSTART = "recipes/quickstart.toml"
HIGHRES = next(spec for spec in MODELS if spec.name == "bigbigan_highres")
BATCHES = (256, 128, 64, 32, 16, 8, 4)
QUICKSTART_TIMEOUT_S = 300
# The paths' recipe: the quick-start model, a few steps, on the GPU.
CUDA_RUN = ('run.device="cuda"', 'train.precision="fp32"')


def check(name: str, fn: Callable[[], str], rows: list[dict[str, Any]]) -> None:
    """Run one path: a row with ok or the error (its last line; the traceback in the JSON) and the time."""
    start = time.perf_counter()
    try:
        detail, ok, error = fn(), True, None
    except Exception as exc:  # the point is to record every failure and go on
        detail, ok, error = "", False, "".join(traceback.format_exception(exc))
        with contextlib.suppress(Exception):  # a broken CUDA may refuse this too
            torch.cuda.empty_cache()
    rows.append({"path": name, "ok": ok, "seconds": round(time.perf_counter() - start, 2), "detail": detail, "error": error})


def trained_steps(*overrides: str, steps: int = 2) -> str:
    """``steps`` training steps of the quick-start recipe with ``overrides`` on the GPU."""
    recipe = load_recipe(QUICKSTART, (*CUDA_RUN, *overrides))
    with warm_trainer(recipe, steps) as trainer:
        torch.cuda.synchronize()
        finite = all(torch.isfinite(p).all() for p in trainer.model.generator.parameters())
        if not finite:
            raise RuntimeError(f"non-finite generator weights after {steps} steps")
        return f"{steps} steps, precision {trainer.precision.name}"


def placement() -> str:
    prepared = prepare(load_recipe(QUICKSTART, CUDA_RUN))
    devices = {p.device.type for module in prepared.model.modules().values() for p in module.parameters()}
    if devices != {"cuda"}:
        raise RuntimeError(f"parameters on {sorted(devices)}, expected cuda only")
    return trained_steps(steps=1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def join_one_rank_group() -> str:
    """NCCL initialised in a one-rank group, and an all-reduce through it."""
    torch.cuda.set_device(0)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl", rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
    value = torch.full((4,), 3.0, device="cuda")
    dist.all_reduce(value)
    torch.cuda.synchronize()
    if not torch.equal(value.cpu(), torch.full((4,), 3.0)):
        raise RuntimeError(f"all-reduce over one rank changed the tensor: {value.tolist()}")
    return f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"


def sync_batch_norm() -> str:
    """The quick-start generator with nn.SyncBatchNorm (as a multi-GPU run builds it), a training
    forward and backward in the one-rank group."""
    if not dist.is_initialized():
        raise RuntimeError("no process group (the NCCL check failed)")
    prepared = prepare(load_recipe(QUICKSTART, CUDA_RUN))
    generator = nn.SyncBatchNorm.convert_sync_batchnorm(prepared.model.generator).train()
    converted = sum(isinstance(m, nn.SyncBatchNorm) for m in generator.modules())
    if not converted:
        raise RuntimeError("the generator has no batch norm to convert")
    z = prepared.model.prior.sample(8, device="cuda")
    generator(z).square().mean().backward()
    torch.cuda.synchronize()
    return f"{converted} SyncBatchNorm layers"


def pinned_copies() -> str:
    """The project's batch stream with pin_memory, each batch copied with non_blocking=True."""
    data = prepare(load_recipe(QUICKSTART, CUDA_RUN)).train_data
    stream = iter(BatchStream(data, 64, seed=0, pin_memory=True))
    for _ in range(3):
        images, _labels = next(stream)
        if not images.is_pinned():
            raise RuntimeError("the batch stream gave unpinned memory")
        on_gpu = images.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        if not torch.equal(on_gpu.cpu(), images):
            raise RuntimeError("a non-blocking copy differs from its source")
    return "3 batches of 64"


def cuda_paths() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    check("recipe built and trained on cuda", placement, rows)
    check("NCCL init + all-reduce (1 rank)", join_one_rank_group, rows)
    check("nn.SyncBatchNorm (1-rank group)", sync_batch_norm, rows)
    check("fp16 + gradient scaler", lambda: trained_steps('train.precision="fp16"'), rows)
    check("bf16 autocast", lambda: trained_steps('train.precision="bf16"'), rows)
    check("torch.compile on cuda", lambda: trained_steps("train.compile=true", steps=3), rows)
    check("pinned memory, non-blocking copies", pinned_copies, rows)
    if dist.is_initialized():
        dist.destroy_process_group()
    torch.cuda.empty_cache()
    return rows


def largest_batch(batches: tuple[int, ...]) -> dict[str, Any]:
    """The bigbigan_highres step at the largest of ``batches`` that fits, each tried in a child."""
    tried: list[dict[str, Any]] = []
    for batch in batches:
        overrides = (*HIGHRES.overrides, HIGHRES.step_data, f"train.batch_size={batch}", "train.accumulation=1",
                     'run.device="cuda"', 'train.precision="auto"')
        recipe = load_recipe(HIGHRES.recipe, overrides)
        start = time.perf_counter()
        try:
            row = isolated(measure_steps, recipe, 2, 3, "inductor", False).value
        except MeasurementFailed as failure:
            out_of_memory = "OutOfMemoryError" in str(failure) or "out of memory" in str(failure)
            tried.append({"batch_size": batch, "fits": False, "error": str(failure).strip().splitlines()[-1]})
            if out_of_memory:
                continue
            break
        tried.append({"batch_size": batch, "fits": True, "seconds": round(time.perf_counter() - start, 1)})
        return {
            "recipe": HIGHRES.recipe,
            "overrides": list(overrides),
            "batch_size": batch,
            "step_seconds": row["step_seconds"],
            "images_per_s": row["images_per_s"],
            "batch_images_per_s": row["batch_images_per_s"],
            "peak_memory_bytes": row["cuda_peak_allocated_bytes"],
            "tried": tried,
        }
    return {"recipe": HIGHRES.recipe, "batch_size": None, "tried": tried}


def quickstart_wall_time() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "bifamily", "run", QUICKSTART, "--set", 'run.device="cuda"', "--out", f"{out}/run"]
        start = time.perf_counter()
        try:
            completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=QUICKSTART_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"command": " ".join(command), "ok": False, "error": f"not finished in {QUICKSTART_TIMEOUT_S} s"}
        seconds = time.perf_counter() - start
    result = {"command": " ".join(command), "ok": completed.returncode == 0, "seconds": round(seconds, 1)}
    if completed.returncode != 0:
        result["error"] = completed.stderr.strip().splitlines()[-1:] or [f"exit code {completed.returncode}"]
    return result


def table(rows: list[dict[str, Any]], highres: dict[str, Any], quickstart: dict[str, Any] | None) -> str:
    lines = [f"{'path':40}{'result':>8}{'seconds':>9}"]
    for row in rows:
        verdict = "ok" if row["ok"] else "ERROR"
        lines.append(f"{row['path']:40}{verdict:>8}{row['seconds']:9.1f}")
        if not row["ok"]:
            lines.append(f"    {row['error'].strip().splitlines()[-1]}")
    if highres.get("batch_size"):
        lines.append(
            f"\nbigbigan_highres: largest batch {highres['batch_size']}, {highres['images_per_s']:.1f} images/s, "
            f"peak {highres['peak_memory_bytes'] / 2**30:.1f} GiB"
        )
    else:
        lines.append(f"\nbigbigan_highres: no batch fitted: {highres['tried'][-1:]}")
    if quickstart is not None:
        outcome = f"{quickstart['seconds']:.0f} s" if quickstart["ok"] else f"failed: {quickstart.get('error')}"
        lines.append(f"quickstart on the GPU: {outcome}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[2])
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"JSON result (default {OUTPUT.relative_to(REPO)})")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="bigbigan_highres batches to try, largest first")
    parser.add_argument("--skip-quickstart", action="store_true", help="leave out the quick-start's wall time")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): run it on a machine with one", file=sys.stderr)
        return 2
    preload(["bench.suite.training"])
    start = time.perf_counter()
    rows = cuda_paths()
    highres = largest_batch(tuple(sorted(args.batches, reverse=True)))
    quickstart = None if args.skip_quickstart else quickstart_wall_time()
    print(table(rows, highres, quickstart))
    result_file.write(args.output, {
        "command": " ".join(["python -m bench.gpu_check", *(argv if argv is not None else sys.argv[1:])]),
        "gpu": torch.cuda.get_device_name(0),
        "torch_cuda": torch.version.cuda,
        "paths": rows,
        "bigbigan_highres": highres,
        "quickstart": quickstart,
        "seconds": round(time.perf_counter() - start, 1),
    })
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
