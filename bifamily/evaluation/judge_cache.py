"""Trained sample judges cached on disk, one safetensors file per (data set, judge settings).

A judge file is a checkpoint snapshot (:func:`bifamily.checkpoint.snapshot.save_snapshot`: written to a temporary
name and renamed, sha256 over tensors and metadata) of one module, ``judge``, with metadata naming its
format, fingerprint, settings, classes and held-out accuracy. The fingerprint hashes the data set's
identity (its resolved ``[data]`` section and a fixed sample of its images and labels) and the judge's
settings; the file is named by it. A file that cannot be read, fails its checksum, or holds another
fingerprint or format is trained again, with one warning naming it; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from bifamily.checkpoint.snapshot import load_modules, read_snapshot, save_snapshot
from bifamily.errors import CheckpointError
from bifamily.evaluation.judge import JudgeArchitecture, JudgeNet, new_judge

FORMAT = "bifamily.judge/2"  # 2: per-image normalised input, max pool, stride-2 first layer
SUBFOLDER = "judges"
_MODULE = "judge"
_FINGERPRINT_IMAGES = 32  # per split


def data_digest(train: Dataset, test: Dataset) -> str:
    """sha256 of both splits' lengths, class counts and ``_FINGERPRINT_IMAGES`` evenly spaced items of
    each (pixels quantised to 8 bits, so rounding differences between machines do not matter)."""
    digest = hashlib.sha256()
    for dataset in (train, test):
        length = len(dataset)
        digest.update(json.dumps([length, int(getattr(dataset, "num_classes", 0))]).encode())
        count = min(_FINGERPRINT_IMAGES, length)
        indices = sorted({round(i * (length - 1) / max(count - 1, 1)) for i in range(count)})
        for image, label in (dataset[i] for i in indices):
            pixels = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            digest.update(json.dumps([list(pixels.shape), int(label)]).encode())
            digest.update(pixels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def judge_fingerprint(data_key: dict[str, Any], digest: str, settings: dict[str, Any]) -> str:
    """sha256 of the format, the resolved [data] section, the data digest and the judge's settings."""
    key = {"format": FORMAT, "data": data_key, "images": digest, "judge": settings}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def judge_path(cache_dir: Path, fingerprint: str) -> Path:
    return Path(cache_dir) / f"judge-{fingerprint[:20]}.safetensors"


def load_judge(path: Path, expected_fingerprint: str, architecture: JudgeArchitecture) -> JudgeNet | None:
    """The judge stored at ``path`` when it is whole and made for ``expected_fingerprint``; None when
    there is no file; a warning naming the file, then None, when it cannot be used."""
    if not path.exists():
        return None
    try:
        tensors, metadata = read_snapshot(path)
        if metadata.get("judge_format") != FORMAT or metadata.get("fingerprint") != expected_fingerprint:
            raise CheckpointError(
                f"{path}: made for another data set or other judge settings "
                f"(format {metadata.get('judge_format')!r}, fingerprint {metadata.get('fingerprint', '')[:12]!r})"
            )
        judge = new_judge(architecture, seed=0)  # weights replaced: only keeps torch's global stream untouched
        load_modules(tensors, {_MODULE: judge})
    except CheckpointError as error:
        reason = str(error).splitlines()[0]
        warnings.warn(f"cached sample judge not used, training it again: {reason}", stacklevel=2)
        return None
    return judge.eval().requires_grad_(False)


def save_judge(
    path: Path,
    judge: JudgeNet,
    fingerprint: str,
    settings: dict[str, Any],
    class_names: list[str],
    heldout_accuracy: float,
    heldout_images: int,
) -> None:
    """Write the judge and its metadata to ``path`` atomically (its folder is created)."""
    metadata = {
        "judge_format": FORMAT,
        "fingerprint": fingerprint,
        "settings": json.dumps(settings, sort_keys=True),
        "classes": json.dumps(class_names),
        "heldout_accuracy": repr(heldout_accuracy),
        "heldout_images": str(heldout_images),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"{path.parent}: cannot create the judge cache folder: {error.strerror or error}") from error
    save_snapshot(path, {_MODULE: judge}, metadata)
