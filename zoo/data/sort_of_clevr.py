"""Sort-of-CLEVR (Santoro et al. 2017; thesis 10.4.3, Tables 6-7): a vectorized, seeded generator.

Each image is ``img_size x img_size`` RGB (75 x 75), white background, with one object of each of 6
colours (red, green, blue, orange, gray, yellow), each a square (``2 size + 1`` pixels on a side, 11 x 11)
or a circle (radius ``size``; pixels with ``dx^2 + dy^2 <= (size + 1/2)^2``), shape drawn with p = 0.5.
Centres are integers uniform in ``[size, img_size - size - 1]`` (``[5, 69]``), each redrawn while it lies
closer than ``min_dist`` (10 px) to an earlier object's centre, objects drawn in colour order (a later
object paints over an earlier one where they touch).

Questions (the 11-long vector of the reference and of the NFM paper): ``[0:6]`` one-hot colour ``X`` of
the object asked about, ``[6]`` non-relational, ``[7]`` relational, ``[8:11]`` one-hot subtype. Answers
(10 classes): 0 yes, 1 no, 2 square, 3 circle, 4..9 a count of 1..6.

* non-relational: ``shape`` of X; ``left``: is X on the left (``x < img_size / 2``); ``top``: is X on the
  top (``y < img_size / 2``; ``y`` grows downwards);
* relational: ``closest``: the shape of the object closest to X; ``furthest``: the shape of the object
  furthest from X; ``count``: how many objects have X's shape (X included: answer 4 means only X).

Every image gets ``questions`` non-relational then ``questions`` relational questions (10 + 10), colour and
subtype each uniform (every colour is asked).

Where the references are wrong we are not (``shared/docs/tasks.md``): the generator never reseeds (one
``numpy`` generator per call, so objects are squares and circles alike), every colour is asked, the furthest
object is never X itself (the reference's ``dist[X] = 999`` sentinel can win the max), and images where the
closest or furthest object to some X is tied between two objects are redrawn, so every question has exactly
one correct answer.

Held-out combinations (thesis Table 7): ``holdout`` colour-shape pairs, at most one per colour, never
appear in a training image (the object of that colour always has the other shape there); test images use
the full distribution. :func:`question_involves_holdout` says which test questions depend on a held-out pair.

Storage (:class:`SortOfClevr`): ``images (N, H, W, 3) uint8``; ``centers (N, 6, 2)`` integer ``(x, y)``
(column, row) per colour; ``shapes (N, 6)`` 0 square / 1 circle; per question ``q_color``, ``q_rel``
(0 non-relational, 1 relational), ``q_sub`` (0..2) and ``answers``, each ``(N, 2 * questions)``. Cached as a
``.npz`` (:func:`load_or_generate`), served per question by :class:`SortOfClevrDataset`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "COLORS", "COLOR_RGB", "SHAPES", "ANSWERS", "NONREL_SUBTYPES", "REL_SUBTYPES", "QUESTION_DIM",
    "SortOfClevr", "generate", "holdout_combinations", "question_vectors", "question_involves_holdout",
    "load_or_generate", "SortOfClevrDataset", "describe_question",
]

COLORS = ("red", "green", "blue", "orange", "gray", "yellow")
COLOR_RGB = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 156, 0], [128, 128, 128], [255, 255, 0]],
                     dtype=np.uint8)
SHAPES = ("square", "circle")
ANSWERS = ("yes", "no", "square", "circle", "1", "2", "3", "4", "5", "6")
NONREL_SUBTYPES = ("shape", "left", "top")
REL_SUBTYPES = ("closest", "furthest", "count")
QUESTION_DIM = 11
NUM_OBJECTS = len(COLORS)
YES, NO, SQUARE, CIRCLE, COUNT0 = 0, 1, 2, 3, 3          # count answers: COUNT0 + n for n objects (4..9)


@dataclass
class SortOfClevr:
    """A generated split: images, the objects that made them, and the questions with their answers."""

    images: np.ndarray          # (N, H, W, 3) uint8
    centers: np.ndarray         # (N, 6, 2) int16, (x, y) of the object of each colour
    shapes: np.ndarray          # (N, 6) int8, 0 square / 1 circle
    q_color: np.ndarray         # (N, Q) int8, colour asked about
    q_rel: np.ndarray           # (N, Q) int8, 0 non-relational / 1 relational
    q_sub: np.ndarray           # (N, Q) int8, subtype 0..2
    answers: np.ndarray         # (N, Q) int8, answer class 0..9

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_questions(self) -> int:
        return self.q_color.shape[1]

    def subset(self, idx: np.ndarray) -> "SortOfClevr":
        return SortOfClevr(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def holdout_combinations(n: int, seed: int = 0) -> List[Tuple[int, int]]:
    """``n`` held-out ``(colour, shape)`` pairs with distinct colours, chosen by ``seed`` (0 <= n <= 6).

    One per colour at most: holding out both shapes of a colour would leave no possible training image.
    """
    if not 0 <= n <= NUM_OBJECTS:
        raise ValueError(f"holdout must be in [0, {NUM_OBJECTS}] (one shape per colour at most), got {n}")
    rng = np.random.default_rng([seed, 7919])
    colours = rng.permutation(NUM_OBJECTS)[:n]
    shapes = rng.integers(0, 2, n)
    return sorted((int(c), int(s)) for c, s in zip(colours, shapes))


def _place_centers(rng: np.random.Generator, n: int, img_size: int, size: int, min_dist: float) -> np.ndarray:
    """Sequential rejection (the reference's process), vectorized over images: ``(n, 6, 2)`` int."""
    lo, hi = size, img_size - size          # integers in [lo, hi)
    if hi - lo < 1:
        raise ValueError(f"img_size={img_size} leaves no room for objects of size {size}")
    out = np.empty((n, NUM_OBJECTS, 2), dtype=np.int64)
    for j in range(NUM_OBJECTS):
        todo = np.arange(n)
        for _ in range(10_000):
            cand = rng.integers(lo, hi, (len(todo), 2))
            if j:
                d2 = ((out[todo, :j] - cand[:, None]) ** 2).sum(-1)
                ok = (d2 >= min_dist ** 2).all(1)
            else:
                ok = np.ones(len(todo), dtype=bool)
            out[todo[ok], j] = cand[ok]
            todo = todo[~ok]
            if not len(todo):
                break
        else:
            raise ValueError(f"cannot place {NUM_OBJECTS} objects {min_dist} px apart in a {img_size} px image")
    return out


def _templates(size: int) -> np.ndarray:
    """``(2, 2 size + 1, 2 size + 1)`` bool: the square and the circle."""
    d = np.arange(-size, size + 1)
    circle = (d[:, None] ** 2 + d[None, :] ** 2) <= (size + 0.5) ** 2
    return np.stack([np.ones_like(circle), circle])


def render(centers: np.ndarray, shapes: np.ndarray, img_size: int = 75, size: int = 5) -> np.ndarray:
    """Draw the objects (colour order, later on top) on white: ``(N, img_size, img_size, 3)`` uint8."""
    n = len(centers)
    img = np.full((n, img_size, img_size, 3), 255, dtype=np.uint8)
    tpl = _templates(size)
    d = np.arange(-size, size + 1)
    rows = np.arange(n)[:, None, None]
    for j in range(NUM_OBJECTS):
        ys = centers[:, j, 1, None, None] + d[None, :, None]              # (n, s, 1)
        xs = centers[:, j, 0, None, None] + d[None, None, :]              # (n, 1, s)
        mask = tpl[shapes[:, j]]                                          # (n, s, s)
        nn_, yy, xx = np.broadcast_arrays(rows, ys, xs)
        img[nn_[mask], yy[mask], xx[mask]] = COLOR_RGB[j]
    return img


def _tied(d2: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: some colour's picked distance (closest or furthest) is shared by two objects."""
    return ((d2 == pick[..., None]).sum(-1) > 1).any(-1)


def _distances(centers: np.ndarray) -> np.ndarray:
    return ((centers[:, :, None, :] - centers[:, None, :, :]) ** 2).sum(-1)   # (N, 6, 6) squared


def answer_questions(centers: np.ndarray, shapes: np.ndarray, q_color: np.ndarray, q_rel: np.ndarray,
                     q_sub: np.ndarray, img_size: int = 75) -> np.ndarray:
    """The answer class of every question ``(N, Q)`` from the objects (vectorized)."""
    n = len(centers)
    d2 = _distances(centers).astype(np.float64)
    eye = np.eye(NUM_OBJECTS, dtype=bool)
    closest = np.where(eye, np.inf, d2).argmin(-1)                         # (N, 6): per colour X
    furthest = np.where(eye, -np.inf, d2).argmax(-1)
    same = (shapes[:, :, None] == shapes[:, None, :]).sum(-1)              # objects sharing X's shape, X too
    rows = np.arange(n)[:, None]
    x = centers[rows, q_color, 0]
    y = centers[rows, q_color, 1]
    half = img_size / 2
    nonrel = np.select([q_sub == 0, q_sub == 1],
                       [SQUARE + shapes[rows, q_color], np.where(x < half, YES, NO)],
                       np.where(y < half, YES, NO))
    rel = np.select([q_sub == 0, q_sub == 1],
                    [SQUARE + shapes[rows, closest[rows, q_color]], SQUARE + shapes[rows, furthest[rows, q_color]]],
                    COUNT0 + same[rows, q_color])
    return np.where(q_rel == 1, rel, nonrel).astype(np.int8)


def generate(num_images: int, seed: int, questions: int = 10, img_size: int = 75, size: int = 5,
             min_dist: float = 10.0, holdout: Sequence[Tuple[int, int]] = ()) -> SortOfClevr:
    """``num_images`` images with ``questions`` non-relational and ``questions`` relational questions each.

    Deterministic per ``seed`` (one ``numpy`` generator). ``holdout``: ``(colour, shape)`` pairs that must
    not appear (at most one per colour).
    """
    if num_images < 0 or questions < 1:
        raise ValueError(f"need num_images >= 0 and questions >= 1, got {num_images}, {questions}")
    forced = {}
    for c, s in holdout:
        if not (0 <= c < NUM_OBJECTS and s in (0, 1)):
            raise ValueError(f"holdout pair {(c, s)} is not a (colour 0..5, shape 0/1) pair")
        if c in forced:
            raise ValueError(f"holdout holds out both shapes of {COLORS[c]}: no image could be drawn")
        forced[c] = 1 - s
    rng = np.random.default_rng(seed)
    centers = np.empty((num_images, NUM_OBJECTS, 2), dtype=np.int64)
    todo = np.arange(num_images)
    eye = np.eye(NUM_OBJECTS, dtype=bool)
    while len(todo):                                    # redraw images with a closest/furthest tie
        drawn = _place_centers(rng, len(todo), img_size, size, min_dist)
        d2 = _distances(drawn)
        near, far = np.where(eye, np.iinfo(np.int64).max, d2), np.where(eye, -1, d2)
        tied = _tied(near, near.min(-1)) | _tied(far, far.max(-1))
        centers[todo[~tied]] = drawn[~tied]
        todo = todo[tied]
    shapes = rng.integers(0, 2, (num_images, NUM_OBJECTS))
    for col, shape in forced.items():
        shapes[:, col] = shape
    q = 2 * questions
    q_color = rng.integers(0, NUM_OBJECTS, (num_images, q))
    q_sub = rng.integers(0, 3, (num_images, q))
    q_rel = np.broadcast_to(np.repeat([0, 1], questions), (num_images, q)).copy()
    answers = answer_questions(centers, shapes, q_color, q_rel, q_sub, img_size)
    images = render(centers, shapes, img_size, size)
    return SortOfClevr(images, centers.astype(np.int16), shapes.astype(np.int8), q_color.astype(np.int8),
                       q_rel.astype(np.int8), q_sub.astype(np.int8), answers)


def question_vectors(q_color, q_rel, q_sub) -> torch.Tensor:
    """The 11-long question vectors ``(..., 11)`` float32 for colour / relational flag / subtype arrays."""
    q_color, q_rel, q_sub = (torch.as_tensor(np.asarray(a), dtype=torch.long) for a in (q_color, q_rel, q_sub))
    out = torch.zeros(*q_color.shape, QUESTION_DIM)
    out.scatter_(-1, q_color.unsqueeze(-1), 1.0)
    out.scatter_(-1, (6 + q_rel).unsqueeze(-1), 1.0)
    out.scatter_(-1, (8 + q_sub).unsqueeze(-1), 1.0)
    return out


def question_involves_holdout(data: SortOfClevr, holdout: Sequence[Tuple[int, int]]) -> np.ndarray:
    """``(N, Q)`` bool: the question's answer depends on an object whose colour-shape pair is held out.

    Objects an answer depends on: X for the non-relational questions; X and the closest (furthest) object for
    ``closest`` (``furthest``); every object for ``count`` (it compares all shapes with X's).
    """
    n, q = data.q_color.shape
    held = np.zeros((n, NUM_OBJECTS), dtype=bool)
    for c, s in holdout:
        held[:, c] |= data.shapes[:, c] == s
    if not len(holdout):
        return np.zeros((n, q), dtype=bool)
    rows = np.arange(n)[:, None]
    qc = data.q_color.astype(np.int64)
    d2 = _distances(data.centers.astype(np.int64)).astype(np.float64)
    eye = np.eye(NUM_OBJECTS, dtype=bool)
    closest = np.where(eye, np.inf, d2).argmin(-1)[rows, qc]
    furthest = np.where(eye, -np.inf, d2).argmax(-1)[rows, qc]
    x_held = held[rows, qc]
    other = np.where(data.q_sub == 0, held[rows, closest], held[rows, furthest])
    rel = np.where(data.q_sub == 2, held.any(1, keepdims=True), x_held | other)
    return np.where(data.q_rel == 1, rel, x_held)


def describe_question(color: int, rel: int, sub: int) -> str:
    """A question in words: ``describe_question(0, 1, 0)`` -> ``'shape of the object closest to red?'``."""
    c = COLORS[color]
    if rel:
        return (f"shape of the object closest to {c}?", f"shape of the object furthest from {c}?",
                f"how many objects have the shape of {c}?")[sub]
    return (f"shape of {c}?", f"is {c} on the left?", f"is {c} on the top?")[sub]


# ----------------------------------------------------------------------------------------------------
# Cache and Dataset
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Params:
    num_train: int
    num_test: int
    questions: int
    img_size: int
    size: int
    min_dist: float
    holdout: Tuple[Tuple[int, int], ...]
    seed: int

    def tag(self) -> str:
        h = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"sort_of_clevr_{self.num_train}_{self.num_test}_h{len(self.holdout)}_s{self.seed}_{h}"


_FORMAT = 1


def load_or_generate(root: Optional[str | Path] = None, num_train: int = 9800, num_test: int = 200,
                     questions: int = 10, img_size: int = 75, size: int = 5, min_dist: float = 10.0,
                     holdout: Sequence[Tuple[int, int]] = (), seed: int = 0) -> Dict[str, SortOfClevr]:
    """Train and test splits, from ``root/<tag>.npz`` if cached there, else generated (and cached).

    The train split uses ``seed``, the test split ``seed + 1_000_003`` (disjoint streams); ``holdout``
    applies to the train split only. ``root=None`` generates without caching.

    Returns ``{"train": SortOfClevr, "test": SortOfClevr}``.
    """
    p = _Params(num_train, num_test, questions, img_size, size, float(min_dist),
                tuple(sorted((int(c), int(s)) for c, s in holdout)), seed)
    path = Path(root) / f"{p.tag()}.npz" if root is not None else None
    if path is not None and path.exists():
        try:
            with np.load(path) as z:
                if int(z["format"]) == _FORMAT and json.loads(str(z["params"])) == json.loads(json.dumps(asdict(p))):
                    return {s: SortOfClevr(**{f.name: z[f"{s}_{f.name}"] for f in fields(SortOfClevr)})
                            for s in ("train", "test")}
        except (OSError, KeyError, ValueError):
            pass                                       # unreadable or stale: regenerate and overwrite
    common: Dict[str, Any] = dict(questions=questions, img_size=img_size, size=size, min_dist=min_dist)
    out = {"train": generate(num_train, seed, holdout=p.holdout, **common),
           "test": generate(num_test, seed + 1_000_003, **common)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{s}_{f.name}": getattr(out[s], f.name) for s in out for f in fields(SortOfClevr)}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, format=_FORMAT, params=json.dumps(asdict(p)), **arrays)
        tmp.replace(path)
    return out


class SortOfClevrDataset(Dataset):
    """One item per (image, question): ``(image (3, H, W) float in [0, 1], question (11,), answer)``.

    Args:
        data: a :class:`SortOfClevr` split.
        kind: ``"all"``, ``"rel"`` or ``"nonrel"`` questions.
    """

    def __init__(self, data: SortOfClevr, kind: str = "all") -> None:
        if kind not in ("all", "rel", "nonrel"):
            raise ValueError(f"kind must be 'all', 'rel' or 'nonrel', got {kind!r}")
        self.data = data
        keep = np.ones_like(data.q_rel, dtype=bool) if kind == "all" else (data.q_rel == (kind == "rel"))
        self.img_idx, self.q_idx = (torch.from_numpy(a) for a in np.nonzero(keep))
        self.images = torch.from_numpy(data.images).permute(0, 3, 1, 2)          # (N, 3, H, W) uint8 view
        self.questions = question_vectors(data.q_color, data.q_rel, data.q_sub)  # (N, Q, 11)
        self.answers = torch.from_numpy(data.answers.astype(np.int64))

    def __len__(self) -> int:
        return len(self.img_idx)

    def __getitem__(self, i: int):
        n, q = int(self.img_idx[i]), int(self.q_idx[i])
        return self.images[n].float() / 255.0, self.questions[n, q], self.answers[n, q]

    def batch(self, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Items ``idx`` at once (the fast path the harness uses): images, questions, answers."""
        n, q = self.img_idx[idx], self.q_idx[idx]
        return self.images[n].float() / 255.0, self.questions[n, q], self.answers[n, q]
