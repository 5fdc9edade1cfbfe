"""Sequential MNIST at other resolutions (thesis ch. 8.4.1, Table 1 right; ``shared/docs/tasks.md``).

A 28x28 digit becomes a sequence of pixels: binarized at 0.5, resized by nearest neighbour *directly from
28x28* to ``size x size`` (never 28 -> 14 -> 24), flattened row-major: 196 / 256 / 361 / 576 steps at
14 / 16 / 19 / 24. Models train at 14x14 and are tested at the other sizes; a model that keeps its
state over the (now longer) runs of background pixels generalizes.

Two input variants:

* ``"tokens"`` (the paper): two tokens, 0 background and 1 ink, for an embedding; ``(N, size * size)`` int64.
* ``"pixels"``: the grey level in ``[0, 1]`` (not binarized) for a linear input; ``(N, size * size, 1)`` float.

Data: the 5,000 embedded digits (:func:`zoo.data.embedded_mnist_split`, its fixed 4,000 / 1,000 split), or
full MNIST (torchvision, or a local folder of the IDX files: :func:`zoo.data.load_mnist`). The training
part is split again into train / validation with the reference's ratio (``anirudh9119/RIMs``,
``event_based/mnist_seq_data_classify.py``: one fifth of the 60k for validation, 48k / 12k); the test
accuracy is read at the step of best validation accuracy.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import torch

from ..engine.streams import MapStream, ShuffledBatches
from .mnist import embedded_mnist_split, load_mnist

__all__ = ["SEQ_DATASETS", "INPUTS", "binarize", "nearest_indices", "resize_nearest", "pixel_sequences",
           "seq_mnist_splits", "seq_mnist_batches", "sequence_length"]

SEQ_DATASETS = ("digits", "mnist")
INPUTS = ("tokens", "pixels")
SOURCE_SIZE = 28


def binarize(images: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Ink tokens: 1 where the pixel is above ``threshold``, else 0 (int64, same shape).

    The reference rounds (``x.round()``, half to even), i.e. ``x > 0.5`` for ``x`` in ``[0, 1]``; MNIST's
    grey levels ``k / 255`` never equal 0.5, so ``>`` and ``>=`` agree on it.
    """
    return (images > threshold).long()


def nearest_indices(in_size: int, out_size: int) -> torch.Tensor:
    """Source rows (or columns) of a nearest-neighbour resize from ``in_size`` to ``out_size``.

    Index convention: output index ``i`` reads source index ``floor(i * s)`` with ``s = in_size / out_size``
    computed in float32, clamped to ``in_size - 1``: the *top-left* convention of
    ``torch.nn.functional.interpolate(mode="nearest")``, which the reference uses
    (``F.upsample(x.round(), size=(n, n), mode="nearest")`` in ``event_based/train_mnist.py``). It equals
    ``floor(i * in / out)`` in exact arithmetic except where float32 rounds an integer product down
    (28 -> 46 and 28 -> 92); we keep float32 to match the reference bit for bit. PIL's ``Image.NEAREST``
    and ``mode="nearest-exact"`` use pixel *centres* (``floor((i + 0.5) * s)``) and give other images: from 28,
    PIL differs from the reference at every size from 1 to 128 except the multiples of 28 (28 -> 14 reads
    the odd rows 1, 3, ..., 27; the reference reads the even rows 0, 2, ..., 26). The tests check these
    known arrays and the match with ``F.interpolate`` at every size from 1 to 128.

    Returns:
        ``(out_size,)`` int64.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in_size={in_size}, out_size={out_size}")
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    idx = torch.floor(torch.arange(out_size, dtype=torch.float32) * scale).long()
    return idx.clamp_(max=in_size - 1)


def resize_nearest(images: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour resize of the last two dimensions to ``size x size`` (:func:`nearest_indices`).

    images ``(..., H, W)`` -> ``(..., size, size)``, one gather, any dtype. Resizing by index selection
    commutes with binarization, so the order of the two does not matter.
    """
    rows = nearest_indices(images.shape[-2], size).to(images.device)
    cols = nearest_indices(images.shape[-1], size).to(images.device)
    return images[..., rows[:, None], cols[None, :]]


def pixel_sequences(images: torch.Tensor, size: int, input: str = "tokens") -> torch.Tensor:
    """Digits ``(N, 1, 28, 28)`` (or ``(N, 28, 28)``) in ``[0, 1]`` -> pixel sequences at ``size x size``.

    Resized directly from the source size, flattened row-major (step ``r * size + c`` is row ``r``,
    column ``c``). ``input="tokens"``: binarized, ``(N, size**2)`` int64; ``"pixels"``: grey levels,
    ``(N, size**2, 1)`` float.
    """
    if input not in INPUTS:
        raise ValueError(f"input={input!r}; allowed: {', '.join(map(repr, INPUTS))}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    x = images.reshape(images.shape[0], images.shape[-2], images.shape[-1])
    x = resize_nearest(x, size).reshape(x.shape[0], size * size)
    return binarize(x) if input == "tokens" else x.float().unsqueeze(-1)


def sequence_length(size: int) -> int:
    """Steps of a ``size x size`` digit: 196, 256, 361, 576 at 14, 16, 19, 24."""
    return size * size


Split = Tuple[torch.Tensor, torch.Tensor]


def seq_mnist_splits(dataset: str = "digits", root: str | os.PathLike = "data", download: bool = False,
                     val_fraction: float = 0.2, seed: int = 0) -> Dict[str, Split]:
    """Train / validation / test digits ``(N, 1, 28, 28)`` in ``[0, 1]`` and labels, fixed by ``seed``.

    Args:
        dataset: ``"digits"`` (the embedded 5,000 and their fixed 4,000 / 1,000 split) or ``"mnist"``
            (60k / 10k from ``root``; downloaded only with ``download``).
        val_fraction: the part of the training digits held out for validation (reference: 0.2, i.e.
            48k / 12k on MNIST, 3,200 / 800 on the embedded digits); 0 keeps no validation set.
        seed: the validation split's seed (the same for every run and model).

    Returns:
        ``{"train": (x, y), "val": (x, y) or None, "test": (x, y)}``.
    """
    if dataset == "digits":
        split = embedded_mnist_split()
        train, test = split["train"], split["test"]
    elif dataset == "mnist":
        train, test = load_mnist(root, True, download), load_mnist(root, False, download)
    else:
        raise ValueError(f"dataset={dataset!r}; allowed: {', '.join(map(repr, SEQ_DATASETS))}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(train[0])
    n_val = int(round(n * val_fraction))
    if n_val == 0:
        return {"train": train, "val": None, "test": test}
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return {"train": (train[0][train_idx], train[1][train_idx]), "val": (train[0][val_idx], train[1][val_idx]),
            "test": test}


def seq_mnist_batches(train: Split, size: int, batch_size: int, seed: int, input: str = "tokens") -> MapStream:
    """Endless shuffled training batches ``(x, y)`` of pixel sequences at ``size x size``.

    The sequences are made once (stored as uint8 tokens or float pixels) and drawn by a
    :class:`~zoo.engine.ShuffledBatches` stream, whose position is saved in checkpoints (exact resume).
    """
    seqs = pixel_sequences(train[0], size, input)
    if input == "tokens":
        seqs = seqs.to(torch.uint8)                                  # 8x less memory; int64 per batch
        return MapStream(ShuffledBatches(seqs, train[1], batch_size=batch_size, seed=seed),
                         lambda b: (b[0].long(), b[1]))
    return MapStream(ShuffledBatches(seqs, train[1], batch_size=batch_size, seed=seed), lambda b: b)
