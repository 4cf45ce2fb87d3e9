"""Reconstructions G(E(x)), their per-pixel error next to a random-pairing baseline, and the iterated
reconstruction R_0(x) = x, R_{i+1}(x) = G(E(R_i(x))) of BigBiGAN's Appendix B.

Images are compared at the generator's resolution (inputs resized to it); the encoder reads them at its
own. The code fed back is the posterior's point estimate (the mean, squashed for a tanh-uniform head).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from bifamily.context import BuildContext
from bifamily.evaluation.features import resize_images
from bifamily.interfaces import Encoder


@torch.inference_mode()
def reconstruct(generator: nn.Module, encoder: Encoder, images: Tensor, context: BuildContext) -> Tensor:
    """G(E(x)) at the generator's resolution for images (N, C, H, W) in [-1, 1]."""
    codes = encoder(resize_images(images, context.encoder_input_resolution)).point
    return generator(codes)


def iterated_reconstructions(
    generator: nn.Module, encoder: Encoder, images: Tensor, context: BuildContext, iterations: int
) -> Tensor:
    """(iterations + 1, N, C, R, R): R_0 = x (at the generator's resolution), R_{i+1} = G(E(R_i))."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    steps = [resize_images(images, context.resolution)]
    for _ in range(iterations):
        steps.append(reconstruct(generator, encoder, steps[-1], context))
    return torch.stack(steps)


def strip(iterated: Tensor) -> tuple[Tensor, int]:
    """Grid images and row length for an (I, N, ...) iteration stack: one row per input, R_0 .. R_k."""
    return iterated.transpose(0, 1).flatten(0, 1), iterated.shape[0]


def side_by_side(inputs: Tensor, reconstructions: Tensor, pairs_per_row: int = 8) -> tuple[Tensor, int]:
    """Grid images and row length with each input followed by its reconstruction."""
    inputs = resize_images(inputs, reconstructions.shape[-1])
    return torch.stack([inputs, reconstructions], dim=1).flatten(0, 1), 2 * min(pairs_per_row, inputs.shape[0])


def random_partners(n: int, generator: torch.Generator) -> Tensor:
    """A random derangement: ``partner[i] != i``, each index used once (a random cycle through all n)."""
    if n < 2:
        raise ValueError(f"a random pairing needs at least 2 images, got {n}")
    order = torch.randperm(n, generator=generator)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def pixel_error(a: Tensor, b: Tensor) -> float:
    """Mean squared difference per pixel and channel."""
    return float((a.float() - b.float()).pow(2).mean())


@attrs.frozen
class ReconstructionError:
    """Error of each reconstruction against its own input, and against a random other input."""

    error: float
    random_pairing_error: float

    @property
    def ratio(self) -> float:
        """Below 1: reconstructions are closer to their own input than to other images."""
        return self.error / self.random_pairing_error if self.random_pairing_error > 0 else float("inf")


def reconstruction_error(inputs: Tensor, reconstructions: Tensor, seed: int = 0) -> ReconstructionError:
    """Per-pixel error of G(E(x)) to x, and of G(E(x)) to x' for a seeded random pairing x' != x."""
    inputs = resize_images(inputs, reconstructions.shape[-1])
    partners = random_partners(inputs.shape[0], torch.Generator().manual_seed(seed))
    return ReconstructionError(
        error=pixel_error(reconstructions, inputs),
        random_pairing_error=pixel_error(reconstructions, inputs[partners.to(inputs.device)]),
    )
