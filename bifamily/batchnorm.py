"""Cross-replica batch norm: the statistics of a training batch cover every rank's share of it.

BigBiGAN normalises G and E over the whole (global) batch. On CUDA that is ``nn.SyncBatchNorm``; it
refuses CPU tensors once a process group exists, so on CPU (gloo) :class:`AllReduceBatchNorm2d` does
the same with one differentiable all-reduce. Components never choose: they create every batch norm
of G and E through ``BuildContext.batch_norm``, and :func:`batch_norm_for` picks the class.

Both keep the state-dict layout of ``nn.BatchNorm2d``, so checkpoints move freely between runs with
and without a process group. In eval mode both use the running statistics and communicate nothing,
which is what EMA copies and evaluation on rank 0 alone rely on.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn


def batch_norm_for(device: torch.device, world_size: int) -> Callable[..., nn.Module]:
    """The ``BuildContext.batch_norm`` factory, ``factory(num_features, affine=True)``, for a run."""
    if world_size == 1:
        return nn.BatchNorm2d
    if device.type == "cuda":
        return nn.SyncBatchNorm
    return AllReduceBatchNorm2d


def _spans_ranks() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are those of the batch summed over all ranks.

    Each rank computes its channel mean and variance in fp32 (two-pass, numerically stable), then one
    all-reduce in float64 sums ``[n * mean, n * (var + mean^2), n]``, from which the global mean and
    biased variance follow without cancellation trouble. The all-reduce is differentiable (torch's
    functional collectives; backward all-reduces the gradients), so gradients equal those of one
    batch norm over the combined batch. Running statistics are updated as ``nn.BatchNorm2d`` does (unbiased variance,
    ``momentum`` or the cumulative average when it is None); every rank ends with the same values.

    Every rank must call it in the same order (it is a collective), as DDP training does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _spans_ranks()):
            return super().forward(x)
        self._check_input_dim(x)
        mean, var, count = self._global_moments(x)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        y = x.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        return y.to(x.dtype)

    @staticmethod
    def _global_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        local_var, local_mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
        n = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        local_mean, local_var = local_mean.double(), local_var.double()
        packed = torch.cat([local_mean * n, (local_var + local_mean.square()) * n, n])
        total = funcol.all_reduce(packed, "sum", dist.group.WORLD)
        channels = x.shape[1]
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels : 2 * channels] / count - mean.square()).clamp_min(0.0)
        return mean.float(), var.float(), count.float()

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked.item())
        else:
            factor = self.momentum
        unbiased = var * (count / (count - 1.0).clamp_min(1.0))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
