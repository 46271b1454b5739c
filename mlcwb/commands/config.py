"""``mlcwb config train``: print the default training config as commented YAML.

The comments come from the config classes themselves (field types, the allowed values their
module declares, their docstrings and inline comments), so the printed file cannot drift from
what ``mlcwb train`` accepts: ``mlcwb config train > run.yaml`` loads back to ``TrainConfig()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from typing import Any

WIDTH = 99
KINDS = ("train",)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config", help="print a commented default config (mlcwb config train > run.yaml)",
        description="Print a default configuration as commented YAML, to edit and pass back: "
                    "`mlcwb config train > run.yaml && mlcwb train run.yaml`.")
    p.add_argument("kind", choices=KINDS, help="which configuration")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlcwb.train_config import TrainConfig

    header = ("mlcwb train configuration. Edit and run `mlcwb train FILE` (or `accelerate launch "
              "-m mlcwb train FILE`); unknown keys are errors that name the closest known key.")
    print(commented_yaml(TrainConfig(), header), end="")
    return 0


def commented_yaml(config: Any, header: str = "") -> str:
    """``config`` (a dataclass instance) as YAML that loads back to an equal config, each key
    preceded by a comment: its type, the allowed values, and what the class documents about it."""
    cls = type(config)
    lines = _comment(header) + _comment(_summary(cls)) if header else _comment(_summary(cls))
    return "\n".join(lines + _fields(config, indent="")) + "\n"


def _fields(config: Any, indent: str) -> list[str]:
    cls = type(config)
    hints = typing.get_type_hints(cls)
    docs = {**_inline_comments(cls), **_docstring_entries(cls)}
    lines: list[str] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        # a section written out below needs no list of its keys here
        kind = _type_words(hints[field.name], keys=not dataclasses.is_dataclass(value))
        choices = _choices(cls, field.name)
        text = kind + (", one of " + ", ".join(choices) if choices else "") + "."
        if field.name in docs:
            text += " " + docs[field.name].rstrip(".;,") + "."
        if not indent:
            lines.append("")
        lines += _comment(text, indent)
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{field.name}:")
            lines += _fields(value, indent + "  ")
        else:
            lines.append(indent + _yaml_line(field.name, value))
    return lines


def _yaml_line(key: str, value: Any) -> str:
    """``key: value`` on one line, lists and mappings in flow style (``[en, zh]``)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=sys.maxsize)
    return f"{key}: {text.removesuffix(chr(10)).removesuffix(chr(10) + '...')}"


def _comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH - len(indent) - 2, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ", break_on_hyphens=False)


def _summary(cls: type) -> str:
    """The docstring's first paragraph."""
    return " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())


def _docstring_entries(cls: type) -> dict[str, str]:
    """Docstring lines that start with a field name in double backticks, with their continuation
    lines (a line starting with another backticked word that is no field continues the entry)."""
    names = {f.name for f in dataclasses.fields(cls)}
    entries: dict[str, str] = {}
    current = None
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines()[1:]:
        line = line.strip()
        match = re.match(r"``(\w+)", line)
        if match and match.group(1) in names:
            current = match.group(1)
            entries[current] = line
        elif line and current:
            entries[current] += " " + line
        else:
            current = None
    return {name: text.replace("``", "") for name, text in entries.items()}


def _inline_comments(cls: type) -> dict[str, str]:
    """``field: type = default  # this`` comments in the class source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        match = re.match(r"\s+(\w+)\s*:", token.line) if token.type == tokenize.COMMENT else None
        if match:
            found[match.group(1)] = token.string.lstrip("# ")
    return found


def _choices(cls: type, name: str) -> tuple[str, ...] | None:
    """The allowed values a field's module declares as ``NAME``/``NAMES``/``NAMEES`` (``ALIGNS``
    for ``align``, ``PREF_LOSSES`` for ``pref_loss``): the tuples ``validate`` checks against."""
    module = sys.modules[cls.__module__]
    for constant in (name.upper(), name.upper() + "S", name.upper() + "ES"):
        values = getattr(module, constant, None)
        if isinstance(values, tuple) and values and all(isinstance(v, str) for v in values):
            return values
    return None


def _type_words(hint: Any, keys: bool = True) -> str:
    """A type in words: ``int``, ``str or list of str``, ``mapping (r: 16, ...) or null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a, keys) for a in args)
    if origin is list:
        return f"list of {_type_words(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_words(args[0])} to {_type_words(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(hint):
        if not keys:
            return "mapping"
        return "mapping (" + ", ".join(f"{f.name}: {_default_text(f)}" for f in dataclasses.fields(hint)) + ")"
    return getattr(hint, "__name__", str(hint))


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "required"
