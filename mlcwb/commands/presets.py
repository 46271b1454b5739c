"""``mlcwb presets [NAME]``: the presets of ``mlcwb reproduce``, or one of them as YAML.

Without NAME: each shipped preset with its description and, where one was measured, its
end-to-end time. With NAME: the preset's file as it ships, comments included, to copy and edit:
``mlcwb presets quick > mine.yaml``, then ``mlcwb reproduce --preset mine.yaml``.
"""

from __future__ import annotations

import argparse
import textwrap

WIDTH = 99


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "presets",
        help="list the presets of mlcwb reproduce, or print one (mlcwb presets quick > mine.yaml)",
        description="List the presets of `mlcwb reproduce` with their descriptions and measured "
                    "times, or print one as YAML to copy and edit: `mlcwb presets quick > mine.yaml "
                    "&& mlcwb reproduce --preset mine.yaml`.")
    p.add_argument("name", nargs="?", help="the preset to print as YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlcwb.presets import preset_text

    print(preset_text(args.name) if args.name else listing(), end="")
    return 0


def listing() -> str:
    """Each shipped preset: its name, then its description and measured time, wrapped."""
    from mlcwb.presets import load_preset, preset_names

    names = preset_names()
    indent = " " * (max(map(len, names)) + 2)
    lines: list[str] = []
    for name in names:
        preset = load_preset(name)
        lines += textwrap.wrap(preset.description, WIDTH, initial_indent=name.ljust(len(indent)),
                               subsequent_indent=indent)
        if preset.measured:
            lines += textwrap.wrap(f"measured: {preset.measured}", WIDTH, initial_indent=indent,
                                   subsequent_indent=indent)
    lines += [""] + textwrap.wrap("`mlcwb presets NAME` prints one as YAML; `mlcwb reproduce "
                                  "--preset NAME` runs it (or --preset FILE, a copy you edited).",
                                  WIDTH)
    return "\n".join(lines) + "\n"
