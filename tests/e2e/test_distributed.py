"""Distributed training on CPU with gloo: 2 ranks equal 1 rank, checkpoints move between world sizes.

The equivalence runs use the quickstart's DCGAN G and E, whose batch norm becomes cross-replica on
2 ranks, and a D without dropout: dropout masks come from each rank's private stream, the one draw
that legitimately differs between world sizes. They also raise Adam's eps to 1e-6: Adam scales every
gradient element to about +-lr, so a float-rounding difference in a gradient element of ~1e-9 (a
summation order changed by the split) would otherwise move that element by ~lr/2 in one step.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from bifamily import preflight, session
from bifamily.build import make_context
from bifamily.cli import main
from bifamily.data import BatchLayout
from bifamily.interfaces import Posterior
from bifamily.spectral_norm import spectral_norm_in_fp32
from bifamily.step_modules import reparameterised

from tests.helpers.distributed_ranks import BN_BIAS, BN_WEIGHT, run_rank
from tests.helpers.processes import child_pids

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "recipes" / "quickstart.toml")
TINY = [
    "--set", "train.batch_size=8", "--set", "generator.ch=8", "--set", "encoder.ch=8",
    "--set", "prior.dim=16", "--set", "discriminator.ch=8", "--set", "discriminator.z_width=32",
    "--set", "discriminator.joint_width=32", "--set", "discriminator.dropout=0.0",
    "--set", 'eval.report=""', "--set", "run.log_every=2", "--set", "run.checkpoint_every=2",
    "--set", "run.sample_every=100", "--set", "optim.eps=1e-6",
    # Equivalence is exact only in fp32 and one memory layout; the quickstart picks bf16 where it can.
    "--set", 'train.precision="fp32"', "--set", "train.channels_last=false",
    # A sampled posterior, so the posterior-noise streams are part of what must match.
    "--set", 'posterior.kind="gaussian"',
]
ENV = {**os.environ, "BIFAMILY_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}


# -- helpers ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_here(*args: str) -> None:
    """One rank, in this process."""
    result = CliRunner().invoke(main, ["run", QUICKSTART, *TINY, "--no-progress", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def run_ranks(*command: str) -> None:
    done = subprocess.run([sys.executable, *command], env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr


def snapshot(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoints" / f"step-{step:08d}" / "snapshot.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


# -- cross-replica batch norm -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank gloo job (torch.multiprocessing.spawn) whose ranks run the checks of
    tests/helpers/distributed_ranks.py; returns the input and what each rank saw."""
    out = tmp_path_factory.mktemp("ranks")
    torch.manual_seed(0)
    x = torch.randn(8, 4, 3, 3) * 3 + 100  # a large mean: the statistics must not cancel badly
    upstream = torch.randn(8, 4, 3, 3)
    mp.spawn(run_rank, args=(free_port(), x, upstream, out), nprocs=2)
    return x, upstream, [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_all_reduce_batch_norm_equals_one_batch_norm_over_the_combined_batch(two_ranks):
    x, upstream, ranks = two_ranks
    ranks = [rank["batch_norm"] for rank in ranks]
    reference = nn.BatchNorm2d(4)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(BN_WEIGHT))
        reference.bias.copy_(torch.tensor(BN_BIAS))
    whole = x.clone().requires_grad_(True)
    y = reference(whole)
    (y * upstream).sum().backward()
    reference(x * 2)

    close = dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), **close)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), whole.grad, **close)
    # Each rank's parameter gradient is its rows' share (DDP then averages the shares).
    torch.testing.assert_close(ranks[0]["dw"] + ranks[1]["dw"], reference.weight.grad, **close)
    torch.testing.assert_close(ranks[0]["db"] + ranks[1]["db"], reference.bias.grad, **close)
    for rank in ranks:
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(rank["state"][name], value, rtol=1e-5, atol=1e-4, msg=name)
    torch.testing.assert_close(ranks[0]["eval"], reference.eval()(x).detach(), **close)


