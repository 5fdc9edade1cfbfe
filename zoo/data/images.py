"""Image classification data sets for the harnesses: the embedded digits (offline) and torchvision sets.

``load_dataset(name)`` returns ``{"train": (x, y), "test": (x, y), ["unlabeled": (x, y)], "num_classes"}``
with images ``(N, C, H, W)`` float in ``[0, 1]``. ``digits`` is the 5,000 embedded MNIST digits with the
fixed 4,000 / 1,000 split (:func:`zoo.data.embedded_mnist_split`); ``mnist``, ``cifar10``, ``cifar100`` and
``svhn`` come through torchvision from ``root`` (downloaded only when asked).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from .mnist import embedded_mnist_split, load_mnist

__all__ = ["DATASETS", "load_dataset", "few_labels", "dataset_missing"]

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "svhn")

#: what torchvision looks for under ``root`` (any one of the paths is enough)
_FILES = {
    "mnist": ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-images-idx3-ubyte.gz"),
    "cifar10": ("cifar-10-batches-py/data_batch_1",),
    "cifar100": ("cifar-100-python/train",),
    "svhn": ("train_32x32.mat",),
}


def dataset_missing(name: str, root: str) -> Optional[str]:
    """``None`` if ``name`` can be loaded from ``root`` without a download, else a one-line reason and fix."""
    if name == "digits":
        return None
    if any((Path(root) / f).exists() for f in _FILES[name]):
        return None
    return (f"{name} is not under {root!r} (looked for {_FILES[name][0]}); add --download (needs internet), point "
            f"--data-root at a folder holding it, or use --dataset digits (offline)")


def _torchvision(name: str, root: str, download: bool) -> dict:
    import torchvision.datasets as tvd

    def wrap(make):
        try:
            return make()
        except RuntimeError as e:
            raise FileNotFoundError(f"{name} not found under {root!r}; add --download (needs internet) or point "
                                    f"--data-root at a folder holding it. Offline: --dataset digits.") from e

    if name == "mnist":
        return {"train": wrap(lambda: load_mnist(root, True, download)),
                "test": wrap(lambda: load_mnist(root, False, download))}
    out = {}
    for split in ("train", "test"):
        if name == "svhn":
            ds = wrap(lambda: tvd.SVHN(root, split=split, download=download))
            x, y = torch.from_numpy(ds.data).float() / 255.0, torch.from_numpy(np.asarray(ds.labels)).long()
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = wrap(lambda: cls(root, train=split == "train", download=download))
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0
            y = torch.as_tensor(ds.targets).long()
        out[split] = (x, y)
    return out


def few_labels(train: Tuple[torch.Tensor, torch.Tensor], per_class: int, seed: int) -> dict:
    """Keep ``per_class`` labeled images per class (fixed by ``seed``); the rest become ``unlabeled``."""
    x, y = train
    g = torch.Generator().manual_seed(seed)
    lab, unl = [], []
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if per_class > len(idx):
            raise ValueError(f"labels_per_class={per_class} exceeds the {len(idx)} training images of class {int(c)}")
        lab.append(idx[:per_class])
        unl.append(idx[per_class:])
    lab_i, unl_i = torch.cat(lab), torch.cat(unl)
    return {"train": (x[lab_i], y[lab_i]), "unlabeled": (x[unl_i], y[unl_i])}


def load_dataset(name: str, root: str = "data", download: bool = False, labels_per_class: int = 0,
                 seed: int = 0) -> dict:
    """``{"train": (x, y), "test": (x, y), ["unlabeled": (x, y)], "num_classes": K}``, images in ``[0, 1]``.

    ``labels_per_class > 0`` keeps that many labels per class and returns the rest of the training images as
    ``unlabeled`` (semi-supervised mode).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if name == "digits":
        data = embedded_mnist_split(labels_per_class=labels_per_class or None)
    else:
        data = _torchvision(name, root, download)
        if labels_per_class:
            data.update(few_labels(data["train"], labels_per_class, seed))
    data["num_classes"] = 100 if name == "cifar100" else 10
    return data
