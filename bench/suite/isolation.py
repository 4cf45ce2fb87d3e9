"""Run one measurement in a child process of its own.

Why a process per measurement: peak memory is a property of the process, and on the CPU the honest
figure is the resident set (RSS) -- it includes what torch's tensors hold, oneDNN's scratch buffers,
compiled kernels and the allocator's slack, none of which the profiler's tensor-allocation events
see. A fresh child per configuration gives each one its own peak (``ru_maxrss`` starts at the RSS
inherited at fork), and keeps compile caches and allocator state from leaking between modes.

Children come from a fork server (``multiprocessing``'s "forkserver"): a clean process that imports
torch and the measurement modules once (:func:`preload`) and forks a child per measurement, so a child
costs milliseconds instead of a torch import. Forking the caller itself would not be safe: a process
that has run an OpenMP-parallel operator leaves its children hanging in their first parallel region,
and one that has initialised CUDA leaves them unable to use it.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

import attrs

_RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


class MeasurementFailed(Exception):
    """The child raised (the message is its traceback) or died."""


@attrs.frozen
class Isolated:
    """A child's return value with its peak resident memory and the resident memory it started from."""

    value: Any
    rss_start_bytes: int
    peak_rss_bytes: int


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT


def _child(send: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    start = _peak_rss_bytes()
    try:
        value = fn(*args)
    except BaseException:  # report anything, including KeyboardInterrupt, to the parent
        send.send(("error", traceback.format_exc(), start, _peak_rss_bytes()))
    else:
        send.send(("ok", value, start, _peak_rss_bytes()))
    finally:
        send.close()


_CONTEXT = multiprocessing.get_context("forkserver")


def preload(modules: list[str]) -> None:
    """Modules the fork server imports once, before its first child (call before :func:`isolated`)."""
    _CONTEXT.set_forkserver_preload(modules)


def isolated(fn: Callable[..., Any], *args: Any) -> Isolated:
    """``fn(*args)`` in a child of the fork server; raises :class:`MeasurementFailed` if it raised or
    died. ``fn`` and ``args`` must pickle (a module-level function, plain data, recipes).

    The child is not a daemon: compile workers and data-loader workers are its own children.
    """
    receive, send = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(target=_child, args=(send, fn, args))
    child.start()
    send.close()
    try:
        status, value, start, peak = receive.recv()
    except EOFError:
        child.join()
        raise MeasurementFailed(f"the measurement process died (exit code {child.exitcode})") from None
    finally:
        receive.close()
    child.join()
    if status == "error":
        raise MeasurementFailed(value)
    return Isolated(value, start, peak)
