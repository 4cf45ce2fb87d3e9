"""Representation metrics on frozen encoder features: the linear probe (Appendix A) and k-NN (Appendix C)."""

from __future__ import annotations

from typing import Any

import attrs

from bifamily.config import check, in_range, one_of, option, positive
from bifamily.errors import RecipeError
from bifamily.evaluation.features import require_labels
from bifamily.evaluation.knn import knn_classify
from bifamily.evaluation.metrics import FEATURE_SOURCES, MetricContext, MetricResult, Subject
from bifamily.evaluation.probe import linear_probe
from bifamily.recipe import EvalConfig

_FEATURES_HELP = (
    "Features: 'pooled' (the backbone's globally pooled output, `encoder.features`, as the paper) or "
    "'posterior_mean' (the mean of the encoder's posterior)."
)


def _parse_lrs(text: str) -> tuple[float, ...]:
    try:
        lrs = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise RecipeError([f"$.metrics.probe.lrs: expected comma-separated numbers, got {text!r}"]) from None
    if any(lr <= 0 for lr in lrs):
        raise RecipeError([f"$.metrics.probe.lrs: learning rates must be > 0, got {text!r}"])
    return lrs


def _counts(subject: Subject, eval_config: EvalConfig) -> tuple[int, int]:
    return min(eval_config.train_samples, len(subject.train_data)), min(eval_config.test_samples, len(subject.test_data))


@attrs.frozen
class LinearProbeConfig:
    """Linear probe (BigBiGAN Appendix A): a linear classifier on frozen EMA-encoder features of the first
    `eval.train_samples` training images, initialised to zero, trained with Adam for `eval.probe_steps`
    steps with an EMA of its weights; a trainval split of those images selects the learning rate and the
    step (early stopping); top-1 and top-5 on the first `eval.test_samples` held-out images.
    Values: probe_top1, probe_top5 (higher is better), probe_trainval_top1. Needs labels."""

    features: str = option("pooled", help=_FEATURES_HELP, validator=one_of(*FEATURE_SOURCES))
    transform: str = option(
        "none",
        help="'none' (raw features) or 'bn_crelu' (batch norm with the fit split's statistics, then CReLU).",
        validator=one_of("none", "bn_crelu"),
    )
    lrs: str = option("", help="Extra learning rates to sweep with `eval.probe_lr`, comma-separated; selected on trainval.")
    batch_size: int = option(
        256, help="Minibatch of the classifier's Adam steps (full batch when the fit split is smaller).", validator=positive
    )
    ema_decay: float = option(
        0.9999,
        help="EMA decay of the classifier weights (ramped up early, see docs/evaluation.md).",
        validator=in_range(0.0, 1.0),
    )
    trainval_fraction: float = option(
        0.1,
        help="Fraction of the training images held out as trainval (selection only).",
        validator=check(lambda v: 0.0 < v < 1.0, "must be in (0, 1), got {value}"),
    )

    def build(self, ctx: MetricContext) -> LinearProbeMetric:
        lrs = tuple(dict.fromkeys((ctx.eval.probe_lr, *_parse_lrs(self.lrs))))
        return LinearProbeMetric(self, ctx.eval, lrs, ctx.seed)


@attrs.frozen
class LinearProbeMetric:
    config: LinearProbeConfig
    eval: EvalConfig
    lrs: tuple[float, ...]
    seed: int
    directions = {"probe_top1": "max", "probe_top5": "max", "probe_trainval_top1": "max"}
    needs_labels = True

    def compute(self, subject: Subject) -> MetricResult:
        num_classes = require_labels(subject.test_data, "the linear probe")
        n_train, n_test = _counts(subject, self.eval)
        train_x, train_y = subject.features(self.config.features, "train", n_train)
        test_x, test_y = subject.features(self.config.features, "test", n_test)
        result = linear_probe(
            train_x.to(subject.device),
            train_y,
            test_x,
            test_y,
            num_classes=num_classes,
            steps=self.eval.probe_steps,
            lrs=self.lrs,
            batch_size=self.config.batch_size,
            ema_decay=self.config.ema_decay,
            trainval_fraction=self.config.trainval_fraction,
            feature_transform=self.config.transform,
            seed=self.seed,
        )
        settings: dict[str, Any] = {
            "features": self.config.features,
            "transform": self.config.transform,
            "train_split": "train",
            "train_samples": n_train,
            "test_split": "test",
            "test_samples": n_test,
            "steps": self.eval.probe_steps,
            "lrs": list(self.lrs),
            "selected_lr": result.lr,
            "selected_step": result.steps_run,
            "trainval_fraction": self.config.trainval_fraction,
        }
        values = {"probe_top1": result.top1, "probe_top5": result.top5, "probe_trainval_top1": result.trainval_top1}
        return MetricResult(values, settings)


@attrs.frozen
class KnnConfig:
    """k-nearest-neighbour classification (BigBiGAN Appendix C): each of the first `eval.test_samples`
    held-out images takes the labels of its k most cosine-similar images among the first
    `eval.train_samples` training images (frozen EMA-encoder features, no training). Values: knn_top1,
    knn_top5 (higher is better). Needs labels."""

    k: int = option(20, help="Neighbours that vote (capped at the number of training images).", validator=positive)
    temperature: float | None = option(
        None, help="Votes weighted by exp(similarity / temperature); unset: one vote per neighbour.", validator=positive
    )
    features: str = option("pooled", help=_FEATURES_HELP, validator=one_of(*FEATURE_SOURCES))

    def build(self, ctx: MetricContext) -> KnnMetric:
        return KnnMetric(self, ctx.eval)


@attrs.frozen
class KnnMetric:
    config: KnnConfig
    eval: EvalConfig
    directions = {"knn_top1": "max", "knn_top5": "max"}
    needs_labels = True

    def compute(self, subject: Subject) -> MetricResult:
        num_classes = require_labels(subject.test_data, "k-NN classification")
        n_train, n_test = _counts(subject, self.eval)
        train_x, train_y = subject.features(self.config.features, "train", n_train)
        test_x, test_y = subject.features(self.config.features, "test", n_test)
        k = min(self.config.k, n_train)
        result = knn_classify(
            train_x.to(subject.device), train_y, test_x, test_y,
            k=k, num_classes=num_classes, temperature=self.config.temperature,
        )
        settings = {
            "features": self.config.features,
            "k": k,
            "temperature": self.config.temperature,
            "similarity": "cosine",
            "train_split": "train",
            "train_samples": n_train,
            "test_split": "test",
            "test_samples": n_test,
        }
        return MetricResult({"knn_top1": result.top1, "knn_top5": result.top5}, settings)
