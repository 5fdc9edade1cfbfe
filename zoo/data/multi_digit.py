"""Multi-digit MNIST canvases (thesis 10.4.2, Table 5): several digits of distinct classes on one image.

A canvas is ``canvas x canvas`` (64 x 64) zeros; each of its ``k`` digits (28 x 28, values in [0, 1]) is
pasted with its top-left corner uniform over the integer positions that keep it inside
(``[0, canvas - 28]`` on each axis), overlapping digits combined by the pixel-wise maximum. The ``k``
classes of a canvas are distinct (a uniformly random ``k``-subset of the 10), each digit a uniformly random
image of its class from the source set. The target is multi-hot: ``y[c] = 1`` iff a digit of class ``c`` is
on the canvas (one sigmoid per class). The paper's placement was not published; these are our choices.

Sources (:func:`digit_sources`): the embedded 5,000 digits split by :func:`zoo.data.embedded_mnist_split`
(train canvases only from its 4,000 train digits, test canvases only from its 1,000 test digits), or full
MNIST (:func:`zoo.data.load_mnist`: 60,000 / 10,000).

* :func:`multi_digit_batch`: one batch from a generator (the training stream; counts drawn per canvas).
* :class:`MultiDigitDataset`: a fixed set of canvases with ``k`` digits each (the test sets).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from .mnist import embedded_mnist_split, load_mnist

__all__ = ["DigitPool", "digit_sources", "multi_digit_batch", "MultiDigitDataset", "NUM_CLASSES"]

NUM_CLASSES = 10
DIGIT = 28


class DigitPool:
    """Digits grouped by class, for drawing a random digit of a given class in one vectorized call.

    Args:
        images: ``(M, 1, 28, 28)`` float in [0, 1]; labels: ``(M,)`` int in 0..9 (every class present).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1:] != (1, DIGIT, DIGIT) or len(images) != len(labels):
            raise ValueError(f"need images (M, 1, 28, 28) and labels (M,), got {tuple(images.shape)}, "
                             f"{tuple(labels.shape)}")
        counts = torch.bincount(labels, minlength=NUM_CLASSES)
        if (counts == 0).any() or len(counts) > NUM_CLASSES:
            raise ValueError(f"every class 0..9 needs at least one digit, got counts {counts.tolist()}")
        self.images, self.labels, self.counts = images, labels, counts
        order = torch.argsort(labels, stable=True)
        self.index = torch.full((NUM_CLASSES, int(counts.max())), -1, dtype=torch.long)   # (10, max) indices
        starts = torch.cumsum(counts, 0) - counts
        for c in range(NUM_CLASSES):
            self.index[c, :counts[c]] = order[starts[c]:starts[c] + counts[c]]

    def sample(self, classes: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Indices into ``images`` of one random digit of each class in ``classes`` (any shape)."""
        u = torch.rand(classes.shape, generator=generator)
        j = (u * self.counts[classes]).long().clamp_max(self.counts[classes] - 1)
        return self.index[classes, j]


def digit_sources(source: str = "embedded", root: str = "data", download: bool = False
                  ) -> Dict[str, DigitPool]:
    """``{"train": DigitPool, "test": DigitPool}``: the embedded split (4,000 / 1,000) or full MNIST."""
    if source == "embedded":
        split = embedded_mnist_split()
        return {k: DigitPool(*split[k]) for k in ("train", "test")}
    if source == "mnist":
        return {k: DigitPool(*load_mnist(root, train=(k == "train"), download=download)) for k in ("train", "test")}
    raise ValueError(f"source must be 'embedded' or 'mnist', got {source!r}")


def multi_digit_batch(pool: DigitPool, counts: Sequence[int], batch_size: int, canvas: int = 64,
                      generator: Optional[torch.Generator] = None, return_layout: bool = False):
    """``batch_size`` canvases, each with ``k`` digits, ``k`` uniform over ``counts``.

    Returns:
        x ``(B, 1, canvas, canvas)`` float, y ``(B, 10)`` float multi-hot, k ``(B,)`` long; with
        ``return_layout`` also the pool indices of the digits placed ``(B, max(counts))`` (-1: slot unused)
        and their top-left corners ``(B, max(counts), 2)`` (row, column).
    """
    counts_t = torch.as_tensor(list(counts), dtype=torch.long)
    if len(counts_t) == 0 or counts_t.min() < 1 or counts_t.max() > NUM_CLASSES:
        raise ValueError(f"digit counts must be in 1..{NUM_CLASSES}, got {list(counts)}")
    if canvas < DIGIT:
        raise ValueError(f"canvas must be >= {DIGIT}, got {canvas}")
    kmax = int(counts_t.max())
    k = counts_t[torch.randint(len(counts_t), (batch_size,), generator=generator)]
    classes = torch.argsort(torch.rand(batch_size, NUM_CLASSES, generator=generator), dim=1)[:, :kmax]
    active = torch.arange(kmax)[None] < k[:, None]                                      # (B, kmax)
    idx = pool.sample(classes, generator)                                               # (B, kmax)
    pos = torch.randint(canvas - DIGIT + 1, (batch_size, kmax, 2), generator=generator)  # (B, kmax, (row, col))
    x = torch.zeros(batch_size, canvas, canvas)
    b = torch.arange(batch_size)[:, None, None]
    off = torch.arange(DIGIT)
    for j in range(kmax):
        rows = pos[:, j, 0, None, None] + off[None, :, None]
        cols = pos[:, j, 1, None, None] + off[None, None, :]
        digit = pool.images[idx[:, j], 0] * active[:, j, None, None]                   # (B, 28, 28)
        x[b, rows, cols] = torch.maximum(x[b, rows, cols], digit)
    y = torch.zeros(batch_size, NUM_CLASSES)
    y.scatter_(1, classes, active.float())
    out = (x.unsqueeze(1), y, k)
    return out + (torch.where(active, idx, torch.full_like(idx, -1)), pos) if return_layout else out


class MultiDigitDataset(Dataset):
    """A fixed set of ``num`` canvases with exactly ``count`` digits each (seeded): ``(x, y)`` items.

    Attributes ``x (num, 1, canvas, canvas)``, ``y (num, 10)`` and ``index (num, count)`` (pool indices).
    """

    def __init__(self, pool: DigitPool, count: int, num: int, seed: int, canvas: int = 64,
                 chunk: int = 1000) -> None:
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        g = torch.Generator().manual_seed(seed)
        xs, ys, ids = [], [], []
        for start in range(0, num, chunk):
            x, y, _, i, _ = multi_digit_batch(pool, [count], min(chunk, num - start), canvas, g, return_layout=True)
            xs.append(x)
            ys.append(y)
            ids.append(i)
        self.x, self.y, self.index = torch.cat(xs), torch.cat(ys), torch.cat(ids)
        self.count = count

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]
