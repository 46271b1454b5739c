"""What every ``mlcwb`` command shares: running a parsed command and turning mlcwb's errors into
one line.

It sits below ``mlcwb.cli`` and the command modules alike. Like every module here it imports
nothing heavy.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mlcwb.errors import MLCWBError


def run_command(args: argparse.Namespace, prog: str) -> int:
    """Run a parsed command; an ``MLCWBError`` becomes one line on stderr and exit status 2,
    because its message already says what to do and a stack trace would bury it. Ctrl-C ends it
    with status 130 (128 + SIGINT), as a shell expects, and no stack trace either: the command
    (``mlcwb reproduce``) has logged what was interrupted, and its locks are released."""
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except MLCWBError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = ["run_command"]
