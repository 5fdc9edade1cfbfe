"""Checkpoints that never leave a half-written file: write to a temporary file, fsync, rename."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Union

import torch

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "write_json", "write_text"]

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
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: PathLike, **state: Any) -> Path:
    """Atomically ``torch.save`` a dict (modules and optimizers are saved as their ``state_dict``)."""
    payload = {k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in state.items()}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: PathLike, map_location: Any = "cpu", **targets: Any) -> Dict[str, Any]:
    """Load a checkpoint; entries named in ``targets`` are loaded into those objects (``load_state_dict``)."""
    payload = torch.load(path, map_location=map_location, weights_only=False)
    for key, obj in targets.items():
        if key not in payload:
            raise KeyError(f"checkpoint {path} has no entry {key!r}; it has {sorted(payload)}")
        obj.load_state_dict(payload[key])
    return payload


def write_json(path: PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=False) + "\n"), mode="w")


def write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")
