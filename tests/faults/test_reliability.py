"""Reliability end to end through `bifamily run`: stop signals, divergence (stop and rollback), damaged or
foreign checkpoints, full disks, unreadable data and broken plugins. Each ends in a clear message and a
documented exit code, and never costs a good checkpoint (docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from bifamily.checkpoint import files
from bifamily.checkpoint.resume import RESUME_FILE, read_pair
from bifamily.checkpoint.snapshot import SNAPSHOT_FILE
from bifamily.cli import main
from bifamily.plugins import BLOCK_ENV, default_plugins
from bifamily.stopping import DUPLICATE_WINDOW_S, StopSignals
from bifamily.train import Trainer

from tests.helpers.processes import child_pids
from tests.helpers.tiny_model import TINY_MODEL

RECIPE = """
[run]
name = "tiny"
steps = 6
log_every = 2
sample_every = 1000
checkpoint_every = 2
""" + TINY_MODEL


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(RECIPE)
    return path


def run(recipe: Path, out: Path, *args: str):
    return CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--no-progress", *args], catch_exceptions=False)


def ok(result) -> None:
    assert result.exit_code == 0, result.output + result.stderr


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("step-")) for p in (out / "checkpoints").glob("step-*"))


def latest(out: Path) -> str:
    return (out / "checkpoints" / "latest").read_text().strip()


def snapshot(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoints" / latest(out) / SNAPSHOT_FILE)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]


# -- stop signals -----------------------------------------------------------------------------------


def signal_at(monkeypatch, step: int, signum: int = signal.SIGTERM) -> None:
    """Deliver ``signum`` to this process during the G/E update of ``step``, as a scheduler would."""
    original = Trainer.ge_step

    def ge_step(self):
        if self.state.step + 1 == step:
            os.kill(os.getpid(), signum)
        return original(self)

    monkeypatch.setattr(Trainer, "ge_step", ge_step)


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_resuming_is_exact(recipe, tmp_path, monkeypatch, capfd):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    ok(run(recipe, straight))
    handler_before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        signal_at(patch, 3)
        result = run(recipe, stopped)
    assert result.exit_code == 128 + signal.SIGTERM
    assert "SIGTERM received: finishing this step, writing a checkpoint" in capfd.readouterr().err  # fd 2
    assert f"stopped: SIGTERM after step 3: its checkpoint is in {stopped / 'checkpoints'}" in result.stderr
    assert f"--out {stopped} --resume" in result.stderr and "Traceback" not in result.output
    assert signal.getsignal(signal.SIGTERM) == handler_before
    assert latest(stopped) == "step-00000003"  # not a checkpoint_every step: written because of the stop
    ok(run(recipe, stopped, "--resume"))
    assert_same(snapshot(stopped), snapshot(straight))
    assert logged_steps(stopped) == [2, 4, 6]


def test_sigint_exits_130(recipe, tmp_path, monkeypatch):
    signal_at(monkeypatch, 1, signal.SIGINT)
    result = run(recipe, tmp_path / "run")
    assert result.exit_code == 130 and latest(tmp_path / "run") == "step-00000001"


def test_a_repeat_within_the_window_is_the_same_request_a_later_one_ends_at_once(monkeypatch):
    now = [100.0]
    killed = []
    monkeypatch.setattr("bifamily.stopping.time.monotonic", lambda: now[0])
    monkeypatch.setattr("bifamily.stopping.os.kill", lambda pid, signum: killed.append(signum))
    stop = StopSignals()
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a job started in the background by a shell
    with stop.installed():
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)
        assert stop.received == signal.SIGTERM and not killed
        now[0] += DUPLICATE_WINDOW_S / 2  # torchrun or SLURM delivering the same request again
        handler(signal.SIGINT, None)
        assert not killed and signal.getsignal(signal.SIGINT) == handler
        now[0] += DUPLICATE_WINDOW_S
        handler(signal.SIGINT, None)  # a person pressing Ctrl-C again
        assert killed == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == before


def test_forked_data_workers_ignore_the_signals(monkeypatch):
    stop = StopSignals()
    with stop.installed():
        monkeypatch.setattr("bifamily.stopping.os.getpid", lambda: -1)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert stop.received == 0


# -- divergence -------------------------------------------------------------------------------------


def nan_encoder_gradient(trainer: Trainer, original):
    parameter = next(trainer.model.encoder.parameters())
    handle = parameter.register_hook(lambda grad: torch.full_like(grad, math.nan))
    try:
        return original(trainer)
    finally:
        handle.remove()


def nan_discriminator_weight(trainer: Trainer, original):
    with torch.no_grad():
        next(trainer.model.discriminator.parameters()).fill_(math.nan)
    return original(trainer)


def inject(monkeypatch, method: str, corrupt, step: int, times: int) -> None:
    """Run ``corrupt`` instead of Trainer.<method> at ``step``, the first ``times`` times it comes."""
    original = getattr(Trainer, method)
    left = [times]

    def patched(self):
        if self.state.step + 1 == step and left[0] > 0:
            left[0] -= 1
            return corrupt(self, original)
        return original(self)

    monkeypatch.setattr(Trainer, method, patched)


@pytest.mark.parametrize(
    "method, corrupt, named",
    [
        ("ge_step", nan_encoder_gradient, "the encoder gradients were not finite"),
        (
            "d_step",
            nan_discriminator_weight,  # D scores the G/E update too: everything after it is NaN
            "the discriminator loss, discriminator gradients, generator+encoder loss, generator gradients and "
            "encoder gradients were not finite",
        ),
    ],
    ids=["encoder-gradient", "discriminator-loss"],
)
def test_a_nonfinite_step_stops_the_run_naming_step_and_module_and_is_never_saved(
    recipe, tmp_path, monkeypatch, method, corrupt, named
):
    out = tmp_path / "run"
    inject(monkeypatch, method, corrupt, step=3, times=1)
    result = run(recipe, out, "--set", "run.checkpoint_every=1")
    assert result.exit_code == 3, result.output + result.stderr
    assert f"stopped: training diverged: at step 3 {named} (NaN or infinite)" in result.stderr
    assert 'guard.on_nonfinite = "rollback"' in result.stderr and "Traceback" not in result.output
    assert latest(out) == "step-00000002" and checkpoint_steps(out)[-1] == 2
    for folder in (out / "checkpoints").glob("step-*"):
        assert all(tensor.isfinite().all() for tensor in load_file(folder / SNAPSHOT_FILE).values())
    assert logged_steps(out) == [2]


def rollbacks_recorded(out: Path) -> int:
    with safe_open(out / "checkpoints" / latest(out) / RESUME_FILE, "pt") as file:
        return json.loads(file.metadata()["extra"])["guard"]["rollbacks"]


def test_rollback_retries_on_fresh_data_and_resuming_after_it_is_exact(recipe, tmp_path, monkeypatch):
    rollback = ["--set", 'guard.on_nonfinite="rollback"']
    whole, split = tmp_path / "whole", tmp_path / "split"
    with monkeypatch.context() as patch:
        inject(patch, "ge_step", nan_encoder_gradient, step=3, times=1)
        result = run(recipe, whole, *rollback)
    ok(result)
    assert "at step 3 the encoder gradients were not finite" in result.stderr
    assert "rolled back to step 2 (rollback 1 of at most 3), with a fresh data order" in result.stderr
    assert logged_steps(whole) == [2, 4, 6] and rollbacks_recorded(whole) == 1
    assert all(tensor.isfinite().all() for tensor in snapshot(whole).values())
    # The count is saved: stopping after the rollback and resuming continues on the same fresh data.
    with monkeypatch.context() as patch:
        inject(patch, "ge_step", nan_encoder_gradient, step=3, times=1)
        ok(run(recipe, split, *rollback, "--set", "run.steps=4"))
    ok(run(recipe, split, *rollback, "--resume"))
    assert_same(snapshot(split), snapshot(whole))


def test_rollback_gives_up_after_max_rollbacks_and_can_go_back_to_step_0(recipe, tmp_path, monkeypatch):
    out = tmp_path / "run"
    inject(monkeypatch, "ge_step", nan_encoder_gradient, step=2, times=99)
    result = run(recipe, out, "--set", 'guard={on_nonfinite = "rollback", max_rollbacks = 2}',
                 "--set", "run.checkpoint_every=100", "--set", "run.log_every=1")
    assert result.exit_code == 3
    assert result.stderr.count("rolled back to step 0") == 2
    assert "giving up after 2 rollback(s) without a new checkpoint" in result.stderr
    assert checkpoint_steps(out) == [0]


# -- damaged and foreign checkpoints ----------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(recipe, tmp_path_factory) -> Path:
    """A run with checkpoints at steps 2 and 4 (the latest)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    ok(run(recipe, out, "--set", "run.steps=4"))
    return out


