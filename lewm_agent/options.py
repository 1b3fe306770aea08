"""Settings declared once: a dataclass field carries its default and a one-line description, and the
command line is generated from the fields, so no default is typed twice.

    @dataclass
    class Protocol:
        episodes: int = option(50, "evaluation episodes")

    add_options(parser, Protocol)                       # --episodes (int, default 50, that help)
    Protocol(**options_of(args, Protocol))

Field metadata understood here: ``help`` (required), ``flag`` (another option name, e.g. ``--lambda``),
``cli=False`` (not on the command line), ``choices``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import MISSING, field

_TYPES = {"int": int, "float": float, "str": str}


def option(default, help: str, **metadata):
    """A dataclass field with its default and one-line description. ``default=MISSING``: required."""
    metadata = {"help": help, **metadata}
    if default is MISSING:
        return field(metadata=metadata)
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _value_type(annotation: str):
    """``int``, ``float`` or ``str`` for annotations such as ``"int | None"``; None for others."""
    parts = [p.strip() for p in str(annotation).split("|") if p.strip() != "None"]
    return _TYPES.get(parts[0]) if len(parts) == 1 else None


def cli_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and "help" in f.metadata]


def add_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), positional: tuple[str, ...] = (),
                help_suffix: dict[str, str] | None = None) -> None:
    """One argument per field of dataclass ``cls`` (except ``skip``): ``positional`` fields become
    positional arguments, required fields required options, booleans ``--flag``/``--no-flag``."""
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        text = f.metadata["help"] + (help_suffix or {}).get(f.name, "")
        if f.name in positional:
            parser.add_argument(f.name, type=_value_type(f.type) or str, help=text, choices=f.metadata.get("choices"))
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not MISSING else None
        kw = {"dest": f.name, "help": text}
        if str(f.type) == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kw)
            continue
        if f.default is MISSING and f.default_factory is MISSING:
            kw["required"] = True
        elif default is not None:
            kw["help"] += f" (default: {default})"
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        parser.add_argument(flag, type=_value_type(f.type) or str, default=default, **kw)


def options_of(args: argparse.Namespace, cls, skip: tuple[str, ...] = ()) -> dict:
    """The values of ``cls``'s command-line fields in parsed ``args``."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls) if f.name not in skip and hasattr(args, f.name)}


__all__ = ["add_options", "cli_fields", "option", "options_of"]
