"""Errors a user can fix. The CLI prints them as plain lines (no traceback) and exits with code 2."""

from __future__ import annotations


class BifamilyError(Exception):
    """An error caused by the user's input (recipe, files, plugins), reported without a traceback."""

    def lines(self) -> list[str]:
        return [str(self)]


class RecipeError(BifamilyError):
    """One or more problems in a recipe, each a line starting with its key path (``$.run.steps: ...``)."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        prefix = f"{self.source}: " if self.source else ""
        return [f"{prefix}{problem}" for problem in self.problems]


class PluginError(BifamilyError):
    """A plugin that failed to load, registered a duplicate name, or broke a contract."""


class CheckpointError(BifamilyError):
    """A checkpoint that is missing, truncated, corrupted or does not match the recipe."""


class DataError(BifamilyError):
    """A data set that cannot be read: missing root, empty folder, malformed files."""
