"""The two modules a training step calls, shaped so that DDP sees one forward before each backward.

- :class:`GeneratorEncoder`: G and E in one module, (z, x_e, noise) -> (G(z), a sample of E(x_e)) and,
  when the loss has a reconstruction term, G of that sample.
  The G+E update is one optimizer over both, and with one container it is also one DDP reducer over
  both: one gradient all-reduce per update, bucketed across G and E. (Two DDPs would work too, but
  would all-reduce in two independent passes and need two ``no_sync`` contexts per micro-step.)
- :class:`ScorePairs`: D on the real pairs (x, E(x)) and the fake pairs (G(z), z) in one call, one
  batched D call when D has no batch statistics. D's DDP wrapper is used only in D updates; the G+E
  update, with D's parameters frozen, calls this plain module, so D's reducer never expects gradients
  that a frozen D does not produce.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bifamily.build import Model
from bifamily.interfaces import Encoder, Generator, JointDiscriminator, Posterior, Scores


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def reparameterised(posterior: Posterior, noise: torch.Tensor) -> torch.Tensor:
    """``posterior.sample()`` with its standard-normal noise given instead of drawn.

    The trainer draws the noise of the whole global batch on every rank and hands each rank its rows,
    so a sample does not depend on how the batch is split (``bifamily.randomness``).
    """
    if posterior.scale is None:
        z = posterior.mean
    else:
        z = posterior.mean + noise.to(posterior.mean.dtype) * posterior.scale
    return torch.tanh(z) if posterior.squash else z


class GeneratorEncoder(nn.Module):
    """G and E side by side: fake images from latents, latent samples from real images, and with
    ``reconstruct`` the reconstructions G(z_hat) of the real images (None otherwise)."""

    def __init__(self, generator: Generator, encoder: Encoder):
        super().__init__()
        self.generator = generator
        self.encoder = encoder

    def forward(
        self, z: torch.Tensor, x_e: torch.Tensor, noise: torch.Tensor, reconstruct: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        z_hat = reparameterised(self.encoder(x_e), noise)
        return self.generator(z), z_hat, self.generator(z_hat) if reconstruct else None


class ScorePairs(nn.Module):
    """D's scores of the real pairs (x, z_hat) and of the fake pairs (x_fake, z)."""

    def __init__(self, discriminator: JointDiscriminator):
        super().__init__()
        self.discriminator = discriminator

    def forward(
        self, x: torch.Tensor, z_hat: torch.Tensor, x_fake: torch.Tensor, z: torch.Tensor
    ) -> tuple[Scores, Scores]:
        d = self.discriminator
        if d.has_batch_statistics:
            return d(x, z_hat), d(x_fake, z)
        scores = d(torch.cat([x, x_fake]), torch.cat([z_hat, z]))
        return scores.split(x.shape[0])


@contextlib.contextmanager
def _evaluation_mode(modules: list[nn.Module]) -> Iterator[None]:
    was_training = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in zip(modules, was_training):
            module.train(training)


def parameters_without_gradient(model: Model, ge: GeneratorEncoder, pairs: ScorePairs) -> tuple[list[str], list[str]]:
    """Names of the D parameters L_D leaves without a gradient, and of the G/E parameters L_EG does.

    Typical case: a discriminator with unary heads and a loss that weights them 0. DDP must be told
    (``find_unused_parameters``) or it waits for those gradients forever. Found by one forward and
    backward on 2 random samples in eval mode with ``torch.autograd.grad``: no buffer, RNG or
    ``.grad`` changes. (A component that used different parameters in training mode would defeat it.)
    """
    ctx = model.context
    generator = torch.Generator().manual_seed(0)
    n = 2
    x = torch.rand((n, ctx.channels, ctx.resolution, ctx.resolution), generator=generator) * 2 - 1
    x_e = torch.rand((n, ctx.channels, ctx.encoder_input_resolution, ctx.encoder_input_resolution), generator=generator) * 2 - 1
    z = model.prior.sample(n, generator=generator)
    noise = torch.randn((n, ctx.latent_dim), generator=generator)
    x, x_e, z, noise = (t.to(ctx.device) for t in (x, x_e, z, noise))
    named_d = [(name, p) for name, p in pairs.named_parameters() if p.requires_grad]
    named_ge = [(name, p) for name, p in ge.named_parameters() if p.requires_grad]
    with _evaluation_mode([ge, pairs]):
        x_fake, z_hat, x_rec = ge(z, x_e, noise, reconstruct=model.loss.reconstructs)
        real, fake = pairs(x, z_hat, x_fake, z)
        loss_d, _ = model.loss.discriminator(real, fake)
        loss_ge, _ = model.loss.generator_encoder(real, fake)
        if x_rec is not None:
            loss_ge = loss_ge + model.loss.reconstruction(x, x_rec)[0]
        grads_d = torch.autograd.grad(loss_d, [p for _, p in named_d], retain_graph=True, allow_unused=True)
        grads_ge = torch.autograd.grad(loss_ge, [p for _, p in named_ge], allow_unused=True)
    unused_d = [name for (name, _), grad in zip(named_d, grads_d) if grad is None]
    unused_ge = [name for (name, _), grad in zip(named_ge, grads_ge) if grad is None]
    return unused_d, unused_ge
