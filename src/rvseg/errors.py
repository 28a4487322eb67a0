"""User-facing errors.

Every problem with a user's input is raised as an :class:`RvsegError` carrying one clear message
that names the file and what is wrong. The CLI prints ``rvseg: <message>`` and exits non-zero; it
never shows a traceback for these.
"""

from __future__ import annotations

from pathlib import Path


class RvsegError(Exception):
    """An error whose message is meant for the user (bad input, bad option, missing file)."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DataError(RvsegError):
    """An input file or folder that cannot be read as the layout it claims to be."""


class ConfigError(RvsegError):
    """An option or configuration value that is invalid."""
