"""Image-generation metrics: IS, FID and KID of EMA-generator samples against a data set's images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor

from bifamily.config import one_of, option, positive
from bifamily.evaluation.features import resize_images
from bifamily.metric_interfaces import MetricContext, MetricResult, Subject
from bifamily.randomness import derive_seed

if TYPE_CHECKING:  # clean-fid takes seconds to import: only when a metric is built
    from bifamily.evaluation.feature_networks import FeatureNetwork

CACHE_ENV = "BIFAMILY_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$BIFAMILY_CACHE_DIR``, else ``$XDG_CACHE_HOME/bifamily``, else ``~/.cache/bifamily``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bifamily"


class AtResolution:
    """A feature network fed images resized (antialiased bilinear) to the generator's resolution first,
    so data images and samples go through identical preprocessing (a no-op for the samples)."""

    def __init__(self, network: FeatureNetwork, size: int):
        self.network = network
        self.size = size
        self.name = network.name
        self.resizer = f"antialiased bilinear to {size}x{size}, then {network.resizer}"

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.network(resize_images(images.float(), self.size))

    def to(self, device: torch.device | str) -> AtResolution:
        self.network = self.network.to(device)
        return self


@attrs.frozen
class FidConfig:
    """IS, FID and KID with clean-fid's maths: `samples` images of the EMA generator (latents from a
    fixed seed) against the first `reference_samples` images of the data set's `reference_split`, both
    resized to the generator's resolution and fed to `feature_network`. Reference statistics are
    computed once and cached under a key of the data section, split, count, network and resizer.
    Values: fid, kid (lower is better), and is, is_std (higher is better) when the network has logits
    (Inception)."""

    feature_network: str = option(
        "inception",
        help="Registered feature network: 'inception' (clean-fid's Inception-v3, a local weights file) or "
        "'random_conv' (a fixed random conv net for small domains and tests); settings in [feature_networks.NAME].",
    )
    samples: int = option(10000, help="Generated images (the paper: 50000).", validator=positive)
    reference_split: str = option("train", help="Data split the samples are compared with.", validator=one_of("train", "test"))
    reference_samples: int | None = option(None, help="Reference images from that split; unset: all of it.", validator=positive)
    kid_subsets: int = option(100, help="KID: random subsets averaged.", validator=positive)
    kid_subset_size: int = option(1000, help="KID: images per subset (capped at the smaller set).", validator=positive)
    is_splits: int = option(
        10, help="Inception Score: parts the samples are split into for its mean and std.", validator=positive
    )
    cache_dir: str = option(
        "", help="Folder of cached reference statistics; empty: $BIFAMILY_CACHE_DIR, else ~/.cache/bifamily."
    )

    def build(self, ctx: MetricContext) -> FidMetric:
        network = ctx.feature_network(self.feature_network, "$.metrics.fid.feature_network")
        cache = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        return FidMetric(self, AtResolution(network, ctx.model.resolution), cache, ctx.seed)


@attrs.frozen
class FidMetric:
    config: FidConfig
    network: AtResolution
    cache_dir: Path
    seed: int
    directions = {"fid": "min", "kid": "min", "is": "max"}
    needs_labels = False

    def compute(self, subject: Subject) -> MetricResult:
        from bifamily.evaluation.fid import (
            feature_stats,
            fid_from_stats,
            generated_features,
            inception_score,
            kid_from_features,
            reference_stats,
        )

        c = self.config
        data = subject.split(c.reference_split)
        n_ref = min(c.reference_samples or len(data), len(data))
        mu, sigma, reference = reference_stats(
            data,
            self.network,
            n_ref,
            self.cache_dir / "reference-stats",
            {"data": subject.data_key, "split": c.reference_split},
            batch_size=subject.batch_size,
            device=subject.device,
        )
        latents = torch.Generator().manual_seed(derive_seed(self.seed, "fid"))

        def sample(k: int) -> Tensor:
            return subject.generator(subject.prior.sample(k, generator=latents).to(subject.device))

        features, logits = generated_features(sample, c.samples, subject.batch_size, self.network, subject.device)
        subset = min(c.kid_subset_size, c.samples, n_ref)
        values = {
            "fid": fid_from_stats(*feature_stats(features), mu, sigma),
            "kid": kid_from_features(features, reference, num_subsets=c.kid_subsets, max_subset_size=subset, seed=self.seed),
        }
        if logits is not None:
            values["is"], values["is_std"] = inception_score(logits, splits=min(c.is_splits, c.samples))
        settings: dict[str, Any] = {
            "samples": c.samples,
            "generator": "ema",
            "reference_split": c.reference_split,
            "reference_samples": n_ref,
            "feature_network": self.network.name,
            "resizer": self.network.resizer,
            "kid_subsets": c.kid_subsets,
            "kid_subset_size": subset,
        }
        if logits is not None:
            settings["is_splits"] = min(c.is_splits, c.samples)
        return MetricResult(values, settings)
