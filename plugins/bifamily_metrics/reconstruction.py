"""Reconstruction quality: G(E(x)) against x and against a random pairing, with grids."""

from __future__ import annotations

import attrs
import torch

from bifamily.config import non_negative, one_of, option, positive
from bifamily.evaluation.features import iterate_batches
from bifamily.metric_interfaces import Grid, MetricContext, MetricResult, Subject
from bifamily.evaluation.reconstruction import (
    iterated_reconstructions,
    reconstruct,
    reconstruction_error,
    side_by_side,
    strip,
)


@attrs.frozen
class ReconstructionConfig:
    """Reconstructions G(E(x)) of the first `images` images of `split` with the EMA weights: the mean
    squared per-pixel error to their inputs (pixels in [-1, 1], at the generator's resolution) next to
    the error of the same reconstructions to a random other input (a seeded random pairing, never an
    image with itself), and their ratio (below 1: reconstructions keep something of their own input).
    Grids: inputs beside reconstructions; the iterated reconstruction R_0 = x, R_{i+1} = G(E(R_i))
    (Appendix B) of the first `strip_images`, one row each. Values: recon_error, recon_ratio (lower is
    better), recon_error_random."""

    images: int = option(256, help="Images whose reconstruction error is measured (at least 2).", validator=positive)
    split: str = option("test", help="Data split the images come from.", validator=one_of("train", "test"))
    grid_images: int = option(16, help="Images shown beside their reconstructions.", validator=positive)
    strip_images: int = option(8, help="Rows of the iterated-reconstruction strip.", validator=positive)
    iterations: int = option(8, help="Reconstruction iterations R_1 .. R_k in the strip (0: no strip).", validator=non_negative)

    def build(self, ctx: MetricContext) -> ReconstructionMetric:
        return ReconstructionMetric(self, ctx.seed)


@attrs.frozen
class ReconstructionMetric:
    config: ReconstructionConfig
    seed: int
    directions = {"recon_error": "min", "recon_ratio": "min"}
    needs_labels = False

    def compute(self, subject: Subject) -> MetricResult:
        c, ctx = self.config, subject.context
        data = subject.split(c.split)
        n = max(2, min(c.images, len(data)))
        inputs, recons = [], []
        for images, _ in iterate_batches(data, n, subject.batch_size):
            images = images.to(subject.device)
            inputs.append(images)
            recons.append(reconstruct(subject.generator, subject.encoder, images, ctx))
        x, x_hat = torch.cat(inputs), torch.cat(recons)
        error = reconstruction_error(x, x_hat, seed=self.seed)
        shown = min(c.grid_images, n)
        images = {"pairs": Grid(*side_by_side(x[:shown], x_hat[:shown]))}
        if c.iterations > 0:
            rows = min(c.strip_images, n)
            iterated = iterated_reconstructions(subject.generator, subject.encoder, x[:rows], ctx, c.iterations)
            images["iterated"] = Grid(*strip(iterated))
        values = {"recon_error": error.error, "recon_error_random": error.random_pairing_error, "recon_ratio": error.ratio}
        settings = {
            "split": c.split,
            "images": n,
            "error": "mean squared per pixel, [-1, 1] range",
            "resolution": ctx.resolution,
            "baseline": "random pairing (seeded derangement)",
        }
        return MetricResult(values, settings, images)
