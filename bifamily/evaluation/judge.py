"""The sample judge: a small classifier trained on a labelled data set, whose confidence, predicted-class
histogram and penultimate features score generated images (a domain FID, as MNIST papers use a small
classifier instead of Inception).

Training is deterministic: the weights are initialised from ``seed`` (torch's global generator is
forked, so the caller's random stream is untouched) and minibatches are drawn from a generator seeded
with it, so two judges trained on the same images with the same settings, on the same device type and
thread count, are identical.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from bifamily.data import collate, fetch
from bifamily.errors import DataError
from bifamily.evaluation.features import resize_images

OUTLIER_WEIGHT = 0.5  # Hendrycks et al.'s weight of the uniform-target loss on outliers
INPUT_SPREAD_FLOOR = 0.1  # keeps the per-image normalisation finite on flat images (in [-1, 1] units)


@attrs.frozen
class JudgeArchitecture:
    """What the judge's weights depend on besides training: input, classes, widths."""

    channels: int
    resolution: int
    num_classes: int
    width: int = 16
    feature_dim: int = 128


@attrs.frozen
class JudgeTraining:
    """Adam with a one-cycle learning-rate schedule peaking at ``lr``, ``steps`` minibatches."""

    steps: int = 300
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0


class JudgeNet(nn.Module):
    """Four 3x3 conv + batch norm + ReLU layers (``width``, 2x, 4x, 8x channels; all but the second with
    stride 2), a global max pool, a ``feature_dim`` ReLU feature layer and a linear head.

    Each image is first normalised per channel (its own mean and standard deviation), so colours and
    brightness do not have to be learned away; the max pool asks whether a class's pattern is present
    anywhere, wherever the object sits. On the procedural shapes these two changes took the judge from
    68% to 95% held-out accuracy for the same 300 steps, and the first stride 2 made it 25% faster.

    ``forward`` returns (features, logits), the feature-network interface of the IS/FID/KID code."""

    def __init__(self, architecture: JudgeArchitecture):
        super().__init__()
        widths = [architecture.width * 2**i for i in range(4)]
        layers: list[nn.Module] = []
        channels = architecture.channels
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, stride=1 if i == 1 else 2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.body = nn.Sequential(*layers)
        self.features = nn.Sequential(nn.Linear(channels, architecture.feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(architecture.feature_dim, architecture.num_classes)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        mean = images.mean(dim=(2, 3), keepdim=True)
        spread = images.std(dim=(2, 3), keepdim=True)
        normalised = (images - mean) / (spread + INPUT_SPREAD_FLOOR)
        features = self.features(self.body(normalised).amax(dim=(2, 3)))
        return features, self.head(features)


def new_judge(architecture: JudgeArchitecture, seed: int) -> JudgeNet:
    """A judge with initial weights drawn from ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return JudgeNet(architecture)


@torch.inference_mode(False)
@torch.enable_grad()
def train_judge(
    images: Tensor, labels: Tensor, architecture: JudgeArchitecture, training: JudgeTraining, device: torch.device | str = "cpu"
) -> JudgeNet:
    """A judge trained on ``images`` (N, C, R, R) in [-1, 1] with int ``labels`` (N,); returned in eval
    mode. Each epoch visits the images in a seeded random order; gradients are on even when the caller
    runs under ``inference_mode``.

    Outlier exposure (Hendrycks et al. 2019): each minibatch also holds a quarter as many noise images
    (at least 2; half white, half smooth) whose target is the uniform distribution over classes, so images without
    any of the classes' content are not recognised with confidence."""
    if labels.min() < 0 or labels.max() >= architecture.num_classes:
        raise DataError(f"judge labels must lie in [0, {architecture.num_classes}), got [{labels.min()}, {labels.max()}]")
    judge = new_judge(architecture, training.seed).to(device).train()
    optimizer = torch.optim.Adam(judge.parameters(), lr=training.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=training.lr, total_steps=training.steps)
    order = torch.Generator().manual_seed(training.seed)
    batch = min(training.batch_size, len(images))
    permutation, position = torch.randperm(len(images), generator=order), 0
    for _ in range(training.steps):
        if position + batch > len(images):
            permutation, position = torch.randperm(len(images), generator=order), 0
        rows = permutation[position : position + batch]
        position += batch
        x, y = images[rows].clone().to(device), labels[rows].clone().to(device)
        outliers = noise_images(max(2, batch // 4), images.shape[1:], order).to(device)
        logits = judge(torch.cat([x, outliers]))[1]
        uniform_target = -logits[len(x) :].log_softmax(dim=1).mean(dim=1).mean()
        loss = F.cross_entropy(logits[: len(x)], y) + OUTLIER_WEIGHT * uniform_target
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return judge.eval().requires_grad_(False)


def noise_images(count: int, shape: torch.Size, generator: torch.Generator) -> Tensor:
    """``count`` images in [-1, 1] of ``shape`` (C, R, R): the first half white noise, the rest smooth
    noise (white noise at a quarter of the side, upsampled bilinearly)."""
    channels, side = shape[0], shape[-1]
    white = torch.rand((count // 2, channels, side, side), generator=generator) * 2 - 1
    coarse = torch.rand((count - count // 2, channels, max(1, side // 4), max(1, side // 4)), generator=generator) * 2 - 1
    smooth = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return torch.cat([white, smooth])


@attrs.frozen
class Verdicts:
    """What the judge says about a set of images: penultimate features (N, F) and class probabilities (N, K)."""

    features: Tensor
    probabilities: Tensor

    def recognisable(self, confidence: float) -> float:
        """Share of images given some class with probability >= ``confidence``."""
        return float((self.probabilities.max(dim=1).values >= confidence).float().mean())

    def class_counts(self) -> list[int]:
        """How many images the judge predicts (argmax) for each class."""
        return torch.bincount(self.probabilities.argmax(dim=1), minlength=self.probabilities.shape[1]).tolist()

    def coverage(self) -> float:
        """Normalised entropy of the predicted-class histogram."""
        return coverage(self.class_counts())

    def accuracy(self, labels: Tensor) -> float:
        return float((self.probabilities.argmax(dim=1) == labels).float().mean())


def coverage(counts: list[int]) -> float:
    """Entropy of the histogram ``counts`` divided by log(number of bins): 1 when every bin holds as
    many items as any other, 0 when one bin holds them all (and for a single bin, trivially uniform: 1)."""
    total = sum(counts)
    if total <= 0:
        raise ValueError("coverage of an empty histogram")
    if len(counts) == 1:
        return 1.0
    entropy = -sum(c / total * math.log(c / total) for c in counts if c > 0)
    return min(1.0, max(0.0, entropy / math.log(len(counts))))


def judge_images(judge: JudgeNet, images: Tensor, batch_size: int, device: torch.device | str) -> Verdicts:
    """The judge's verdicts on ``images``, ``batch_size`` at a time on ``device``; results on the CPU."""
    features, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch_features, batch_logits = judge(images[start : start + batch_size].to(device).float())
            features.append(batch_features.float().cpu())
            logits.append(batch_logits.float().cpu())
    return Verdicts(torch.cat(features), torch.cat(logits).softmax(dim=1))


def seeded_subset(length: int, count: int, seed: int) -> list[int]:
    """``count`` indices of ``range(length)`` drawn without replacement from ``seed``, in increasing
    order (all of them when ``count >= length``): class-sorted data sets are sampled evenly."""
    if count >= length:
        return list(range(length))
    chosen = torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:count]
    return sorted(chosen.tolist())


def load_images(dataset: Dataset, indices: list[int], size: int, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Items ``indices`` of ``dataset``: images resized (antialiased bilinear) to ``size`` and labels."""
    images, labels = [], []
    for start in range(0, len(indices), batch_size):
        x, y = collate(fetch(dataset, indices[start : start + batch_size]))
        images.append(resize_images(x.float(), size))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def settings_of(architecture: JudgeArchitecture, training: JudgeTraining, train_images: int) -> dict[str, Any]:
    """Everything a trained judge depends on besides the data, as plain data."""
    return {"architecture": attrs.asdict(architecture), "training": attrs.asdict(training), "train_images": train_images}
