"""Evaluation throughput: features per second on the two paths every evaluation takes.

- probe path (linear probe and k-NN): the encoder's pooled features of held-out images,
  ``extract_features`` as ``Subject.features`` calls it;
- FID path (FID, KID, IS): generator samples through the feature network, ``generated_features``.
  The network is clean-fid's Inception when ``$BIFAMILY_INCEPTION_WEIGHTS`` names a local copy,
  otherwise the small random conv net (the JSON says which).

Both run under ``torch.inference_mode`` in the library; one warm-up batch precedes each timing.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from torch import nn

from bifamily.evaluation.feature_networks import INCEPTION_ENV, FeatureNetwork, RandomConvFeatures, load_inception
from bifamily.evaluation.features import extract_features
from bifamily.evaluation.fid import generated_features
from bifamily.metric_interfaces import feature_function
from bifamily.recipe import Recipe
from bifamily.session import prepare


def _feature_network(channels: int) -> FeatureNetwork:
    if os.environ.get(INCEPTION_ENV):
        return load_inception()
    return RandomConvFeatures(channels, seed=0)


def _rate(run: Callable[[int], Any], images: int, batch_size: int) -> float:
    run(min(images, batch_size))
    start = time.perf_counter()
    run(images)
    return images / (time.perf_counter() - start)


def evaluation_rates(recipe: Recipe, images: int) -> dict[str, Any]:
    """Features/s of the probe path and of the FID path, on ``images`` images each."""
    prepared = prepare(recipe)
    model, ctx = prepared.model, prepared.model.context
    for module in model.modules().values():
        module.eval()
    images = min(images, len(prepared.test_data))
    batch_size = recipe.eval.batch_size
    encoder_features = feature_function(model.encoder, "pooled")
    network = _feature_network(ctx.channels)
    generator: nn.Module = model.generator

    def probe(n: int) -> None:
        extract_features(
            encoder_features, prepared.test_data, n, batch_size, device=ctx.device, resize_to=ctx.encoder_input_resolution
        )

    def fid(n: int) -> None:
        generated_features(lambda k: generator(model.prior.sample(k, device=ctx.device)), n, batch_size, network, ctx.device)

    return {
        "images": images,
        "batch_size": batch_size,
        "probe_features_per_s": _rate(probe, images, batch_size),
        "fid_features_per_s": _rate(fid, images, batch_size),
        "fid_network": network.name,
    }
