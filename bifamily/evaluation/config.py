"""[eval]: which metrics run when (during training, in the end-of-run report) and the sample counts the
representation metrics share. Each metric's own settings go in [metrics.NAME] (docs/evaluation.md)."""

from __future__ import annotations

import attrs

from bifamily.config import InvalidValue, non_negative, option, positive
from bifamily.evaluation.stop_when import Target, parse_targets


def _readable_targets(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    try:
        parse_targets(value)
    except ValueError as exc:
        raise InvalidValue(attribute.name, str(exc)) from None


@attrs.frozen
class EvalConfig:
    """[eval]: the end-of-run report, metrics during training, and the sample counts the representation
    metrics share."""

    report: str = option(
        "probe,knn",
        help="Comma-separated metrics of the end-of-run report, each computed on the EMA encoder and on the same "
        "encoder at initialisation; empty: no report. Skipped for a data set without labels.",
    )
    train_samples: int = option(5000, help="Labelled training images the linear probe is fitted on (and k-NN searches).", validator=positive)
    test_samples: int = option(2000, help="Held-out images the linear probe and k-NN are scored on.", validator=positive)
    metrics: str = option(
        "probe,knn",
        help="Comma-separated metrics run every `every` steps and by `bifamily eval` (installed ones: "
        "`bifamily plugins`).",
    )
    every: int = option(
        0,
        help="During training, run `metrics` on the EMA weights every this many steps and at the last step "
        "(0: never). Rank 0 computes while other ranks go on.",
        validator=non_negative,
    )
    best: str = option(
        "",
        help="A value of the scheduled metrics (e.g. 'probe_top1', 'fid') by which RUN_DIR/best/snapshot.safetensors "
        "keeps the best snapshot; empty: none.",
    )
    stop_when: str = option(
        "",
        help="End the run at the first scheduled evaluation where every comparison holds, e.g. "
        "'judge_recognisable_ratio >= 0.8, judge_coverage >= 0.9' (values of `metrics`; '>=' for a value better "
        "higher, '<=' for one better lower); `run.steps` stays the cap. Empty: run all the steps.",
        validator=_readable_targets,
    )
    batch_size: int = option(256, help="Images per forward pass when metrics extract features or generate samples.", validator=positive)
    report_extra: str = option(
        "",
        help="Comma-separated metrics the end-of-run report adds, computed once on the EMA weights (e.g. 'judge': "
        "sample quality next to held-out real images); none when `report` is empty.",
    )

    @property
    def metric_names(self) -> list[str]:
        """The names in ``metrics``, in order, without blanks or repeats."""
        return _names(self.metrics)

    @property
    def stop_targets(self) -> tuple[Target, ...]:
        """The comparisons in ``stop_when`` (none when it is empty)."""
        return parse_targets(self.stop_when)

    @property
    def report_names(self) -> list[str]:
        """The names in ``report``, in order, without blanks or repeats."""
        return _names(self.report)

    @property
    def report_extra_names(self) -> list[str]:
        """The names in ``report_extra``, in order, without blanks or repeats."""
        return _names(self.report_extra)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    return list(dict.fromkeys(name for name in names if name))


