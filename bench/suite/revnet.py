"""The RevNet memory benchmark (``bench/revnet_memory.py``, maintained on its own) as part of the suite."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
import tempfile
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "revnet_memory.py"


def revnet_memory(arguments: tuple[str, ...]) -> dict[str, Any]:
    """The script's JSON result, run as its own command line runs it (call it in a child process:
    it sets ``sys.argv``)."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "revnet_memory.json"
        sys.argv = [str(SCRIPT), *arguments, "--output", str(output)]
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(SCRIPT), run_name="__main__")
        return json.loads(output.read_text())
