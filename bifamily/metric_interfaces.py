"""The metric protocol: what a metric plugin builds, what it is computed on and what it returns.

A metric is registered by a plugin (``bifamily_register_metrics``) as a config class whose
``build(ctx: MetricContext)`` returns a :class:`Metric`. A :class:`Subject` is what is evaluated: the
EMA generator and encoder of a model with its prior and data. Each computation gives a
:class:`MetricResult`: named values, the settings that make them comparable (sample counts, splits,
feature network, resizer), optional image grids and optional details (results that are not single
numbers). Recording results (``metrics.jsonl``) and building metrics from a recipe are
:mod:`bifamily.evaluation.metrics`' job; this module knows neither recipes nor the plugin registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Protocol

import attrs
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from bifamily.context import BuildContext
from bifamily.evaluation.features import extract_features
from bifamily.interfaces import Encoder, LatentPrior

if TYPE_CHECKING:  # importing it loads clean-fid, which takes seconds
    from bifamily.evaluation.feature_networks import FeatureNetwork

Direction = Literal["max", "min"]
FEATURE_SOURCES: tuple[str, ...] = ("pooled", "posterior_mean")


@attrs.frozen
class Grid:
    """Images (N, C, H, W) in [-1, 1] to be saved as one PNG grid of ``nrow`` images per row."""

    images: Tensor
    nrow: int


@attrs.frozen
class MetricResult:
    """Named values, the settings that make them comparable, and optional image grids and details.

    ``details`` holds results that are not single numbers (a class histogram): written to the record
    beside the values, never plotted, and not part of the settings, which say how values were computed.
    """

    values: dict[str, float]
    settings: dict[str, Any]
    images: dict[str, Grid] = attrs.field(factory=dict)
    details: dict[str, Any] = attrs.field(factory=dict)


@attrs.define(eq=False)
class Subject:
    """What metrics evaluate: a generator and an encoder (the EMA weights), the prior, the data.

    Features are cached per (source, split, count), so metrics that share them (probe and k-NN)
    extract them once.
    """

    generator: nn.Module
    encoder: Encoder
    prior: LatentPrior
    context: BuildContext
    train_data: Dataset
    test_data: Dataset
    data_key: dict[str, Any]  # the resolved [data] section: names the data set and its preprocessing
    batch_size: int
    seed: int
    _features: dict[tuple[str, str, int], tuple[Tensor, Tensor]] = attrs.field(factory=dict, init=False)

    @property
    def device(self) -> torch.device:
        return self.context.device

    def split(self, name: str) -> Dataset:
        return {"train": self.train_data, "test": self.test_data}[name]

    def features(self, source: str, split: str, n: int) -> tuple[Tensor, Tensor]:
        """Frozen encoder features (min(n, len), F) of the first images of ``split``, and their labels."""
        data = self.split(split)
        count = min(n, len(data))
        key = (source, split, count)
        if key not in self._features:
            self._features[key] = extract_features(
                feature_function(self.encoder, source),
                data,
                count,
                batch_size=self.batch_size,
                device=self.device,
                resize_to=self.context.encoder_input_resolution,
            )
        return self._features[key]


def feature_function(encoder: Encoder, source: str) -> Callable[[Tensor], Tensor]:
    """``"pooled"``: the backbone's evaluation features (``encoder.features``, the pooled output);
    ``"posterior_mean"``: the mean of the posterior."""
    if source == "pooled":
        return encoder.features
    if source == "posterior_mean":
        return lambda x: encoder(x).mean
    raise ValueError(f"feature source must be one of {FEATURE_SOURCES}, got {source!r}")


class Metric(Protocol):
    """A built metric. ``directions`` names the values a run may select its best snapshot by.

    A metric may also define ``report_line(values, initial) -> str``: its line in the end-of-run report,
    from its values on the trained weights and, for a metric the report also runs on the encoder at
    initialisation (``[eval] report``), its values there (else None). Without it the report prints
    the values as they are.
    """

    directions: Mapping[str, Direction]
    needs_labels: bool

    def compute(self, subject: Subject) -> MetricResult: ...


@attrs.frozen
class MetricContext:
    """Passed to a metric config's ``build(ctx)``.

    ``model`` is the build context of the evaluated model (resolutions, channels, device);
    ``train_samples`` and ``test_samples`` are the recipe's shared sample counts of the representation
    metrics ([eval]); ``feature_network(name, key)`` builds a registered feature network with its
    [feature_networks.NAME] settings (``key`` is the recipe key that named it, for error messages).
    """

    model: BuildContext
    seed: int
    train_samples: int
    test_samples: int
    feature_network: Callable[[str, str], FeatureNetwork]
