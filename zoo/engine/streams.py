"""Data streams whose position is part of the checkpoint, so a resumed run sees exactly the batches that an
uninterrupted run would have seen.

A *stream* is an endless iterator with ``state_dict()`` / ``load_state_dict()``. :func:`zoo.engine.fit`
saves the stream's state in every checkpoint and restores it on resume. Streams that have no state are
advanced by replaying the batches already consumed (exact for any deterministic iterator, but it costs the
time to regenerate them).

* :class:`SeededStream`: ``make_batch(rng)`` called with the stream's own generator (torch or numpy):
  synthetic tasks (copying, bouncing balls, Sort-of-CLEVR questions) that draw fresh data every step.
* :class:`ShuffledBatches`: minibatches of in-memory tensors, reshuffled every epoch.
* :class:`ZipStream`: several streams advanced together (a labeled and an unlabeled stream), mapped to
  one batch by ``combine``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Union

import numpy as np
import torch

__all__ = ["Stream", "SeededStream", "ShuffledBatches", "ZipStream", "MapStream", "stream_state", "restore_stream"]


class Stream(Iterator):
    """Base class: an endless iterator with a state that checkpoints save."""

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_state_dict(self, state: Dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SeededStream(Stream):
    """``make_batch(rng)`` for every batch, ``rng`` the stream's own generator seeded with ``seed``.

    Args:
        make_batch: draws one batch from ``rng`` (a ``torch.Generator``, or a ``numpy.random.Generator``
            with ``backend="numpy"``); must draw all its randomness from ``rng``.
        seed: the stream's seed (independent of the global RNGs, so model initialisation and dropout do
            not shift the data).
    """

    def __init__(self, make_batch: Callable[[Any], Any], seed: int, backend: str = "torch") -> None:
        if backend not in ("torch", "numpy"):
            raise ValueError(f"backend={backend!r}; allowed: 'torch', 'numpy'")
        self.make_batch, self.backend, self.count = make_batch, backend, 0
        self.rng: Union[torch.Generator, np.random.Generator]
        self.rng = torch.Generator().manual_seed(seed) if backend == "torch" else np.random.default_rng(seed)

    def __next__(self) -> Any:
        self.count += 1
        return self.make_batch(self.rng)

    def state_dict(self) -> Dict[str, Any]:
        gen = self.rng.get_state() if self.backend == "torch" else self.rng.bit_generator.state  # type: ignore[union-attr]
        return {"rng": gen, "count": self.count}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.backend == "torch":
            self.rng.set_state(state["rng"])  # type: ignore[union-attr]
        else:
            self.rng.bit_generator.state = state["rng"]  # type: ignore[union-attr]
        self.count = int(state["count"])


class ShuffledBatches(Stream):
    """Endless shuffled epochs of minibatches of ``tensors`` (all of the same length).

    Yields a tuple of the tensors indexed by the batch's indices (``None`` stays ``None``; a single tensor
    if one was given). Every epoch draws a new permutation from the stream's generator (seeded with
    ``seed``); with ``drop_last`` (default) every batch has ``batch_size`` items, and a data set smaller
    than one batch yields the whole (shuffled) set each time. The state is the generator's state at the
    start of the current epoch and the position in it.
    """

    def __init__(self, *tensors: Optional[torch.Tensor], batch_size: int, seed: int, drop_last: bool = True) -> None:
        present = [t for t in tensors if t is not None]
        if not present:
            raise ValueError("ShuffledBatches needs at least one tensor")
        n = len(present[0])
        if any(len(t) != n for t in present):
            raise ValueError(f"tensors must have the same length, got {[len(t) for t in present]}")
        if n == 0:
            raise ValueError("ShuffledBatches got an empty data set")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors, self.n, self.batch_size, self.drop_last = tensors, n, batch_size, drop_last
        self.rng = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = -1, 0
        self._epoch_rng: Optional[torch.Tensor] = None
        self._perm: Optional[torch.Tensor] = None

    def _batches_per_epoch(self) -> int:
        if self.n <= self.batch_size:
            return 1
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _new_epoch(self) -> None:
        self.epoch, self.pos = self.epoch + 1, 0
        self._epoch_rng = self.rng.get_state()
        self._perm = torch.randperm(self.n, generator=self.rng)

    def __next__(self) -> Any:
        if self._perm is None or self.pos >= self._batches_per_epoch():
            self._new_epoch()
        idx = self._perm[self.pos * self.batch_size:(self.pos + 1) * self.batch_size]  # type: ignore[index]
        self.pos += 1
        out = tuple(None if t is None else t[idx] for t in self.tensors)
        return out[0] if len(out) == 1 else out

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "epoch_rng": self._epoch_rng, "rng": self.rng.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        if state["epoch_rng"] is None:                          # saved before the first batch
            self.rng.set_state(state["rng"])
            self._perm = None
            return
        self.rng.set_state(state["epoch_rng"])
        self._epoch_rng = state["epoch_rng"]
        self._perm = torch.randperm(self.n, generator=self.rng)


class ZipStream(Stream):
    """``combine(next(a), next(b), ...)`` for several streams advanced together."""

    def __init__(self, *streams: Iterator, combine: Callable[..., Any] = lambda *b: b) -> None:
        self.streams, self.combine = streams, combine

    def __next__(self) -> Any:
        return self.combine(*(next(s) for s in self.streams))

    def state_dict(self) -> Dict[str, Any]:
        return {"streams": [stream_state(s) for s in self.streams]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for s, st in zip(self.streams, state["streams"]):
            restore_stream(s, st, 0)


class MapStream(Stream):
    """``fn(next(stream))``: a stream whose batches are transformed (state is the inner stream's)."""

    def __init__(self, stream: Iterator, fn: Callable[[Any], Any]) -> None:
        self.stream, self.fn = stream, fn

    def __next__(self) -> Any:
        return self.fn(next(self.stream))

    def state_dict(self) -> Dict[str, Any]:
        return {"inner": stream_state(self.stream)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        restore_stream(self.stream, state["inner"], 0)


def stream_state(stream: Iterator) -> Optional[Dict[str, Any]]:
    """The stream's state, or ``None`` for a plain iterator (it will be replayed on resume)."""
    sd = getattr(stream, "state_dict", None)
    return sd() if callable(sd) else None


def restore_stream(stream: Iterator, state: Optional[Dict[str, Any]], consumed: int) -> None:
    """Put ``stream`` where a checkpoint left it: load its state, or replay ``consumed`` batches."""
    if state is not None and callable(getattr(stream, "load_state_dict", None)):
        stream.load_state_dict(state)  # type: ignore[attr-defined]
        return
    for _ in range(consumed):
        next(stream)

