"""Ending a run before ``run.steps``: on a scheduler's signal, or because training diverged.

SIGTERM (what a cluster scheduler sends before preemption) and SIGINT (Ctrl-C) are a request: the
current step finishes, a checkpoint is written and the process exits with 128 + the signal number
(143 or 130, what a shell reports for a process ended by that signal, so job scripts see the run did
not finish). A second signal ends the process at once; the checkpoints on disk stay loadable because
each is written atomically.

Schedulers often deliver one request twice (SLURM signals every process of a job step, and torchrun
forwards the signal it got to ranks that got it too), so a repeat within ``DUPLICATE_WINDOW_S`` of the
first counts as the same request.

This module imports nothing heavy: the command line catches :class:`TrainingStopped` without torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

EXIT_DIVERGED = 3
DUPLICATE_WINDOW_S = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class TrainingStopped(Exception):
    """The run ended early on purpose. ``lines`` are for the user; ``exit_code`` is the process's.

    Every rank raises it; ``main_rank`` says whether this process is the one that reports.
    """

    exit_code = 1

    def __init__(self, lines: list[str], *, main_rank: bool = True):
        self._lines = list(lines)
        self.main_rank = main_rank
        super().__init__("\n".join(self._lines))

    def lines(self) -> list[str]:
        return self._lines


class Interrupted(TrainingStopped):
    """Stopped on SIGTERM or SIGINT after finishing a step (and, normally, writing a checkpoint)."""

    def __init__(self, signum: int, lines: list[str], *, main_rank: bool = True):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(lines, main_rank=main_rank)


class Diverged(TrainingStopped):
    """A loss or gradient was not finite and the recipe's guard does not (or no longer) roll back."""

    exit_code = EXIT_DIVERGED


class StopSignals:
    """Turns SIGTERM and SIGINT into a request that the training loop reads after each step.

    ``received`` is 0 until a signal arrives, then that signal's number. Processes forked while the
    handlers are installed (data-loader workers) inherit them and ignore the signals: the training
    process shuts its workers down itself.
    """

    def __init__(self) -> None:
        self.received = 0
        self._first_at = 0.0
        self._pid = os.getpid()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle the signals inside the block (main thread only; elsewhere Python forbids it)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._pid = os.getpid()
        previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked worker
        now = time.monotonic()
        if not self.received:
            self.received, self._first_at = signum, now
            _say(
                f"bifamily: {signal_name(signum)} received: finishing this step, writing a checkpoint, "
                "then stopping (send it again to stop at once)"
            )
        elif now - self._first_at >= DUPLICATE_WINDOW_S:
            _say(f"bifamily: {signal_name(signum)} received again: stopping at once")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _say(line: str) -> None:
    """Write to stderr without Python's buffered streams (a handler may interrupt a write to them)."""
    with contextlib.suppress(OSError):  # nowhere left to report a failed report
        os.write(2, f"\n{line}\n".encode())
