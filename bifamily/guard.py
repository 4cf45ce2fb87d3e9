"""Watching for divergence without making the host wait for the device.

Each update records, on the device, whether its losses and gradient norms were finite; the record
keeps the first step at which each watched quantity was not. Recording is a few tiny device
operations and never a ``.item()``: the trainer reads the record (one small all-reduce and one copy)
only at ticks where it waits for the device anyway (logging, grids, checkpoints), and before every
checkpoint, so a diverged state is never saved.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import torch
import torch.distributed as dist

from bifamily.distributed import World

SOURCES = (
    "discriminator loss",
    "discriminator gradients",
    "generator+encoder loss",
    "generator gradients",
    "encoder gradients",
)
_NEVER = 2**62


@attrs.frozen
class NonFinite:
    """The first step at which something was not finite, and what (one or more of SOURCES)."""

    step: int
    sources: tuple[str, ...]

    def describe(self) -> str:
        *rest, last = self.sources
        what = f"{', '.join(rest)} and {last}" if rest else last
        verb = "were" if rest or last.endswith("gradients") else "was"
        return f"at step {self.step} the {what} {verb} not finite (NaN or infinite)"


class NonFiniteWatch:
    """The first non-finite step of each of SOURCES, kept on ``device``."""

    def __init__(self, device: torch.device | str):
        self.first = torch.full((len(SOURCES),), _NEVER, dtype=torch.int64, device=device)

    def record(self, source: str, value: torch.Tensor, step: int) -> None:
        """Note ``step`` for ``source`` unless every element of ``value`` is finite."""
        i = SOURCES.index(source)
        finite = torch.isfinite(value.detach()).all()
        self.first[i] = torch.where(finite, self.first[i], self.first[i].clamp(max=step))

    def record_gradients(self, source: str, parameters: Iterable[torch.nn.Parameter], step: int) -> None:
        """Note ``step`` unless the gradients' total norm is finite (a NaN or inf anywhere makes it not)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads:
            self.record(source, torch.nn.utils.get_total_norm(grads), step)

    def first_failure(self, world: World) -> NonFinite | None:
        """The earliest failure on any rank (every rank must call this), or None."""
        first = self.first.clone()
        if world.size > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        steps = first.tolist()
        step = min(steps)
        if step == _NEVER:
            return None
        return NonFinite(step, tuple(source for source, s in zip(SOURCES, steps) if s == step))

    def reset(self) -> None:
        self.first.fill_(_NEVER)
