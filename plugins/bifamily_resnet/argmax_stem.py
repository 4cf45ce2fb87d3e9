"""RevNet's stem with a memory-saving backward: it keeps the max-pool's argmax positions, not activations.

The stem (a 7x7 stride-2 convolution to the trunk's full width, then a 3x3 stride-2 max-pool) is not
invertible, and its convolution output is the largest activation of a RevNet: four times a stage-0
activation. Ordinary autograd keeps that output (the max-pool's backward reads it) and int64 argmax
indices until the backward pass reaches the stem. Neither is needed: the max-pool's gradient goes to the
argmax positions, and the convolution's weight gradient needs only its input -- the image batch, which
the caller holds anyway. So this stem saves the argmax positions in the narrowest integer type that
holds them, and runs forward and backward over the batch in :data:`BATCH_CHUNKS` pieces, so that its
full-resolution temporaries are the size of one stage-0 activation. The stem has no batch norm, so
chunking the batch changes no value. It costs no extra computation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_input, conv2d_weight

BATCH_CHUNKS = 4  # the convolution output is 4x a stage-0 activation (the max-pool has stride 2)


def _index_dtype(plane_size: int) -> torch.dtype:
    """The narrowest signed type that holds every flat position in a feature-map plane."""
    return torch.int16 if plane_size <= torch.iinfo(torch.int16).max + 1 else torch.int32


def _scatter_to_maxima(grad: torch.Tensor, indices: torch.Tensor, side: tuple[int, int]) -> torch.Tensor:
    """The max-pool's backward: each output gradient goes to its window's argmax, summed where windows
    overlap and share one."""
    n, c = grad.shape[:2]
    planes = grad.new_zeros((n, c, side[0] * side[1]))
    planes.scatter_add_(2, indices.flatten(2).long(), grad.flatten(2))
    return planes.view(n, c, *side)


class _ConvMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d, pool: nn.MaxPool2d):
        ctx.conv, ctx.pool = conv, pool
        ctx.chunk = math.ceil(x.shape[0] / BATCH_CHUNKS)
        pooled, indices = [], []
        for part in x.split(ctx.chunk):
            h = conv._conv_forward(part, weight, None)
            ctx.side = tuple(h.shape[2:])
            out, where = F.max_pool2d(
                h, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, True
            )
            pooled.append(out)
            indices.append(where.to(_index_dtype(math.prod(ctx.side))))
        ctx.save_for_backward(x, weight, torch.cat(indices))
        return torch.cat(pooled)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pooled: torch.Tensor):
        x, weight, indices = ctx.saved_tensors
        conv: nn.Conv2d = ctx.conv
        # Under autocast the forward convolved in grad_pooled's dtype; the backward does the same.
        dtype = grad_pooled.dtype
        geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(0, x.shape[0], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            grad_h = _scatter_to_maxima(grad_pooled[part], indices[part], ctx.side)
            if grad_weight is not None:
                grad_weight += conv2d_weight(x[part].to(dtype), weight.shape, grad_h, **geometry)
            if grad_x is not None:
                grad_x[part] = conv2d_input(x[part].shape, weight.to(dtype), grad_h, **geometry)
        return grad_x, grad_weight, None, None


class ArgmaxStem(nn.Sequential):
    """(bias-free conv, max-pool) whose training backward keeps only the argmax positions.

    Same modules, parameter names and outputs as the plain ``nn.Sequential`` stem; without a graph to
    build (evaluation, ``no_grad``) it is that plain stem.
    """

    def __init__(self, conv: nn.Conv2d, pool: nn.MaxPool2d):
        if conv.bias is not None or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("ArgmaxStem needs a bias-free, ungrouped, zero-padded convolution")
        super().__init__(conv, pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, pool = self[0], self[1]
        if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
            return _ConvMaxPool.apply(x, conv.weight, conv, pool)
        return super().forward(x)
