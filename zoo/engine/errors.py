"""Errors a user can cause, and the one way a harness's ``main`` turns them into one line and an exit code.

* :class:`~zoo.engine.cli.ConfigError`: a bad option (exit 2, argparse's convention).
* :class:`RunError`: the run cannot go on or its results would lie: a non-finite loss, weight or metric, a
  checkpoint that is not one, an output folder another run is writing (exit 1, no results file written).
* :class:`Interrupted`: SIGINT; the checkpoint was saved and the message says how to resume (exit 130).

``python -m tasks.x`` ends with ``raise SystemExit(run_cli(main))``: the message goes to stderr as
``error: ...`` without a traceback (``ZOO_TRACEBACK=1`` shows it, for developers).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, List, Optional

from .cli import ConfigError

__all__ = ["RunError", "CheckpointError", "Interrupted", "run_cli", "ConfigError"]


class RunError(RuntimeError):
    """The run failed in a way the user can act on; the message is one line naming the cause and the fix."""


class CheckpointError(RunError):
    """A checkpoint is missing, truncated, corrupt, or from another model/harness."""


class Interrupted(RunError):
    """Training was interrupted (SIGINT/SIGTERM) after saving a checkpoint; ``resume_hint`` says how to go on."""

    def __init__(self, message: str, step: int = 0) -> None:
        super().__init__(message)
        self.step = step


def run_cli(main: Callable[[Optional[List[str]]], Any], argv: Optional[List[str]] = None) -> int:
    """Call ``main(argv)``; map user-facing errors to one line on stderr and an exit status.

    Returns 0 on success, 1 for :class:`RunError`, 2 for :class:`ConfigError`, 130 for an interrupt.
    """
    show_tb = os.environ.get("ZOO_TRACEBACK") == "1"
    try:
        main(argv)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ConfigError as e:
        if show_tb:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        if show_tb:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
