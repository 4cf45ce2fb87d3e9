"""What a run does when it must stop or go back (docs/reliability.md): the ranks agree on a stop signal
after every step, and on rank 0's answer where ``eval.stop_when`` may end the run; after SIGTERM or
SIGINT the step's checkpoint is written and the run stops; a diverged step stops the run (exit code 3)
or, with ``guard.on_nonfinite = "rollback"``, reloads the latest checkpoint and goes on with a fresh
data order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from bifamily.distributed import World
from bifamily.guard import NonFinite
from bifamily.stopping import Diverged, Interrupted, StopSignals, signal_name
from bifamily.train_state import load_state

if TYPE_CHECKING:
    from bifamily.train import Trainer


def _control_group(world: World) -> Any:
    """The process group that carries the per-step stop flag: host memory only, so agreeing on a stop
    never makes the host wait for a GPU. gloo's default group is that already; NCCL gets a gloo twin."""
    if world.size == 1 or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


class Recovery:
    """Stop signals and guard rollbacks of one trainer."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.signals = StopSignals()
        self.rollbacks_since_checkpoint = 0
        self._rolled_back_to: Path | None = None  # the checkpoint of the last rollback
        self._control = _control_group(trainer.world)

    def agreed_stop(self) -> int:
        """The stop signal any rank has received (0: none): every rank gets the same answer after the
        same step. One all-reduce of one integer in host memory per step (about 0.2 ms on gloo)."""
        signum = self.signals.received
        if self.trainer.world.size > 1:
            flag = torch.tensor([signum], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._control)
            signum = int(flag.item())
        return signum

    def agreed_finish(self, finish: bool) -> bool:
        """Rank 0's answer to whether the run ends after this step, on every rank (one broadcast of one
        integer in host memory): only rank 0 evaluates the metrics that decide it."""
        if self.trainer.world.size == 1:
            return finish
        flag = torch.tensor([int(finish)], dtype=torch.int32)
        dist.broadcast(flag, src=0, group=self._control)
        return bool(flag.item())

    def _continue_hint(self) -> str:
        return f"continue with: bifamily run RECIPE --out {self.trainer.writer.path} --resume"

    def interrupted(self, signum: int) -> Interrupted:
        """After the tick wrote the stop checkpoint: wait for rank 0's write, then the exception to raise."""
        trainer = self.trainer
        trainer.world.barrier()
        lines = [
            f"{signal_name(signum)} after step {trainer.state.step}: its checkpoint is in {trainer.checkpoints.directory}",
            self._continue_hint(),
        ]
        return Interrupted(signum, lines, main_rank=trainer.world.is_main)

    def recover(self, failure: NonFinite, signum: int) -> None:
        """Roll back to the latest checkpoint with fresh data, or raise when the guard says to stop."""
        trainer = self.trainer
        guard, main, step = trainer.settings.guard, trainer.world.is_main, trainer.state.step
        latest = trainer.world.on_main(trainer.checkpoints.latest)
        where = f"the latest checkpoint is {latest}" if latest is not None else "there is no checkpoint"
        if signum:
            lines = [
                f"{signal_name(signum)} after step {step}, no checkpoint written: {failure.describe()}",
                f"{where}; {self._continue_hint()}",
            ]
            raise Interrupted(signum, lines, main_rank=main)
        headline = f"training diverged: {failure.describe()} (found after step {step})"
        if guard.on_nonfinite == "stop":
            raise Diverged(
                [
                    headline,
                    f"nothing from step {failure.step} on was logged or checkpointed; {where}",
                    'set guard.on_nonfinite = "rollback" to go back to it and retry on fresh data automatically',
                ],
                main_rank=main,
            )
        if latest != self._rolled_back_to:  # a checkpoint was written since the last rollback
            self.rollbacks_since_checkpoint = 0
        if latest is None or self.rollbacks_since_checkpoint >= guard.max_rollbacks:
            tries = f"after {self.rollbacks_since_checkpoint} rollback(s) without a new checkpoint"
            raise Diverged([headline, f"giving up {tries}; {where}"], main_rank=main)
        state = trainer.state
        rollbacks = state.rollbacks + 1
        load_state(state, trainer.checkpoints, latest, trainer.writer if main else None)
        state.set_rollbacks(rollbacks)
        self.rollbacks_since_checkpoint += 1
        self._rolled_back_to = latest
        trainer.watch.reset()
        if main:
            logging.getLogger("bifamily").warning(
                f"{headline}: rolled back to step {trainer.state.step} "
                f"(rollback {self.rollbacks_since_checkpoint} of at most {guard.max_rollbacks}), with a fresh data order"
            )
