"""User-facing errors.

A :class:`UserError` is something the user can fix (a bad config, missing data, a foreign
checkpoint). The command-line entry points print it as ONE line ``error: ...`` on stderr and
exit with code 2; anything else is an internal error (exit 1, with a traceback).
:func:`guard` and :class:`OneLineParser` implement that contract for every command.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


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


class ProcessGroupError(Exception):
    """A process of a torchrun run stopped answering or ended: exit code 3 (neither the user's
    input nor a bug; the same command with ``--auto-resume`` continues the run)."""


class RunCollapsed(Exception):
    """The collapse alarm stopped the run (``train.on_collapse: stop``) after a checkpoint of
    its step: exit code 4 (the input may be fine; the run learns nothing worth its time)."""


class Interrupted(Exception):
    """Ctrl-C, with what to do next (:func:`guard` prints it as one line, exit code 130)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one ``error:`` line (exit 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{message} (see {self.prog} --help)")


def guard(fn: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None,
          interrupted: str = "interrupted") -> int:
    """Run a command-line main ``fn(argv)``: a :class:`UserError` becomes one line
    ``error: ...`` on stderr and exit code 2; a :class:`ProcessGroupError` likewise with exit
    code 3, a :class:`RunCollapsed` with exit code 4; Ctrl-C prints ``error: <interrupted>``
    and exits 130; anything else propagates (exit 1 with its traceback)."""
    try:
        return fn(argv)
    except UserError as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ProcessGroupError as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        return 3
    except RunCollapsed as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
    except Interrupted as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        return 130
