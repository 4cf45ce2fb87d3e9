"""Sample quality judged by a small classifier trained on the data set's labels (a domain FID)."""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bifamily.config import check, option, positive
from bifamily.evaluation.features import require_labels, resize_images
from bifamily.evaluation.judge import (
    JudgeArchitecture,
    JudgeNet,
    JudgeTraining,
    Verdicts,
    judge_images,
    load_images,
    seeded_subset,
    settings_of,
    train_judge,
)
from bifamily.evaluation.judge_cache import SUBFOLDER, data_digest, judge_fingerprint, judge_path, load_judge, save_judge
from bifamily.metric_interfaces import MetricContext, MetricResult, Subject
from bifamily.randomness import derive_seed

from .generation import default_cache_dir

_notes = logging.getLogger("bifamily")


@attrs.frozen
class JudgeConfig:
    """Sample judge: a small conv classifier trained on `train_images` labelled training images (a seeded
    subset), deterministic from `seed` and cached by data-set fingerprint, scores `samples` images of the
    EMA generator (latents from a fixed seed) next to `real_images` held-out images (a seeded subset of
    the test split), all at the generator's resolution. Values: judge_recognisable (share of images given
    some class with probability >= `confidence`), judge_coverage (normalised entropy of the predicted-class
    histogram, 1 = every class equally often), both also for the real images (_real), the ratio
    judge_recognisable_ratio, judge_fd and judge_kid (Fréchet distance and KID of the judge's penultimate
    features, samples against the real images), judge_accuracy (the judge's top-1 on the real images).
    The record's details hold the samples' class histogram (sample_classes). Needs labels."""

    samples: int = option(2000, help="Generated images scored (at least 2).", validator=positive)
    real_images: int = option(
        2000,
        help="Held-out real images (a seeded subset of the test split) scored beside them; the judge's "
        "accuracy is measured on them.",
        validator=positive,
    )
    confidence: float = option(
        0.9,
        help="An image is recognisable when the judge gives one class at least this probability.",
        validator=check(lambda v: 0.0 < v <= 1.0, "must be in (0, 1], got {value}"),
    )
    train_images: int = option(
        10000,
        help="Labelled training images the judge learns from (a seeded subset of the train split; all when fewer).",
        validator=positive,
    )
    steps: int = option(300, help="Adam steps of the judge's training.", validator=positive)
    batch_size: int = option(128, help="Minibatch of the judge's training.", validator=positive)
    lr: float = option(3e-3, help="Peak learning rate of the judge's one-cycle schedule.", validator=positive)
    width: int = option(16, help="Channels of the judge's first conv layer (2x, 4x, 8x in the next three).", validator=positive)
    feature_dim: int = option(
        128, help="Width of the judge's penultimate layer, where judge_fd and judge_kid are measured.", validator=positive
    )
    seed: int = option(
        0, help="Seed of the judge's weights, minibatches and image subsets (not the run's: runs on one data set share a judge)."
    )
    kid_subsets: int = option(100, help="KID: random subsets averaged.", validator=positive)
    kid_subset_size: int = option(1000, help="KID: images per subset (capped at the smaller set).", validator=positive)
    cache_dir: str = option(
        "",
        help=f"Folder of trained judges; empty: {SUBFOLDER}/ in $BIFAMILY_CACHE_DIR, else in $XDG_CACHE_HOME/bifamily "
        "or ~/.cache/bifamily.",
    )

    def build(self, ctx: MetricContext) -> JudgeMetric:
        cache = Path(self.cache_dir) if self.cache_dir else default_cache_dir() / SUBFOLDER
        return JudgeMetric(self, ctx.model.resolution, ctx.model.channels, cache, ctx.seed)

    @property
    def training(self) -> JudgeTraining:
        return JudgeTraining(steps=self.steps, batch_size=self.batch_size, lr=self.lr, seed=self.seed)


@attrs.frozen
class _Reference:
    """A judge and its verdicts on the held-out real images (they do not change between evaluations)."""

    judge: JudgeNet
    fingerprint: str
    settings: dict[str, Any]
    real: Verdicts
    accuracy: float
    class_names: list[str]


