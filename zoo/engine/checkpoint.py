"""Checkpoints that never leave a half-written file: write to a temporary file, fsync, rename."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Union

import torch

from .errors import CheckpointError

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "write_json", "write_text", "clean_stale_tmp",
           "check_run_options"]

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path`` and rename it over ``path``.

    ``os.replace`` is atomic on POSIX and Windows: readers see the old file or the new one, never a torn
    one, even if the process dies mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())                   # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: PathLike, **state: Any) -> Path:
    """Atomically ``torch.save`` a dict (modules and optimizers are saved as their ``state_dict``)."""
    payload = {k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in state.items()}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: PathLike, map_location: Any = "cpu", **targets: Any) -> Dict[str, Any]:
    """Load a checkpoint; entries named in ``targets`` are loaded into those objects (``load_state_dict``).

    A missing, truncated, corrupt or foreign file, or a state that does not fit a target, raises
    :class:`~zoo.engine.errors.CheckpointError` with a one-line message (never a pickle/zip traceback).
    """
    from .errors import CheckpointError

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (did you mean {path / 'checkpoint.pt'}?)")
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for garbage: pickle, zip, EOF, runtime errors
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}); "
                              f"point to a checkpoint.pt written by a zoo harness") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict")
    for key, obj in targets.items():
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} has no entry {key!r}; it has {sorted(payload)}")
        try:
            obj.load_state_dict(payload[key])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: {key!r} does not fit ({str(e).strip().splitlines()[0][:300]}); the "
                                  f"checkpoint belongs to another architecture or options") from None
    return payload


def clean_stale_tmp(folder: PathLike) -> List[Path]:
    """Remove the temporary files (``.<name>.*.tmp``) that a run killed during :func:`atomic_write` left in
    ``folder`` and below; returns what was removed. Only call it while holding the folder's run lock."""
    removed = []
    for p in Path(folder).rglob(".*.tmp"):
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:  # pragma: no cover - raced with another cleaner
                pass
    return removed


def write_json(path: PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=False) + "\n"), mode="w")


def write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


def check_run_options(path: Union[str, Path], saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse, in one line (:class:`CheckpointError`), to resume or reuse ``path`` when the options it was
    written under (``saved``, :func:`zoo.engine.run_options`) differ from this run's (``now``)."""
    saved, now = (json.loads(json.dumps(dict(d), default=str)) for d in (saved, now))   # tuples read as lists
    if saved == now:
        return
    unset = _Unset()      # an option only one side has differs even where the other side's value is None
    changes = "; ".join(f"{k}: {saved.get(k, unset)!r} -> {now.get(k, unset)!r}"
                        for k in sorted(set(saved) | set(now)) if saved.get(k, unset) != now.get(k, unset))
    raise CheckpointError(f"{path} was written by a run with other options ({changes}); resume with the same "
                          f"options or use another --out")
