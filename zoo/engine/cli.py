"""The shared config/CLI style: a dataclass is the config, its fields become ``--options``.

Every harness declares ``@dataclass class Config`` with defaults and ``help`` metadata and calls
``parse_config(Config)``; ``--help`` then lists every option with its default. Field names map to
``--kebab-case`` flags; ``bool`` fields get ``--flag/--no-flag``; ``list`` fields take several values.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, List, Optional, Sequence, Type, TypeVar

__all__ = ["parse_config", "arg", "config_to_dict"]

C = TypeVar("C")


def arg(default: Any = dataclasses.MISSING, help: str = "", choices: Optional[Sequence] = None, **kw) -> Any:
    """A dataclass field with CLI help text (and optional choices). Lists may be given as defaults."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def _unwrap_optional(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def parse_config(cls: Type[C], argv: Optional[List[str]] = None, description: Optional[str] = None,
                 prog: Optional[str] = None) -> C:
    """Build an ``argparse`` parser from dataclass ``cls`` and return the parsed config instance.

    ``prog`` names the command in ``--help`` (e.g. ``"python -m tasks.copying"``).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description or (cls.__doc__ or "").strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        kw: dict = dict(default=default, help=f.metadata.get("help", "") or " ", dest=f.name)
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(tp) in (list, List):
            (inner,) = typing.get_args(tp)
            parser.add_argument(flag, nargs="+", type=inner, **kw)
        else:
            parser.add_argument(flag, type=tp, **kw)
        del optional
    ns = parser.parse_args(argv)
    return cls(**vars(ns))


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