@attrs.define(eq=False)
class JudgeMetric:
    config: JudgeConfig
    resolution: int
    channels: int
    cache_dir: Path
    seed: int
    _reference: _Reference | None = attrs.field(default=None, init=False)
    directions = {
        "judge_recognisable": "max",
        "judge_recognisable_ratio": "max",
        "judge_coverage": "max",
        "judge_fd": "min",
        "judge_kid": "min",
    }
    needs_labels = True

    def compute(self, subject: Subject) -> MetricResult:
        from bifamily.evaluation.fid import fid_from_features, generated_features, kid_from_features

        c = self.config
        reference = self.reference(subject)
        latents = torch.Generator().manual_seed(derive_seed(self.seed, "judge"))

        def sample(k: int) -> Tensor:
            images = subject.generator(subject.prior.sample(k, generator=latents).to(subject.device))
            return resize_images(images.float(), self.resolution)

        count = max(2, c.samples)
        features, logits = generated_features(sample, count, subject.batch_size, reference.judge, subject.device)
        generated, real = Verdicts(features, logits.softmax(dim=1)), reference.real
        subset = min(c.kid_subset_size, count, len(real.features))
        recognisable, recognisable_real = generated.recognisable(c.confidence), real.recognisable(c.confidence)
        values = {
            "judge_recognisable": recognisable,
            "judge_recognisable_real": recognisable_real,
            "judge_recognisable_ratio": recognisable / recognisable_real if recognisable_real > 0 else math.nan,
            "judge_coverage": generated.coverage(),
            "judge_coverage_real": real.coverage(),
            "judge_fd": fid_from_features(generated.features, real.features),
            "judge_kid": kid_from_features(
                generated.features, real.features, num_subsets=c.kid_subsets, max_subset_size=subset, seed=self.seed
            ),
            "judge_accuracy": reference.accuracy,
        }
        settings: dict[str, Any] = {
            "samples": count,
            "generator": "ema",
            "real_split": "test",
            "real_images": len(real.features),
            "confidence": c.confidence,
            "resolution": self.resolution,
            "judge": reference.settings,
            "judge_fingerprint": reference.fingerprint,
            "kid_subsets": c.kid_subsets,
            "kid_subset_size": subset,
        }
        details = {"sample_classes": dict(zip(reference.class_names, generated.class_counts()))}
        return MetricResult(values, settings, details=details)

    def report_line(self, values: dict[str, float], initial: dict[str, float] | None) -> str:
        return (
            f"sample judge ({100 * values['judge_accuracy']:.1f}% accurate on held-out images): "
            f"{100 * values['judge_recognisable']:.1f}% of generated samples recognisable vs "
            f"{100 * values['judge_recognisable_real']:.1f}% of held-out real images; class coverage "
            f"{values['judge_coverage']:.2f} vs {values['judge_coverage_real']:.2f}; judge FD {values['judge_fd']:.2f}"
        )

    def reference(self, subject: Subject) -> _Reference:
        """The judge of the subject's data set (kept from an earlier call, read from the cache, or trained
        and cached) with its verdicts on the held-out real images."""
        c = self.config
        train, test = _at_epoch_zero(subject.train_data), subject.test_data
        num_classes = require_labels(train, "metric 'judge'")
        architecture = JudgeArchitecture(self.channels, self.resolution, num_classes, c.width, c.feature_dim)
        train_count = min(c.train_images, len(train))
        settings = settings_of(architecture, c.training, train_count)
        fingerprint = judge_fingerprint(subject.data_key, data_digest(train, test), settings)
        if self._reference is not None and self._reference.fingerprint == fingerprint:
            return self._reference
        real_indices = seeded_subset(len(test), c.real_images, derive_seed(c.seed, "judge real"))
        real_images, real_labels = load_images(test, real_indices, self.resolution, subject.batch_size)
        path = judge_path(self.cache_dir, fingerprint)
        judge = load_judge(path, fingerprint, architecture)
        trained = judge is None
        if judge is None:
            started = time.perf_counter()
            train_indices = seeded_subset(len(train), train_count, derive_seed(c.seed, "judge train"))
            images, labels = load_images(train, train_indices, self.resolution, subject.batch_size)
            judge = train_judge(images, labels, architecture, c.training, subject.device)
            seconds = time.perf_counter() - started
        judge = judge.to(subject.device)
        real = judge_images(judge, real_images, subject.batch_size, subject.device)
        accuracy = real.accuracy(real_labels)
        class_names = list(getattr(train, "class_names", [str(k) for k in range(num_classes)]))
        if trained:
            save_judge(path, judge, fingerprint, settings, class_names, accuracy, len(real_images))
            _notes.info(
                f"sample judge trained in {seconds:.1f} s on {train_count} images "
                f"(held-out accuracy {100 * accuracy:.1f}%), cached in {path}"
            )
        self._reference = _Reference(judge, fingerprint, settings, real, accuracy, class_names)
        return self._reference


def _at_epoch_zero(dataset: Dataset) -> Dataset:
    """A data set with per-epoch augmentation, as at epoch 0 (a copy: the trainer's own is untouched),
    so the judge's training images and the data fingerprint do not depend on the run's progress."""
    if not hasattr(dataset, "set_epoch"):
        return dataset
    copied = copy.copy(dataset)
    copied.set_epoch(0)
    return copied
