"""Exceptions that carry a one-line, user-facing message.

The CLI prints ``error: <message>`` for any :class:`UnetzooError` and exits with
status 2, so every message must say what is wrong *and* what to do about it.
"""

from __future__ import annotations


class UnetzooError(Exception):
    """Base class for errors a user can fix (bad input, bad configuration)."""


class ModelError(UnetzooError, ValueError):
    """Unknown model name, bad model option or an input the model cannot take."""


class DataError(UnetzooError, ValueError):
    """Missing, malformed or inconsistent dataset files."""


class ConfigError(UnetzooError, ValueError):
    """Bad command-line flag or configuration value."""


class CheckpointError(UnetzooError, ValueError):
    """Missing, corrupt, foreign or mismatched checkpoint / weight file."""
