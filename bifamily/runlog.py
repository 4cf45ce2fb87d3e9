"""The run's log: everything a run reports, also written to RUN_DIR/log.txt, and plain progress lines.

A run reports through three loggers of the standard :mod:`logging` module:

- ``bifamily.progress``: a line every ``run.log_every`` steps (step, losses, images/s, elapsed, ETA),
  the text of the progress bar for logs and terminals that cannot show one;
- ``bifamily.report``: results (metric tables, a new best snapshot, the end-of-run report);
- ``bifamily``: notes and warnings.

On rank 0, :func:`file_log` sends all three, Python warnings and the reason a run ended early to
RUN_DIR/log.txt, appending, so a resumed run continues the log of the attempts before it. What reaches
the terminal is :mod:`bifamily.console`'s concern.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bifamily.errors import BifamilyError
from bifamily.rundir import LOG_FILE, STATS_FILE
from bifamily.stopping import TrainingStopped

ROOT = "bifamily"
PROGRESS = "bifamily.progress"
REPORT = "bifamily.report"
_FILE_FORMAT = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def logging_at_info(handler: logging.Handler) -> Iterator[None]:
    """``handler`` on the ``bifamily`` logger, which passes INFO records inside the block."""
    logger = logging.getLogger(ROOT)
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


@contextlib.contextmanager
def file_log(run_dir: Path, headline: str) -> Iterator[None]:
    """Inside the block, append the run's log records and Python warnings to ``run_dir/log.txt``; an
    error or early stop leaving the block is written there too (the command line prints it)."""
    handler = logging.FileHandler(run_dir / LOG_FILE, mode="a", encoding="utf-8")
    handler.setFormatter(_FILE_FORMAT)
    previous_showwarning = warnings.showwarning

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: Any = None, line: str | None = None) -> None:
        _write(handler, logging.WARNING, f"{category.__name__}: {message} ({filename}:{lineno})")
        previous_showwarning(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    _write(handler, logging.INFO, headline)
    try:
        with logging_at_info(handler):
            yield
    except TrainingStopped as stop:
        for line in stop.lines():
            _write(handler, logging.ERROR, f"stopped: {line}")
        raise
    except BifamilyError as error:
        for line in error.lines():
            _write(handler, logging.ERROR, f"error: {line}")
        raise
    except Exception:
        _write(handler, logging.ERROR, "internal error:", exc_info=sys.exc_info())
        raise
    finally:
        if warnings.showwarning is showwarning:
            warnings.showwarning = previous_showwarning
        handler.close()


def _write(handler: logging.Handler, level: int, text: str, exc_info: Any = None) -> None:
    """One record to ``handler`` alone (what the console shows by other means)."""
    handler.handle(logging.getLogger(ROOT).makeRecord(ROOT, level, "", 0, text, (), exc_info))


class ProgressLines:
    """A :class:`~bifamily.rundir.RunListener` that logs a ``bifamily.progress`` line for each
    stats.jsonl record: step, losses, images/s, time spent and the estimated time left (from the
    average pace since this process started training). Kept free of torch: the command line imports it."""

    def __init__(self, total_steps: int, start_step: int, clock: Callable[[], float] = time.monotonic):
        self.total_steps = total_steps
        self.clock = clock
        self.started = clock()
        self.pace_from = (start_step, self.started)  # (step, time) the pace is measured from
        self.last_step = start_step

    def appended(self, name: str, record: dict[str, Any]) -> None:
        if name == STATS_FILE:
            logging.getLogger(PROGRESS).info(self.line(record))

    def saved_grid(self, folder: str, step: int, images: Any, nrow: int) -> None:
        """Grids are not part of the progress."""

    def line(self, record: dict[str, Any]) -> str:
        step, now = int(record["step"]), self.clock()
        if step < self.last_step:  # a guard rollback: the pace is measured anew from here
            self.pace_from = (step, now)
        self.last_step = step
        parts = [f"step {step}/{self.total_steps}"]
        parts += [f"{key} {float(value):.4f}" for key, value in record.items() if key.startswith("loss")]
        if "images_per_s" in record:
            parts.append(f"{float(record['images_per_s']):.0f} img/s")
        parts.append(f"elapsed {_duration(now - self.started)}")
        pace_step, pace_time = self.pace_from
        if step > pace_step:
            parts.append(f"ETA {_duration((now - pace_time) * (self.total_steps - step) / (step - pace_step))}")
        return "  ".join(parts)


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))
