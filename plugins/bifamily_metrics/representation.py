"""Representation metrics on frozen encoder features: the linear probe (Appendix A) and k-NN (Appendix C)."""

from __future__ import annotations

from typing import Any

import attrs

from bifamily.config import check, in_range, one_of, option, positive
from bifamily.errors import RecipeError
from bifamily.evaluation.features import require_labels
from bifamily.evaluation.knn import knn_classify
from bifamily.evaluation.probe import linear_probe
from bifamily.metric_interfaces import FEATURE_SOURCES, MetricContext, MetricResult, Subject

def _top1_line(what: str, key: str, values: dict[str, float], initial: dict[str, float] | None) -> str:
    line = f"{what} top-1 on held-out images: EMA encoder {100 * values[key]:.1f}%"
    if initial is not None:
        line += f" vs the same encoder at initialisation {100 * initial[key]:.1f}%"
    return line


_FEATURES_HELP = (
    "Features: 'pooled' (the backbone's globally pooled output, `encoder.features`, as the paper) or "
    "'posterior_mean' (the mean of the encoder's posterior)."
)


def _parse_lrs(text: str) -> tuple[float, ...]:
    """The learning rates in ``text``, in order, without repeats."""
    try:
        lrs = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise RecipeError([f"$.metrics.probe.lrs: expected comma-separated numbers, got {text!r}"]) from None
    if not lrs or any(lr <= 0 for lr in lrs):
        raise RecipeError([f"$.metrics.probe.lrs: expected one or more learning rates > 0, got {text!r}"])
    return tuple(dict.fromkeys(lrs))


@attrs.frozen
class SampleCounts:
    """The recipe's shared sample counts of the representation metrics ([eval] train_samples, test_samples)."""

    train: int
    test: int

    @classmethod
    def of(cls, ctx: MetricContext) -> SampleCounts:
        return cls(ctx.train_samples, ctx.test_samples)

    def capped(self, subject: Subject) -> tuple[int, int]:
        return min(self.train, len(subject.train_data)), min(self.test, len(subject.test_data))


@attrs.frozen
class LinearProbeConfig:
    """Linear probe (BigBiGAN Appendix A): a linear classifier on frozen EMA-encoder features of the first
    `eval.train_samples` training images, initialised to zero, trained with Adam for `steps` steps with an
    EMA of its weights; a trainval split of those images selects the learning rate and the
    step (early stopping); top-1 and top-5 on the first `eval.test_samples` held-out images.
    Values: probe_top1, probe_top5 (higher is better), probe_trainval_top1. Needs labels."""

    features: str = option("pooled", help=_FEATURES_HELP, validator=one_of(*FEATURE_SOURCES))
    transform: str = option(
        "none",
        help="'none' (raw features) or 'bn_crelu' (batch norm with the fit split's statistics, then CReLU).",
        validator=one_of("none", "bn_crelu"),
    )
    steps: int = option(1000, help="Adam steps of the classifier (the paper: 5000).", validator=positive)
    lrs: str = option("0.01", help="Learning rates to sweep, comma-separated; the one with the best trainval accuracy is kept.")
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
        return LinearProbeMetric(self, SampleCounts.of(ctx), _parse_lrs(self.lrs), ctx.seed)


@attrs.frozen
class LinearProbeMetric:
    config: LinearProbeConfig
    counts: SampleCounts
    lrs: tuple[float, ...]
    seed: int
    directions = {"probe_top1": "max", "probe_top5": "max", "probe_trainval_top1": "max"}
    needs_labels = True

    def compute(self, subject: Subject) -> MetricResult:
        num_classes = require_labels(subject.test_data, "the linear probe")
        n_train, n_test = self.counts.capped(subject)
        train_x, train_y = subject.features(self.config.features, "train", n_train)
        test_x, test_y = subject.features(self.config.features, "test", n_test)
        result = linear_probe(
            train_x.to(subject.device),
            train_y,
            test_x,
            test_y,
            num_classes=num_classes,
            steps=self.config.steps,
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
            "steps": self.config.steps,
            "lrs": list(self.lrs),
            "selected_lr": result.lr,
            "selected_step": result.steps_run,
            "trainval_fraction": self.config.trainval_fraction,
        }
        values = {"probe_top1": result.top1, "probe_top5": result.top5, "probe_trainval_top1": result.trainval_top1}
        return MetricResult(values, settings)

    def report_line(self, values: dict[str, float], initial: dict[str, float] | None) -> str:
        return _top1_line("linear probe", "probe_top1", values, initial)


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
        return KnnMetric(self, SampleCounts.of(ctx))


@attrs.frozen
class KnnMetric:
    config: KnnConfig
    counts: SampleCounts
    directions = {"knn_top1": "max", "knn_top5": "max"}
    needs_labels = True

    def compute(self, subject: Subject) -> MetricResult:
        num_classes = require_labels(subject.test_data, "k-NN classification")
        n_train, n_test = self.counts.capped(subject)
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

    def report_line(self, values: dict[str, float], initial: dict[str, float] | None) -> str:
        return _top1_line("k-NN", "knn_top1", values, initial)
