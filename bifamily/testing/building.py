"""Building components the way a recipe does, for tests: contexts, configs and plugin sets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from bifamily.config import structure
from bifamily.context import BuildContext
from bifamily.errors import BifamilyError
from bifamily.plugins import AUTOLOAD_ENV, PluginSet, load_plugins

SMALL_CONTEXT = BuildContext(resolution=32, channels=3, latent_dim=16)
"""What the checks build with unless given a context: 32x32 RGB images, 16-d latents."""


def build(config: Any, *args: Any) -> Any:
    """``config.build(*args)``; a failure becomes an AssertionError naming the config."""
    try:
        return config.build(*args)
    except Exception as exc:
        raise AssertionError(f"{config!r}.build failed: {type(exc).__name__}: {exc}") from exc


@contextmanager
def _builtins_only() -> Iterator[None]:
    """Entry points of other distributions stay unloaded, whatever the environment says."""
    previous = os.environ.get(AUTOLOAD_ENV)
    os.environ[AUTOLOAD_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[AUTOLOAD_ENV]
        else:
            os.environ[AUTOLOAD_ENV] = previous


def plugin_set(module: ModuleType | None = None) -> PluginSet:
    """bifamily's own plugins plus ``module`` (a plugin module, installed or not), loaded through the
    same machinery as ``bifamily run``. Other installed plugins are left out, so a test sees exactly
    these. A name ``module`` registers twice, or that a built-in registers too, is an AssertionError."""
    try:
        with _builtins_only():
            builtins = load_plugins()
            if module is None or builtins.manager.is_registered(module):
                return builtins
            return load_plugins(extra=[module])
    except BifamilyError as exc:
        raise AssertionError(str(exc)) from exc


def component_config(kind: str, name: str, **fields: Any) -> Any:
    """The config of a built-in component, structured from ``fields`` as a recipe's ``[kind]`` table
    would be: ``component_config("posterior", "gaussian")``, ``component_config("encoder", "dcgan", ch=8)``."""
    entry = plugin_set().registry.get(kind, name)
    if entry is None:
        installed = ", ".join(plugin_set().registry.names(kind))
        raise AssertionError(f"no built-in {kind} named {name!r} (built-in: {installed})")
    try:
        return structure(fields, entry.config_cls, f"$.{kind}")
    except BifamilyError as exc:
        raise AssertionError(str(exc)) from exc
