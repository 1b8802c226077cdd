"""User-facing errors.

A :class:`UserError` is something the user can fix (a bad config, missing data, a foreign
checkpoint). The command-line entry points print it as ONE line ``error: ...`` on stderr and
exit with code 2; anything else is an internal error (exit 1, with a traceback).
"""
from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; its message names the problem and the fix."""

    def __init__(self, message: str):
        # Keep the contract "one line": fold any newline the message may carry.
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """A configuration file, key, type or value is invalid."""


class DataError(UserError):
    """A dataset is missing, empty or unreadable."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, foreign or of another architecture."""
