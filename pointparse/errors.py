"""User-facing errors: one clear message that names the file and what is wrong."""

from __future__ import annotations

from pathlib import Path


class PointParseError(Exception):
    """Base class for every error meant to be shown to a user without a traceback."""


class DataError(PointParseError):
    """A dataset file or folder is missing, unreadable or inconsistent.

    The message always starts with the offending path so it can be found and fixed.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ConfigError(PointParseError):
    """An unknown name, a bad parameter value or an inconsistent set of options."""


def unknown_choice(kind: str, name: str, valid) -> ConfigError:
    """The error for a name missing from a registry: it lists the valid choices."""
    choices = ", ".join(sorted(valid))
    return ConfigError(f"unknown {kind} {name!r}; valid choices: {choices}")
