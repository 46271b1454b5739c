"""The `mlcwb` command: each subcommand is a thin shell over one stage's library function.

The parser comes from ``mlcwb.commands``, whose modules define arguments without importing the
stages, so ``mlcwb --help`` answers at once instead of after importing torch and transformers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mlcwb import __version__
from mlcwb.commands import (config, evaluate, extract, fetch_model, notebooks, presets, reproduce, train,
                            translate)
from mlcwb.commands.base import run_command

COMMANDS = (fetch_model, translate, extract, train, evaluate, reproduce, presets, config, notebooks)
DESCRIPTION = ("The Multi-Lingual Consistency workbench: fetch a model, translate prompts, extract "
               "hidden states, train with the MLC loss, evaluate safety per language, or run the "
               "whole notebook series (reproduce).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlcwb", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args, f"mlcwb {args.command}")


if __name__ == "__main__":
    sys.exit(main())
