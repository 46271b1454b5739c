"""``mlcwb reproduce``: run the notebook series end to end into ``runs/NAME``.

``mlcwb.reproduce`` itself is imported here for its preset names: it imports no torch, pandas
or papermill at load time (tests/test_cli.py checks that building the parser stays light).
"""

from __future__ import annotations

import argparse

from mlcwb.reproduce import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("reproduce", help="run the notebook series end to end into runs/NAME")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    p.add_argument("--config", help="YAML overriding the preset (keys: common, notebooks)")
    p.add_argument("--out", help="run directory (default runs/PRESET)")
    p.add_argument("--force", action="store_true", help="rerun stages that are up to date")
    p.add_argument("--from-stage", metavar="STAGE",
                   help="keep the stages before STAGE (e.g. 05 or 05_safety_comparison) as they are, "
                        "whatever changed, and rerun STAGE and the rest: applies an evaluation "
                        "change to a finished run without training again")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlcwb.reproduce import reproduce

    reproduce(args.out or f"runs/{args.preset}", args.preset, force=args.force, config=args.config,
              from_stage=args.from_stage)
    return 0
