"""What reaches the terminal: colour only where it belongs, and the run's log records.

Colour follows https://no-color.org: none when ``NO_COLOR`` is set to a non-empty value, and none
when the stream is not a terminal (click strips the escape codes then). Log records go through tqdm's
external-write mode, so a line printed while the progress bar shows never tears it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import click
from tqdm import tqdm

from bifamily.runlog import PROGRESS, REPORT, logging_at_info

_LEVEL_COLOURS = {logging.WARNING: "yellow", logging.ERROR: "red"}


def colour() -> bool | None:
    """click's ``color`` argument: False under NO_COLOR, else None (colour on terminals only)."""
    return False if os.environ.get("NO_COLOR") else None


def echo(text: str, *, err: bool = False) -> None:
    """``click.echo`` that honours NO_COLOR."""
    click.echo(text, err=err, color=colour())


def label(text: str, colour_name: str) -> str:
    """A bold, coloured prefix such as ``error:`` (plain where colour is off)."""
    return click.style(text, fg=colour_name, bold=True)


class ConsoleHandler(logging.Handler):
    """Log records on the terminal: results (``bifamily.report``) on stdout, everything else on stderr;
    progress lines (``bifamily.progress``) only where no progress bar shows the same."""

    def __init__(self, *, bar: bool):
        super().__init__()
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar and record.name == PROGRESS:
            return
        stream = sys.stdout if record.name == REPORT else sys.stderr
        text = self.format(record)
        level_colour = _LEVEL_COLOURS.get(record.levelno)
        if level_colour is not None:
            text = f"{label(record.levelname.lower() + ':', level_colour)} {text}"
        with tqdm.external_write_mode(file=stream):
            click.echo(text, file=stream, color=colour())


@contextlib.contextmanager
def showing_run_log(*, bar: bool) -> Iterator[None]:
    """Print the run's log records on the terminal inside the block (``bar``: a progress bar shows
    the progress, so its plain lines stay off the terminal)."""
    with logging_at_info(ConsoleHandler(bar=bar)):
        yield
