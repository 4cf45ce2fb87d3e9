"""The RevNet memory benchmark (``python -m bench.revnet_memory``, maintained on its own) as part of the suite."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
import tempfile
from pathlib import Path
from typing import Any

MODULE = "bench.revnet_memory"


def revnet_memory(arguments: tuple[str, ...]) -> dict[str, Any]:
    """The module's JSON result, run as its own command line runs it (call it in a child process:
    it sets ``sys.argv``)."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "revnet_memory.json"
        sys.argv = [MODULE, *arguments, "--output", str(output)]
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
        return json.loads(output.read_text())