def test_world_averages_and_lets_rank_zero_decide(two_ranks):
    _, _, ranks = two_ranks
    for rank in ranks:
        world = rank["world"]
        assert world["averaged"] == {"loss": 1.5, "other": 2.0}
        assert world["refused"] == ["--resume: nothing to resume"]  # raised on both ranks, not a hang
        assert world["decided"] == "chosen-by-rank-0"


# -- pieces -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size, accumulation", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1)])
def test_batch_layout_splits_every_global_batch_the_same_way(world_size, accumulation):
    batch = torch.arange(16)
    layouts = [BatchLayout(16, accumulation, world_size, rank) for rank in range(world_size)]
    assert sorted(row for layout in layouts for row in layout.rows()) == list(range(16))
    for layout in layouts:
        local = layout.local(batch)
        assert local.shape == (accumulation, layout.micro_batch)
        assert local.flatten().tolist() == layout.rows()
    # Micro-step j covers global rows [j * 16 / accumulation, (j + 1) * 16 / accumulation) on any world size.
    for j in range(accumulation):
        covered = sorted(row for layout in layouts for row in layout.local(batch)[j].tolist())
        assert covered == list(range(j * 16 // accumulation, (j + 1) * 16 // accumulation))


def test_given_noise_reproduces_posterior_sample():
    mean, scale = torch.randn(4, 3), torch.rand(4, 3)
    for posterior in (Posterior(mean, scale), Posterior(mean, scale, squash=True), Posterior(mean)):
        drawn = posterior.sample(generator=torch.Generator().manual_seed(5))
        noise = torch.randn((4, 3), generator=torch.Generator().manual_seed(5))
        assert torch.equal(reparameterised(posterior, noise), drawn)


def test_spectral_norm_runs_in_fp32_under_autocast_with_the_same_state_dict():
    layer = nn.utils.parametrizations.spectral_norm(nn.Linear(16, 8))
    keys = set(layer.state_dict())
    assert spectral_norm_in_fp32(nn.Sequential(layer)) == 1
    assert set(layer.state_dict()) == keys
    layer.eval()
    expected = layer.weight
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = layer.weight
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, expected)


def test_unused_discriminator_heads_are_found_for_ddp():
    from bifamily.plugins import default_plugins
    from bifamily.recipe import load
    from bifamily.step_modules import GeneratorEncoder, ScorePairs, parameters_without_gradient

    recipe = load(QUICKSTART, default_plugins(), ["loss.x_unary=0.0", "generator.ch=8", "encoder.ch=8"])
    model = session.prepare(recipe).model
    ge, pairs = GeneratorEncoder(model.generator, model.encoder), ScorePairs(model.discriminator)
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    unused_d, unused_ge = parameters_without_gradient(model, ge, pairs)
    assert unused_d and all(name.startswith("discriminator.image_score.") for name in unused_d)
    assert unused_ge == []
    assert all(torch.equal(before[k], v) for k, v in model.discriminator.state_dict().items())
    assert all(p.grad is None for p in model.discriminator.parameters())


def test_world_size_problems_are_recipe_errors_before_any_launch(tmp_path):
    result = CliRunner().invoke(main, ["run", QUICKSTART, *TINY, "--nproc", "3", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "$.train.batch_size: 8 cannot be split into $.train.accumulation = 1 micro-steps on 3 ranks" in result.stderr
    result = CliRunner().invoke(main, ["run", QUICKSTART, *TINY, "--set", "train.precision=fp16", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "$.train.precision: 'fp16' needs CUDA" in result.stderr
    assert not (tmp_path / "r").exists()


# -- whole runs: 2 ranks = 1 rank ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "accumulation, updates",
    [(2, "alternating"), (2, "simultaneous"), pytest.param(1, "alternating", marks=pytest.mark.slow)],
)
def test_two_ranks_equal_one_rank_and_checkpoints_move_between_world_sizes(tmp_path, accumulation, updates):
    """Steps 1-2 on 1 rank, 3-4 on 2 ranks (`bifamily run --nproc 2`), 5-6 on 1 rank again equal 6
    steps on 1 rank, all at global batch 8. With accumulation 2, batch norm normalises each
    micro-step's 4 images (across the ranks on 2 ranks) and DDP all-reduces once per update (with
    simultaneous updates: once per update of D and of G+E, from two backward passes of one forward).
    The loss leaves D's image head without gradient, which DDP must be told."""
    chain = ["--set", f"train.accumulation={accumulation}", "--set", "loss.x_unary=0.0", "--set", f'train.updates="{updates}"']
    if updates == "simultaneous":
        chain += ["--set", "train.d_steps=1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_here(*chain, "--set", "run.steps=6", "--out", str(straight))
    run_here(*chain, "--set", "run.steps=2", "--out", str(split))
    run_ranks("-m", "bifamily", "run", QUICKSTART, *TINY, *chain, "--set", "run.steps=4", "--no-progress",
              "--nproc", "2", "--out", str(split), "--resume")
    assert_same_weights(snapshot(split, 4), snapshot(straight, 4))
    run_here(*chain, "--set", "run.steps=6", "--out", str(split), "--resume")
    assert_same_weights(snapshot(split, 6), snapshot(straight, 6))
    # Rank 0 alone wrote the log: one line per logged step, none twice.
    steps = [json.loads(line)["step"] for line in (split / "stats.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_accumulation_equals_one_big_batch_without_batch_norm(tmp_path, monkeypatch):
    """With batch norm, micro-steps normalise over their own images; without it (and without spectral
    norm's extra power iterations per micro-step), accumulating equals one big batch."""
    no_batch_norm = lambda num_features, affine=True: nn.Identity()  # noqa: E731
    monkeypatch.setattr(preflight, "make_context", lambda recipe, device, **kw: make_context(recipe, device, **{**kw, "batch_norm": no_batch_norm}))
    # Adam's eps 1e-3: with a tiny eps, Adam turns last-bit differences in near-zero bias gradients
    # (summation order differs between the two) into learning-rate-sized steps (4e-5 apart here).
    common = ["--set", "run.steps=2", "--set", "discriminator.spectral_norm=false", "--set", "optim.eps=1e-3"]
    run_here(*common, "--out", str(tmp_path / "whole"))
    run_here(*common, "--set", "train.accumulation=4", "--out", str(tmp_path / "accumulated"))
    assert_same_weights(snapshot(tmp_path / "accumulated", 2), snapshot(tmp_path / "whole", 2))


def test_channels_last_run_resumes_exactly(tmp_path):
    """Restored optimizer state must take the NHWC layout of the weights (fused Adam pairs by storage)."""
    common = ["--set", "train.channels_last=true"]
    run_here(*common, "--set", "run.steps=2", "--out", str(tmp_path / "straight"))
    run_here(*common, "--set", "run.steps=1", "--out", str(tmp_path / "split"))
    run_here(*common, "--set", "run.steps=2", "--out", str(tmp_path / "split"), "--resume")
    a, b = snapshot(tmp_path / "straight", 2), snapshot(tmp_path / "split", 2)
    assert all(torch.equal(a[name], b[name]) for name in a)


# -- failure ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_a_dead_rank_ends_the_job_with_a_clear_message_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    job = subprocess.Popen(
        [sys.executable, "-m", "bifamily", "run", QUICKSTART, *TINY, "--set", "run.steps=500", "--no-progress",
         "--nproc", "2", "--out", str(out)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "latest").exists():
            assert job.poll() is None and time.monotonic() < deadline, "the job never wrote a checkpoint"
            time.sleep(0.5)
        ranks = child_pids(job.pid)
        assert len(ranks) == 2
        os.kill(ranks[1], signal.SIGKILL)
        _, stderr = job.communicate(timeout=60)  # no hang: torchrun stops the surviving rank
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 1
    assert "was killed by SIGKILL; torchrun stopped the other ranks" in stderr
    assert f"--out {out} --resume" in stderr
    latest = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))
    run_here("--set", f"run.steps={latest + 2}", "--out", str(out), "--resume")
    assert (out / "checkpoints" / f"step-{latest + 2:08d}").is_dir()
