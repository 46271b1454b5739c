"""``mlcwb reproduce``: run the notebook series end to end into ``runs/NAME``.

``mlcwb.presets`` is imported here for the presets' names (it imports nothing heavy; the help
must stay light, tests/test_cli.py); ``mlcwb.reproduce`` only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlcwb.presets import preset_names


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("reproduce", help="run the notebook series end to end into runs/NAME")
    p.add_argument("--preset", default="quick", metavar="NAME_OR_FILE",
                   help=f"a preset ({', '.join(preset_names())}; `mlcwb presets` describes them) "
                        "or a preset YAML file (`mlcwb presets quick > mine.yaml`, edited); "
                        "default quick")
    p.add_argument("--config", help="YAML overriding the preset (keys: common, notebooks, "
                                    "description, cell_timeout)")
    p.add_argument("--out", help="run directory (default runs/PRESET, a file's name without .yaml)")
    p.add_argument("--force", action="store_true", help="rerun stages that are up to date")
    p.add_argument("--from-stage", metavar="STAGE",
                   help="keep the stages before STAGE (e.g. 05 or 05_safety_comparison) as they are, "
                        "whatever changed, and rerun STAGE and the rest: applies an evaluation "
                        "change to a finished run without training again")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlcwb.reproduce import reproduce

    reproduce(args.out or f"runs/{Path(args.preset).stem}", args.preset, force=args.force,
              config=args.config, from_stage=args.from_stage)
    return 0
