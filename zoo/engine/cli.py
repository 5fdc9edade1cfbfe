"""The shared config/CLI style: a dataclass is the config, its fields become ``--options``, validated.

Every harness declares ``@dataclass class Config(RunConfig)`` with defaults, ``help`` and range metadata
(``arg(64, help="batch size", ge=1)``) and calls ``parse_config(Config, argv)``. ``--help`` lists every
option with its default. Field names map to ``--kebab-case`` flags; ``bool`` fields get ``--flag/--no-flag``;
``list`` fields take several values.

Validation happens **before any work**, at parse time, and also when a config is built in code
(``Config(steps=0)`` raises :class:`ConfigError`): every field's range, choices and path checks, then the
config's own ``check()`` for rules that tie fields together. On the command line a bad value is one line
naming the option, the value and what is allowed, exit status 2, nothing written.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Type, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["parse_config", "arg", "config_to_dict", "run_options", "config_to_argv", "ConfigError", "RunConfig", "validate_config",
           "check_writable_dir", "check_writable_file", "check_device", "parse_json_object"]

C = TypeVar("C", bound="DataclassInstance")

#: path checks ``arg(path=...)`` understands
_PATH_KINDS = ("out_dir", "out_file", "in_file", "in_dir", "in_any")


class ConfigError(ValueError):
    """A bad option value; the message names the option, the value and what is allowed (one line)."""


def arg(default: Any = dataclasses.MISSING, help: str = "", choices: Optional[Sequence] = None, *,
        ge: Optional[float] = None, gt: Optional[float] = None, le: Optional[float] = None,
        lt: Optional[float] = None, path: Optional[str] = None, allow_empty: bool = False, unique: bool = False,
        check: Optional[Callable[[Any], Optional[str]]] = None, run_control: bool = False, **kw) -> Any:
    """A dataclass field with CLI help text and validation metadata.

    Args:
        choices: allowed values (for lists: allowed elements).
        ge, gt, le, lt: numeric bounds (for lists: on every element). Numbers must also be finite.
        path: ``"out_dir"`` (a folder we may create and write), ``"out_file"`` (a file we may write),
            ``"in_file"`` / ``"in_dir"`` / ``"in_any"`` (must exist). Empty strings skip the check when
            ``allow_empty``.
        allow_empty: lists may be empty / paths may be ``""`` (default: not allowed).
        unique: no value may appear twice in the list (``--models``: one run folder per name, and per-model
            options such as ``--lr`` are looked up by name).
        check: ``check(value) -> None | "what is allowed"`` for anything else.
        run_control: the field controls how a run executes, not what it computes (``resume``, ``progress``,
            ``workers``): left out of ``results.json`` so that a resumed run writes the same file. Output
            paths (``path="out_dir"``/``"out_file"``) count as run control too.
    """
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "path": path,
            "allow_empty": allow_empty, "unique": unique, "check": check, "run_control": run_control}
    if path is not None and path not in _PATH_KINDS:
        raise ValueError(f"path={path!r}; allowed: {_PATH_KINDS}")
    if isinstance(default, (list, dict)):
        def copy_default(d: Any = default) -> Any:                  # a fresh copy for every instance
            return type(d)(d)
        return dataclasses.field(default_factory=copy_default, metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def warmup_arg(default: float = 0.0) -> Any:
    """The ``--warmup`` field of every harness with a learning-rate schedule: a fraction of ``--steps``
    (``lr_schedule(..., warmup=int(cfg.warmup * cfg.steps))``)."""
    return arg(default, help="linear learning-rate warm-up from 0 over this fraction of --steps (0: none)", ge=0, lt=1)


def precision_arg(help: str = "training arithmetic: fp32, or bf16 (bfloat16 autocast of each training step; "
                                "faster on GPUs and CPUs with AMX / AVX512-BF16, slower where bf16 is emulated; "
                                "evaluation stays fp32)") -> Any:
    """The ``--precision`` field of every harness that trains with :func:`zoo.engine.fit` (its ``precision``;
    choices :data:`zoo.engine.PRECISIONS`)."""
    from .loop import PRECISIONS
    return arg("fp32", help=help, choices=PRECISIONS)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def check_writable_dir(path: str) -> Optional[str]:
    """``None`` if ``path`` is (or can be created as) a folder this process can write, else why not."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            return f"{p} exists and is not a folder"
        return None if os.access(p, os.W_OK | os.X_OK) else f"{p} is not writable"
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, so {p} cannot be created"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"{parent} is not writable, so {p} cannot be created"


