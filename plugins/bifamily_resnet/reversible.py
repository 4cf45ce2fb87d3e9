"""Reversible residual stages whose backward pass recomputes activations instead of storing them.

Gomez et al. 2017 ("The Reversible Residual Network"): split the channels into halves x1, x2 and
compute y1 = x1 + F(x2), y2 = x2 + G(y1); the inputs follow from the outputs, x2 = y2 - G(y1),
x1 = y1 - F(x2). Following the RevNet of Kolesnikov et al. 2019 we build it from single additive
couplings that swap the halves, (a, b) -> (b, a + R(b)); two consecutive couplings with residuals
F and G are exactly the (F, G) block above:

    (x1, x2) -> (x2, x1 + F(x2)) = (x2, y1) -> (y1, x2 + G(y1)) = (y1, y2).

A coupling has one bottleneck (three conv layers), like one ResNet block, so stage lengths count
couplings and RevNet-50 keeps ResNet-50's 3-4-6-3 layout (a stage may end on half a block).

Memory: :class:`ReversibleStage` runs its couplings inside one autograd function that keeps only
the stage's output. Backward walks the couplings from last to first; for each it recomputes the
residual R(b) under ``enable_grad`` from the kept half b of its output (which is R's input, exactly),
uses it both to rebuild the input half a = (a + R(b)) - R(b) and to backpropagate, then drops that
coupling's graph. The live graph is one coupling at a time, for about one extra forward of compute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable


@contextlib.contextmanager
def preserved_buffers(module: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``module`` on exit.

    The recomputation must run in training mode so that its batch norms normalise with the same
    batch statistics as the forward did (their gradients depend on them), but a training-mode batch
    norm also folds the batch into its running mean/variance and bumps ``num_batches_tracked``.
    The forward already did that once; restoring the buffers keeps it at once. This works for any
    normalisation layer the context's factory supplies (cross-replica ones included), unlike
    setting momentum to 0, which would still count the batch and breaks with ``momentum=None``.
    """
    saved = [buffer.clone() for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(module.buffers(), saved):
                buffer.copy_(value)


class AdditiveCoupling(nn.Module):
    """(a, b) -> (b, a + residual(b)) on the two channel halves of its input.

    ``residual`` must be deterministic (no dropout or other randomness), so recomputing it in
    backward reproduces the forward's values and no RNG state has to be stashed.
    """

    def __init__(self, residual: nn.Module):
        super().__init__()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([b, a + self.residual(b)], dim=1)

    def backward_step(
        self, y: torch.Tensor, grad_y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
        """From this coupling's output and its gradient: (input, gradient wrt input, gradients of
        the trainable parameters in ``self.trainable()`` order)."""
        kept, updated = y.chunk(2, dim=1)
        grad_kept, grad_updated = grad_y.chunk(2, dim=1)
        params = self.trainable()
        # Buffers are restored only after autograd.grad: batch norm's backward reads the running
        # statistics it saved, and an in-place restore before it would trip the version check.
        with preserved_buffers(self.residual):
            with torch.enable_grad():
                b = kept.detach().requires_grad_()
                residual = self.residual(b)
            grad_b, *grad_params = torch.autograd.grad(
                residual, [b, *params], grad_updated, allow_unused=True
            )
        # Written straight into the halves of the results: no half-size temporaries.
        half = kept.shape[1]
        x, grad_x = torch.empty_like(y), torch.empty_like(grad_y)
        torch.sub(updated, residual.detach(), out=x[:, :half])
        x[:, half:] = kept
        grad_x[:, :half] = grad_updated
        torch.add(grad_kept, grad_b, out=grad_x[:, half:])
        return x, grad_x, grad_params

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class _RecomputingStage(torch.autograd.Function):
    """Autograd function over a sequence of couplings; saves only the final output.

    The couplings' trainable parameters are passed as inputs so autograd routes their gradients
    (returned from ``backward``) into ``.grad`` through the usual accumulation nodes, which is what
    DDP's gradient hooks listen to.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, couplings: Sequence[AdditiveCoupling], *params: torch.Tensor):
        ctx.couplings = couplings
        ctx.device_type = x.device.type
        ctx.autocast_enabled = torch.is_autocast_enabled(x.device.type)
        ctx.autocast_dtype = torch.get_autocast_dtype(x.device.type)
        y = x
        for coupling in couplings:
            y = coupling(y)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        (y,) = ctx.saved_tensors
        grads_per_coupling: list[list[torch.Tensor | None]] = []
        autocast = torch.autocast(
            ctx.device_type, dtype=ctx.autocast_dtype, enabled=ctx.autocast_enabled
        )
        with autocast:
            for coupling in reversed(ctx.couplings):
                y, grad_y, grad_params = coupling.backward_step(y, grad_y)
                grads_per_coupling.append(grad_params)
        param_grads = [g for grads in reversed(grads_per_coupling) for g in grads]
        return (grad_y, None, *param_grads)


class ReversibleStage(nn.Module):
    """A sequence of additive couplings at one resolution.

    With ``recompute=True`` (RevNet proper) training stores no activation inside the stage; with
    ``recompute=False`` the same modules run under ordinary autograd (for comparisons).
    """

    def __init__(self, couplings: Sequence[AdditiveCoupling], recompute: bool):
        super().__init__()
        self.couplings = nn.ModuleList(couplings)
        self.recompute = recompute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
            # Keep the residual stream float32 under autocast (the branches still run in low
            # precision): inputs are rebuilt by subtraction, which is only as exact as the stream.
            x = x.float()
        params = [p for coupling in self.couplings for p in coupling.trainable()]
        needs_graph = torch.is_grad_enabled() and (x.requires_grad or bool(params))
        if self.recompute and needs_graph:
            return _RecomputingStage.apply(x, tuple(self.couplings), *params)
        for coupling in self.couplings:
            x = coupling(x)
        return x