def resigned(folder: Path, change) -> None:
    """Rewrite a checkpoint with ``change`` applied to its snapshot tensors, with valid checksums: a
    well-formed checkpoint of some other model, as a stranger might hand over."""
    tensors, metadata = files.read_file(folder / SNAPSHOT_FILE, "bifamily.snapshot/1")
    change(tensors)
    data, sha = files.serialize(tensors, {k: v for k, v in metadata.items() if k != "sha256"})
    (folder / SNAPSHOT_FILE).write_bytes(data)
    resume, resume_metadata = files.read_file(folder / RESUME_FILE, "bifamily.resume/1")
    resume_metadata = {k: v for k, v in resume_metadata.items() if k != "sha256"} | {"snapshot_sha256": sha}
    (folder / RESUME_FILE).write_bytes(files.serialize(resume, resume_metadata)[0])


def rename_tensor(tensors: dict) -> None:
    name = next(n for n in sorted(tensors) if n.startswith("generator.") and tensors[n].is_floating_point())
    tensors["generator.renamed"] = tensors.pop(name)


def retype_tensor(tensors: dict) -> None:
    name = next(name for name in tensors if name.startswith("encoder.") and tensors[name].is_floating_point())
    tensors[name] = tensors[name].double()


class Payload:
    """What a malicious pickle does when unpickled: here, create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda f: truncate(f / SNAPSHOT_FILE),
            [
                r"snapshot.safetensors: file is truncated \(\d+ bytes, the header promises \d+\)",
                r"\nthe checkpoint before it, \S+step-00000002, is whole: move \S+step-00000004 aside",
            ],
        ),
        (lambda f: flip_bit(f / RESUME_FILE), [r"resume.safetensors: checksum mismatch, the file is corrupted\nthe checkpoint before"]),
        (
            lambda f: resigned(f, rename_tensor),
            [
                r"snapshot.safetensors: the weights do not match the model \(2 differences\):",
                r"\n  missing generator\.\S+ \(float32 \[[\d, ]+\]\)",
                r"\n  unexpected generator\.renamed \(float32 \[[\d, ]+\]\)",
            ],
        ),
        (lambda f: resigned(f, retype_tensor), [r"\n  dtype of encoder\.\S+: float64 in the checkpoint, float32 in the model"]),
        (
            lambda f: (f / SNAPSHOT_FILE).write_bytes(pickle.dumps(Payload(f / "pwned"))),
            [r"snapshot.safetensors: (not a safetensors file|file is truncated)"],
        ),
    ],
    ids=["truncated", "bit-flipped", "renamed-tensor", "wrong-dtype", "pickle"],
)
def test_a_damaged_or_foreign_checkpoint_is_refused_on_resume(recipe, finished, tmp_path, damage, expected):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    damage(out / "checkpoints" / "step-00000004")
    result = run(recipe, out, "--set", "run.steps=6", "--resume")
    assert result.exit_code == 2, result.output + result.stderr
    for pattern in expected:
        assert re.search(pattern, result.stderr), (pattern, result.stderr)
    assert "step-00000004" in result.stderr and "Traceback" not in result.output
    assert not (out / "checkpoints" / "step-00000004" / "pwned").exists()
    assert checkpoint_steps(out) == [2, 4]  # nothing was touched


def test_a_checkpoint_of_another_architecture_lists_the_shape_differences(recipe, finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    result = run(recipe, out, "--set", "discriminator.joint_width=32", "--resume")
    assert result.exit_code == 2
    assert "step-00000004/snapshot.safetensors: the weights do not match the model (" in result.stderr
    assert "in the checkpoint, [" in result.stderr and "shape of discriminator." in result.stderr


def test_without_a_pointer_a_damaged_newest_checkpoint_is_passed_over_with_a_warning(recipe, finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "checkpoints" / "latest").unlink()
    flip_bit(out / "checkpoints" / "step-00000004" / SNAPSHOT_FILE)
    with pytest.warns(UserWarning, match="passing over a damaged checkpoint: .*step-00000004.*checksum mismatch"):
        result = run(recipe, out, "--resume")
    ok(result)
    assert "at step 2" in result.stderr
    assert checkpoint_steps(out) == [2, 4, 6] and latest(out) == "step-00000006"


# -- full disks -------------------------------------------------------------------------------------


def test_a_full_disk_while_checkpointing_stops_cleanly_and_keeps_the_previous_checkpoint(recipe, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = files.write_file

    def fill_up_at_step_4(path: Path, data: bytes) -> None:
        if path.name == SNAPSHOT_FILE and (out / "checkpoints" / "step-00000002").is_dir():
            path.write_bytes(data[: len(data) // 3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        original(path, data)

    with monkeypatch.context() as patch:
        patch.setattr(files, "write_file", fill_up_at_step_4)
        result = run(recipe, out)
    assert result.exit_code == 2
    assert "cannot write checkpoint: No space left on device" in result.stderr and "Traceback" not in result.output
    assert latest(out) == "step-00000002" and checkpoint_steps(out) == [2]
    assert not (out / ".checkpoints.partial").exists()
    ok(run(recipe, out, "--resume"))  # space freed: the run continues from step 2
    assert checkpoint_steps(out) == [2, 4, 6]


def mount_tmpfs(path: Path, size_kib: int) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    return os.system(f"mount -t tmpfs -o size={size_kib}k tmpfs {path} 2>/dev/null") == 0


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs")
def test_a_really_full_tmpfs_keeps_the_previous_checkpoint(recipe, finished, tmp_path):
    checkpoint_kib = sum(f.stat().st_size for f in (finished / "checkpoints" / "step-00000004").iterdir()) // 1024
    disk = tmp_path / "disk"
    # Room for one checkpoint, the log and the recipe, but not for a second checkpoint next to it.
    if not mount_tmpfs(disk, size_kib=checkpoint_kib * 3 // 2 + 16):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "run"
        result = run(recipe, out, "--set", "run.keep_checkpoints=1")
        assert result.exit_code == 2, result.output + result.stderr
        assert "No space left on device" in result.stderr and "Traceback" not in result.output
        assert latest(out) == "step-00000002"
        read_pair(out / "checkpoints" / "step-00000002")  # whole and verified
    finally:
        os.system(f"umount {disk}")


# -- unreadable data --------------------------------------------------------------------------------


def image_folder(root: Path, good: int, corrupt: int) -> None:
    for index in range(good + corrupt):
        folder = root / ("cats" if index % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        if index < good:
            colour = (index * 20 % 256, 90, 200 - index * 10 % 200)
            Image.new("RGB", (20, 20), colour).save(folder / f"{index}.png")
        else:
            (folder / f"{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def image_data(root: Path, *extra: str) -> list[str]:
    return ["--set", f'data={{kind = "image_folder", root = "{root}", resolution = 16}}', *extra]


def too_few_images(root: Path) -> None:
    image_folder(root / "train", good=3, corrupt=0)
    image_folder(root / "val", good=2, corrupt=0)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda root: None, "$.data.root: folder not found"),
        (lambda root: root.mkdir(), "$.data.root: no image files"),
        (too_few_images, "$.train.batch_size: 8 is larger than the training split (3 images)"),
    ],
    ids=["missing", "empty", "too-few"],
)
def test_missing_empty_or_small_data_folders_are_clear_errors_before_the_run(recipe, tmp_path, make, expected):
    make(tmp_path / "images")
    result = run(recipe, tmp_path / "run", *image_data(tmp_path / "images"))
    assert result.exit_code == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_undecodable_images_are_skipped_and_counted(recipe, tmp_path):
    image_folder(tmp_path / "images" / "train", good=10, corrupt=6)
    image_folder(tmp_path / "images" / "val", good=4, corrupt=0)
    with pytest.warns(UserWarning, match=r"skipping undecodable image .*\.png .* file\(s\) skipped so far"):
        ok(run(recipe, tmp_path / "run", *image_data(tmp_path / "images"), "--set", "run.steps=2"))


def test_no_decodable_training_image_in_a_loader_worker_is_one_clear_line(recipe, tmp_path):
    image_folder(tmp_path / "images" / "train", good=0, corrupt=10)
    image_folder(tmp_path / "images" / "val", good=4, corrupt=0)
    result = run(recipe, tmp_path / "run", *image_data(tmp_path / "images"), "--set", "train.num_workers=1")
    assert result.exit_code == 2, result.output + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line == f"error: $.data.root: none of the 10 image files under {tmp_path / 'images'} can be decoded"


# -- broken plugins ---------------------------------------------------------------------------------




def test_broken_plugins_are_named_listed_as_failed_and_do_not_take_the_others_down(recipe, third_party, monkeypatch):
    third_party("bifamily-broken", "thirdparty_broken", "raise ImportError('no module named torch_magic')\n")
    third_party("bifamily-badhook", "thirdparty_badhook", """
        from bifamily.hookspecs import hookimpl

        @hookimpl
        def bifamily_register_generators(register):
            raise ValueError("bad hook")
    """)
    listing = CliRunner().invoke(main, ["plugins"], catch_exceptions=False)
    assert listing.exit_code == 0
    assert "thirdparty_broken  (bifamily-broken 1.0)  FAILED: ImportError: no module named torch_magic" in listing.output
    assert "thirdparty_badhook  (bifamily-badhook 1.0)  FAILED: bifamily_register_generators raised ValueError: bad hook" in listing.output
    assert "dcgan  (bifamily" in listing.output
    refused = CliRunner().invoke(main, ["validate", str(recipe)], catch_exceptions=False)
    assert refused.exit_code == 2
    assert "plugin 'thirdparty_badhook' (distribution bifamily-badhook 1.0) failed to load" in refused.stderr
    assert f"{BLOCK_ENV}=thirdparty_badhook" in refused.stderr
    monkeypatch.setenv(BLOCK_ENV, "thirdparty_broken,thirdparty_badhook")
    default_plugins.cache_clear()
    ok(CliRunner().invoke(main, ["validate", str(recipe)], catch_exceptions=False))


# -- a distributed stop -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_sigterm_to_one_rank_stops_both_at_the_same_step_with_one_checkpoint(recipe, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "BIFAMILY_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(
        [sys.executable, "-m", "bifamily", "run", str(recipe), "--set", "run.steps=100000", "--set", "run.device=cpu",
         "--nproc", "2", "--out", str(out), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoints" / "latest").exists():
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.2)
        ranks = child_pids(job.pid)
        assert len(ranks) == 2
        os.kill(max(ranks), signal.SIGTERM)  # one rank only, as when a node is preempted
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 128 + signal.SIGTERM, stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("stopped: SIGTERM after step")]
    step = int(line.split("after step ")[1].split(":")[0])
    assert latest(out) == f"step-{step:08d}" and "Traceback" not in stderr
    assert f"--out {out} --resume --nproc 2" in stderr
    ok(run(recipe, out, "--set", f"run.steps={step + 1}", "--resume"))  # on one rank
    assert latest(out) == f"step-{step + 1:08d}"