def check_writable_file(path: str) -> Optional[str]:
    """``None`` if a file can be written at ``path`` (its folder exists or can be created), else why not."""
    p = Path(path).expanduser()
    if p.exists() and p.is_dir():
        return f"{p} is a folder"
    return check_writable_dir(str(p.parent))


def check_device(device: str) -> Optional[str]:
    """``None`` if ``device`` is ``auto`` or a torch device this machine has, else what is allowed."""
    if device == "auto":
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return "'auto', 'cpu', 'cuda', 'cuda:N' or another torch device"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "'auto' or 'cpu' (no CUDA device on this machine)"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            return "'auto' or 'cpu' (no MPS device on this machine)"
    elif dev.type != "cpu":
        return "'auto', 'cpu' or 'cuda'"
    return None


def parse_json_object(text: str, option: str) -> dict:
    """``text`` parsed as a JSON object, or a :class:`ConfigError` naming ``option``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{option} {text!r} is not valid JSON ({e.msg} at character {e.pos}); "
                          f"expected an object such as '{{\"alpha\": 2.0}}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object such as '{{\"alpha\": 2.0}}', got {text!r}")
    return value


def per_model_kwargs(text: str, models: Sequence[str], option: str = "--model-kwargs",
                     default: Optional[str] = None) -> Dict[str, dict]:
    """The keyword arguments of each of ``models`` from one JSON object, the one ``--model-kwargs`` style of
    every harness.

    Two forms: **shared**, ``'{"hidden_size": 64}'`` (every model gets it), or **per model**,
    ``'{"*": {...}, "rim_lstm_seq": {...}}'`` (every value an object; ``"*"`` goes to every model and a
    model's own entry overrides it key by key; models not named get ``"*"`` or nothing).

    Raises:
        ConfigError (one line): invalid JSON; the two forms mixed; a key that is not ``"*"`` or a registered
        model (with the closest names); a model that is not in ``models`` -- except when ``text`` is the
        option's ``default``, whose per-model entries cover models a user may leave out.
    """
    import difflib

    import timm

    spec = parse_json_object(text, option)
    nested = [k for k, v in spec.items() if isinstance(v, dict)]
    if not nested and "*" not in spec:
        return {m: dict(spec) for m in models}
    if len(nested) != len(spec):
        flat = [k for k in spec if k not in nested]
        raise ConfigError(f"{option} mixes per-model objects ({', '.join(map(repr, nested))}) with shared values "
                          f"({', '.join(map(repr, flat))}); give either '{{\"hidden_size\": 64}}' for every model "
                          f"or '{{\"*\": {{...}}, \"<model>\": {{...}}}}'")
    for key in spec:
        if key == "*" or key in models:
            continue
        if not timm.is_model(key):
            close = difflib.get_close_matches(key, list(models) + timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{option} names {key!r}, which is not a registered model{hint}; keys are '*' or "
                              f"names in --models ({' '.join(models)})")
        if text != default:
            raise ConfigError(f"{option} names {key!r}, which is not in --models {' '.join(models)}")
    return {m: {**spec.get("*", {}), **spec.get(m, {})} for m in models}


def check_per_model(values: Sequence[Any], models: Sequence[str], option: str) -> None:
    """Check a list option that takes one value for every model or one per ``--models`` entry (``--lr``).

    Raises:
        ConfigError (one line) when ``values`` has another length than 0, 1 or ``len(models)``.
    """
    if len(values) not in (0, 1, len(models)):
        raise ConfigError(f"{option} takes one value for every model or one per model ({len(models)} for "
                          f"--models {' '.join(models)}), got {len(values)}")


def per_model_value(values: Sequence[Any], models: Sequence[str], name: str, default: Any) -> Any:
    """Model ``name``'s entry of a :func:`check_per_model` list: the single value, the one at ``name``'s place
    in ``models``, or ``default`` when the list is empty."""
    if not values:
        return default
    return values[0] if len(values) == 1 else values[list(models).index(name)]


def _describe_bounds(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            parts.append(f"{sym} {meta[key]:g}")
    return " and ".join(parts)


def _check_value(flag: str, value: Any, meta: Mapping[str, Any]) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            bounds = _describe_bounds(meta)
            raise ConfigError(f"{flag} {value} is not a finite number; allowed: a finite number{' ' + bounds if bounds else ''}")
        for key, ok in (("ge", lambda b: value >= b), ("gt", lambda b: value > b),
                        ("le", lambda b: value <= b), ("lt", lambda b: value < b)):
            bound = meta.get(key)
            if bound is not None and not ok(bound):
                raise ConfigError(f"{flag} {value} is out of range; allowed: {_describe_bounds(meta)}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{flag} {value!r} is not one of {', '.join(map(str, choices))}")


def validate_config(cfg: Any) -> None:
    """Check every field of a config dataclass against its :func:`arg` metadata, then ``cfg.check()``.

    Raises :class:`ConfigError` with a one-line message naming the option.
    """
    for f in dataclasses.fields(cfg):
        meta = f.metadata
        if not meta:
            continue
        flag = _flag(f.name)
        value = getattr(cfg, f.name)
        if isinstance(value, list):
            if not value and not meta.get("allow_empty"):
                raise ConfigError(f"{flag} needs at least one value")
            for v in value:
                _check_value(flag, v, meta)
            repeated = sorted({str(v) for v in value if value.count(v) > 1})
            if meta.get("unique") and repeated:
                raise ConfigError(f"{flag} lists {', '.join(repeated)} twice; give each value once")
        else:
            _check_value(flag, value, meta)
        kind = meta.get("path")
        if kind and not (value == "" and meta.get("allow_empty")):
            if value == "":
                raise ConfigError(f"{flag} must not be empty")
            why = None
            if kind == "out_dir":
                why = check_writable_dir(value)
            elif kind == "out_file":
                why = check_writable_file(value)
            elif not Path(value).expanduser().exists():
                why = f"{value} does not exist"
            elif kind == "in_file" and not Path(value).is_file():
                why = f"{value} is not a file"
            elif kind == "in_dir" and not Path(value).is_dir():
                why = f"{value} is not a folder"
            if why:
                raise ConfigError(f"{flag} {value!r} cannot be used: {why}")
        custom = meta.get("check")
        if custom is not None:
            why = custom(value)
            if why:
                raise ConfigError(f"{flag} {value!r} is not allowed; allowed: {why}")
    check = getattr(cfg, "check", None)
    if callable(check):
        check()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: <what> (see --help)``, exit status 2, no usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_config(cls: Type[C], argv: Optional[List[str]] = None, description: Optional[str] = None,
                 prog: Optional[str] = None) -> C:
    """Build an ``argparse`` parser from dataclass ``cls`` and return the parsed, validated config.

    ``prog`` names the command in ``--help`` (e.g. ``"python -m tasks.copying"``). A bad value exits with
    status 2 and one line naming the option (argparse's convention); nothing is written.
    """
    parser = _Parser(
        prog=prog, description=description or (cls.__doc__ or "").strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        kw: dict = dict(default=default, help=f.metadata.get("help", "") or " ", dest=f.name)
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(tp) in (list, List):
            (inner,) = typing.get_args(tp)
            parser.add_argument(_flag(f.name), nargs="+" if not f.metadata.get("allow_empty") else "*",
                                type=inner, **kw)
        else:
            parser.add_argument(_flag(f.name), type=tp, **kw)
    ns = parser.parse_args(argv)
    try:
        return cls(**vars(ns))
    except ConfigError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def is_run_control(f: dataclasses.Field) -> bool:
    """Fields that change how or where a run executes, not what it computes: ``run_control=True`` and
    output paths (``path="out_dir"``/``"out_file"``)."""
    return bool(f.metadata.get("run_control")) or f.metadata.get("path") in ("out_dir", "out_file")


def config_to_dict(cfg: Any, include_run_control: bool = True) -> dict:
    """The config as a dict; without the run-control fields (:func:`is_run_control`) when
    ``include_run_control=False``: what ``results.json`` and checkpoints record, so that the same run in
    another folder, with other workers, resumed or not, records the same options."""
    d = dataclasses.asdict(cfg)
    if not include_run_control:
        for f in dataclasses.fields(cfg):
            if is_run_control(f):
                d.pop(f.name, None)
    return d


def run_options(cfg: Any, exclude: Sequence[str] = (), **identity: Any) -> Dict[str, Any]:
    """What one run of a harness's grid is defined by, saved with its checkpoint and compared on ``--resume``
    (:func:`zoo.engine.fit`'s ``run_meta``): the config without its run-control fields, without ``seeds``
    (how many runs the grid has, not what one computes: ``--seeds 5 --resume`` over a 3-seed folder reuses
    the three finished runs and trains two more) and without ``exclude``: the grid's list of members
    (``models``, ``cores``, ``method``: ``--models a b c --resume`` over an ``a b`` folder reuses their
    finished runs and trains c's) and report-level fields. The run's ``identity`` goes on top (``model=...,
    seed=...``; ``seed`` replaces the grid's first seed), and so do the run's own values of per-member
    options, resolved (``lr=model_lr(cfg, name)`` for a ``--lr`` list with one value per model,
    ``model_kwargs=...`` for ``--model-kwargs``'s per-model objects): the raw option depends on the other
    members and their order, so an excluded member list needs them resolved or a reordered ``--models``
    would resume a run under another member's learning rate."""
    d = config_to_dict(cfg, include_run_control=False)
    for name in ("seeds", *exclude):
        d.pop(name, None)
    return {**d, **identity}


def config_to_argv(cfg: Any, skip: Sequence[str] = ("progress", "resume")) -> List[str]:
    """The command-line options that rebuild ``cfg`` with :func:`parse_config` (only fields that differ from
    their defaults, minus ``skip``): ``parse_config(type(cfg), config_to_argv(cfg)) == cfg``. For printing the
    command behind a typed call; harnesses call each other with configs, never with these strings."""
    argv: List[str] = []
    for f in dataclasses.fields(cfg):
        if not f.init or f.name in skip:
            continue
        value = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        if value == default:
            continue
        flag = _flag(f.name)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


@dataclasses.dataclass
class RunConfig:
    """Options every harness shares (seeds, output, device, parallelism, logging, checkpoints, resume).

    Subclass it with the harness's own fields; redeclare a field to change its default (e.g. ``out``).
    ``__post_init__`` validates the whole config, so ``Config(steps=-5)`` raises :class:`ConfigError`.
    Override :meth:`check` (call ``super().check()``) for rules that tie several fields together.
    """

    seeds: int = arg(1, help="seeds per model (seed, seed+1, ...); tables show mean ± std", ge=1)
    seed: int = arg(0, help="first seed", ge=0)
    out: str = arg("runs/run", help="output folder", path="out_dir")
    device: str = arg("auto", help="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:1', ...",
                      check=check_device)
    workers: int = arg(0, help="parallel training processes (0: with --threads 1 every run at once, up to 3 per "
                               "CPU core, sharing the cores; else one per --threads cores; one on a GPU)", ge=0,
                       run_control=True)
    threads: int = arg(1, help="torch threads per training process (results are reproducible for a fixed "
                               "thread count)", ge=1)
    log_every: int = arg(50, help="log training metrics every this many steps", ge=1)
    checkpoint_every: int = arg(500, help="save a checkpoint every this many steps (0: only at the end and "
                                          "on interrupt)", ge=0, run_control=True)
    resume: bool = arg(False, help="continue unfinished runs from their checkpoints (finished runs are "
                                   "reused)", run_control=True)
    backend: str = arg("local", help="where the grid of runs executes: 'local' (a process pool on this machine) or "
                                     "'ray' (a Ray cluster; pip install 'modular-zoo[ray]')",
                       choices=("local", "ray"), run_control=True)
    ray_address: str = arg("", help="with --backend ray: the cluster's address ('' starts a local Ray instance, "
                                    "'auto' joins the cluster this machine belongs to)", allow_empty=True,
                           run_control=True)
    progress: bool = arg(True, help="show progress bars", run_control=True)

    def __post_init__(self) -> None:
        validate_config(self)

    def check(self) -> None:
        """Cross-field rules; raise :class:`ConfigError` naming the options."""

