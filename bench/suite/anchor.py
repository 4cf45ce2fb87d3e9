"""The anchor: the MNIST 32x32 model of the public PyTorch BigBiGAN reimplementation.

github.com/RKorzeniowski/BigBiGAN-PyTorch, configuration ``img_grayscale_32x32_config`` with batch
64: a BigGAN-style generator (linear to 4x4x256, up-blocks 256-256-128-64 with self-attention at
16x16), a 6-block RevNet encoder with a residual-MLP head, and image, latent and joint discriminators;
one iteration is 2 D updates and 1 G+E update on one batch. Its parameter counts and FLOPs below were
counted with torch (``FlopCounterMode``, one iteration); its speed on the project's 2-core CPU is the
figure of issue 8. ``--reference-checkout DIR`` times a local checkout of it in the same run instead
(nothing of it is shipped with bifamily).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

BATCH = 64
REFERENCE: dict[str, Any] = {
    "repository": "https://github.com/RKorzeniowski/BigBiGAN-PyTorch",
    "model": "MNIST 32x32 (img_grayscale_32x32_config), batch 64, 2 D updates + 1 G/E update per iteration",
    "parameters": {"generator": 2_093_473, "encoder": 587_624, "discriminator": 2_484_436},
    "discriminator_parameters": {"image": 2_372_050, "latent": 42_113, "joint": 70_273},
    "flops_per_step": 525_233_250_304,
    "batch_images_per_s": 36.0,
    "step_seconds": 1.8,
    "source": "issue 8 (measured on the project's 2-core CPU); parameters and FLOPs counted with torch",
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure_reference(checkout: Path, warmup: int, steps: int) -> dict[str, Any]:
    """Time the reference's training iteration (its pipeline's loop body, data loading left out) on
    random 32x32 images; count its parameters and FLOPs. Run in a child: it imports the checkout."""
    sys.path.insert(0, str(checkout))
    from src.configs import MNIST  # the reference's own modules
    from src.model import architecture, losses

    config = MNIST.config
    config.device, config.bs = "cpu", BATCH
    torch.manual_seed(0)
    model = architecture.BigBiGAN.from_config(config)
    opt_ge = torch.optim.Adam(model.get_gen_enc_params(), lr=config.lr_gen, betas=config.betas)
    opt_d = torch.optim.Adam(model.get_disc_params(), lr=config.lr_disc, betas=config.betas)
    loss_d, loss_ge = losses.BiDiscriminatorLoss(), losses.GeneratorEncoderLoss()
    images, labels = torch.rand(BATCH, 1, 32, 32), torch.randint(0, config.num_cls, (BATCH,))

    def iteration() -> None:
        model.req_grad_disc(True)
        for _ in range(config.disc_steps):
            fake, noise = model.generate_imgs(cls=labels)
            z_hat = model.generate_latent(img=images)
            opt_d.zero_grad()
            scores = model(img_real=images, img_gen=fake.detach(), z_noise=noise, z_img=z_hat.detach(), cls=labels)
            loss_d(scores).backward()
            opt_d.step()
        model.req_grad_disc(False)
        opt_ge.zero_grad()
        loss_ge(model(img_real=images, img_gen=fake, z_noise=noise, z_img=z_hat, cls=labels)).backward()
        opt_ge.step()

    for _ in range(warmup):
        iteration()
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        iteration()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    with FlopCounterMode(display=False) as counter:
        iteration()
    parts = {
        "image": _count(model.img_discriminator),
        "latent": _count(model.latent_discriminator),
        "joint": _count(model.comb_discriminator),
    }
    step_seconds = statistics.median(walls)
    return {
        **REFERENCE,
        "parameters": {
            "generator": _count(model.generator),
            "encoder": _count(model.encoder),
            "discriminator": sum(parts.values()),
        },
        "discriminator_parameters": parts,
        "flops_per_step": counter.get_total_flops(),
        "step_seconds": step_seconds,
        "step_cpu_seconds": statistics.median(cpus),
        "batch_images_per_s": BATCH / step_seconds,
        "source": f"measured in this run from {checkout}",
    }
