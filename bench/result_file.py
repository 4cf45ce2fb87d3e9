"""What every bench module records about the machine, and how it writes its JSON."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """The machine a figure was measured on, including how busy it was when the result was written."""
    import torch

    from bench.suite.machine import cpu_model
    from bifamily.precision import native_bf16

    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "libc": " ".join(platform.libc_ver()),
        "cpus": os.cpu_count(),
        "torch": version("torch"),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def write(path: Path, report: dict[str, Any]) -> None:
    """``report`` with the machine added, as indented JSON at ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "machine": machine()}, indent=2) + "\n")
    print(f"written to {path}")
