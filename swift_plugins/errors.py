"""User errors: one line each on stderr, exit status 2; anything else keeps its traceback.

A mistake in what the user gave us (a bad record under ``--on_error raise``, a config key, a
missing model or data path) is a :class:`UserError` whose text already names the place, the
field, what is wrong and the fix. Every command's ``main`` runs under :func:`run_main`::

    $ python scripts/analyze_token_lengths.py --model_path M --train_jsonl data/train.jsonl
    error: data/train.jsonl:7: objects[2].poly: odd number of values (7); a polygon is x1, y1, ... (give every point both coordinates)
    $ echo $?
    2

A multi-line error (a config with three problems) prints three ``error:`` lines. A bug (any
other exception) is not caught: its traceback is what a maintainer needs. Ctrl-C (SIGINT) ends
a command with one line and exit status 130 (the shell's 128 + 2), no traceback; whatever the
command was writing is left incomplete and looks it (the analysis folder has no manifest, atomic
files were never renamed into place). A command-line mistake caught by argparse is a UserError
too (:class:`ArgumentParser`): one ``error:`` line, not argparse's usage block.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "ArgumentParser", "UserError", "format_user_error", "run_main"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
INTERRUPTED_LINE = "interrupted (Ctrl-C): nothing this run was writing is complete; run the command again"


class UserError(ValueError):
    """A problem in the user's input; ``str(e)`` is ``place: field: what is wrong (fix)`` (one line per problem)."""


def format_user_error(error: BaseException) -> str:
    """``error: ...`` lines for stderr, one per line of the message."""
    lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return "\n".join(f"error: {line}" for line in lines)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, bad int, missing required) are one-line UserErrors."""

    def error(self, message: str):
        raise UserError(f"command line: {message} (see {self.prog} --help)")


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """``main(argv)``; a :class:`UserError` is printed as ``error:`` lines and returns 2, Ctrl-C one line and 130."""
    try:
        return main(argv)
    except UserError as e:
        print(format_user_error(e), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"error: {INTERRUPTED_LINE}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
