"""Dataclass configs -> command-line flags, JSON, and printing.

Every stage has one @dataclass config. Each field carries its help text in ``metadata["help"]``
(use ``opt(default, "help")``). ``add_args`` turns a dataclass into argparse flags
(``n_layer`` -> ``--n-layer``; bools get ``--x/--no-x``), ``from_args`` builds the dataclass back,
so the CLI never repeats a default or a help string.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from typing import Any

from zhgpt.core.files import atomic_write_text  # noqa: F401  (re-exported: config.save_json's writer)
from zhgpt.errors import ZhgptError


def opt(default: Any = dataclasses.MISSING, help: str = "", *, choices=None, positional=False,
        cli=True, factory=None, aliases: tuple[str, ...] = ()):
    """A dataclass field with help text (and optional choices / extra flag names) for the generated CLI."""
    md = {"help": help, "choices": choices, "positional": positional, "cli": cli, "aliases": aliases}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def _base_type(tp):
    """Unwrap Optional[X] / X | None -> (X, is_optional); list[X] -> (list, X)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])[0], True
    return tp, False


def add_args(parser: argparse.ArgumentParser, cls, *, skip=(), defaults_none=False, group=None):
    """Add one flag per field of dataclass ``cls``. ``defaults_none`` makes every flag default to None
    (used for override flags such as model fields on top of a preset)."""
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    own = set(cls.__dict__.get("__annotations__", {}))
    # A config's own fields first, then those it inherits (e.g. DataConfig's read and clean options).
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        tp, _ = _base_type(hints[f.name])
        help_ = f.metadata.get("help", "")
        shown = (f.default if f.default is not dataclasses.MISSING else
                 (f.default_factory() if f.default_factory is not dataclasses.MISSING else None))
        default = None if defaults_none else shown
        if shown not in (None, "", []) and help_:
            help_ = f"{help_} (default: {shown})"
        help_ = help_.replace("%", "%%")   # argparse formats help strings with %
        kw: dict[str, Any] = {"help": help_, "default": default}
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        origin = typing.get_origin(tp)
        if f.metadata.get("positional"):
            name = [f.name]
            kw.pop("default")
            if origin is list:
                kw["nargs"] = "*" if default is not None else "+"
                if default is not None:
                    kw["default"] = default
        else:
            name = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
            kw["dest"] = f.name
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is list:
            kw.setdefault("nargs", "+")
            kw["type"] = typing.get_args(tp)[0]
        elif tp in (int, float, str):
            kw["type"] = tp
        target.add_argument(*name, **kw)


def from_args(cls, ns: argparse.Namespace, **extra):
    """Build dataclass ``cls`` from parsed flags (fields absent from ``ns`` keep their defaults)."""
    kw = {}
    for f in dataclasses.fields(cls):
        if hasattr(ns, f.name) and getattr(ns, f.name) is not None:
            kw[f.name] = getattr(ns, f.name)
    kw.update(extra)
    return cls(**kw)


def narrow(cfg, cls):
    """The ``cls`` part of a config that inherits from dataclass ``cls``, as a plain ``cls``."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


def overrides_from_args(cls, ns: argparse.Namespace) -> dict:
    """Fields of ``cls`` that were given explicitly on the command line (flags added with defaults_none)."""
    return {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)
            if getattr(ns, f.name, None) is not None}


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def format_config(cfg, title: str | None = None) -> str:
    """The resolved config as aligned 'name = value' lines (printed at the start of every stage)."""
    d = to_dict(cfg)
    width = max((len(k) for k in d), default=0)
    lines = [f"[{title or type(cfg).__name__}]"]
    lines += [f"  {k.ljust(width)} = {v!r}" for k, v in d.items()]
    return "\n".join(lines)


def print_config(*cfgs, titles: tuple[str | None, ...] = ()) -> None:
    """Print resolved configs at the start of a stage, always to stderr: stdout stays the stage's output
    (generated text, tables) so that `zhgpt generate ... > out.txt` and pipes get only that."""
    import sys
    for i, cfg in enumerate(cfgs):
        print(format_config(cfg, titles[i] if i < len(titles) else None), file=sys.stderr, flush=True)


def text_table(rows: list[tuple | list], right: bool = False) -> str:
    """Rows of strings (the first is the header) as aligned columns with a rule under the header.
    ``right`` right-aligns every column after the first (for tables of numbers)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(c.rjust(w) if right and i else c.ljust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths), *map(fmt, rows[1:])])


def save_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def load_json(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ZhgptError(f"{path}: file not found")
    except json.JSONDecodeError as e:
        raise ZhgptError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); the file is damaged, "
                         "re-create it")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str | float | int | None) -> float | None:
    """'90' / '90s' / '10m' / '1.5h' / '2d' -> seconds. None/'' -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ZhgptError(f"time budget {text!r} is not a duration; write e.g. 90s, 10m, 1.5h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_size(text: str) -> int:
    """'24GB' / '24GiB' / '512M' / '1e9' -> bytes (GB and GiB both treated as 2**30, as users mean it)."""
    m = re.match(r"^\s*([\d.e+]+)\s*([kmgt]?)i?b?\s*$", str(text).lower())
    if not m:
        raise ZhgptError(f"memory size {text!r} not understood; write e.g. 24GB or 512MB")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))
