"""``mlcwb notebooks DIR``: copy the notebook series out of the installed package.

With a ``pip install``-ed mlcwb the notebooks live inside site-packages, where JupyterLab users
should not edit them; this puts a working copy wherever the user wants one.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mlcwb.errors import ConfigError, MLCWBError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "notebooks", help="copy the notebook series (00_quickstart ...) into DIR",
        description="Copy the notebook series into DIR (created if missing), to open in JupyterLab. "
                    "Notebooks already in DIR are kept unless --force.")
    p.add_argument("dir", help="destination folder")
    p.add_argument("--force", action="store_true", help="overwrite notebooks of the same name in DIR")
    p.set_defaults(func=run)


def copy_notebooks(dest: str | Path, force: bool = False) -> list[Path]:
    """Copy every notebook of the series into ``dest``; returns the copies in series order.

    Refuses (before copying anything) to overwrite a notebook already there unless ``force``,
    because a copy in a user's folder is where their edits and outputs live.
    """
    from mlcwb.notebooks import notebook_paths
    from mlcwb.paths import repo_root

    sources = notebook_paths()
    if not sources:
        raise MLCWBError(f"No notebooks under {repo_root() / 'notebooks'}: this mlcwb install lacks "
                         f"them; reinstall it from a wheel or a checkout.")
    dest = Path(dest)
    clashes = [dest / s.name for s in sources if (dest / s.name).exists()]
    if clashes and not force:
        raise ConfigError(f"{', '.join(map(str, clashes))} already exist; pass --force to overwrite.")
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(source, dest / source.name)) for source in sources]


def run(args: argparse.Namespace) -> int:
    for path in copy_notebooks(args.dir, force=args.force):
        print(path)
    return 0
