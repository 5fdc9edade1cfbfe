"""Bouncing balls: the video data of the RIMs object experiments (thesis ch. 8.4.2, Fig. 3).

No public generator of that data exists (van Steenkiste et al. 2018 built theirs on Sutskever's RTRBM
``bouncing_balls.py``); this is one, vectorized over sequences and balls, deterministic per seed.

Physics (``shared/docs/tasks.md``), in a square box of side ``box = 10``:

* initial positions ``2 + 8 U`` per coordinate, redrawn while a ball crosses a wall or overlaps an earlier
  ball (ball by ball, for all sequences at once; the reference redraws the whole configuration, which
  with 6-8 balls almost never succeeds);
* velocities Gaussian, the whole ``(balls, 2)`` matrix of a sequence scaled to Frobenius norm ``speed = 0.5``;
* per frame, ``substeps = 2`` Euler steps of ``dt = 1 / substeps``: ``x += dt v``; then walls reflect (the
  position is mirrored back into the box and the normal velocity component flips sign, so every ball stays
  inside, ``r <= x <= box - r``); then ball-ball collisions: a pair ``(i, j)`` collides when
  ``|x_i - x_j| < r_i + r_j`` and the balls approach. Along the unit line of centres ``w`` the normal
  components ``u_i = v_i . w`` exchange as a 1-D elastic collision of masses ``m_i, m_j``::

      u_j' = (2 m_i u_i + (m_j - m_i) u_j) / (m_i + m_j),   u_i' = u_j' + (u_j - u_i),
      v_i += (u_i' - u_i) w,   v_j += (u_j' - u_j) w

  which conserves momentum ``sum m v`` and kinetic energy ``sum m |v|^2 / 2`` exactly (up to rounding).
  Simultaneous collisions are resolved in rounds of disjoint pairs (a matching, lower pair index first,
  the reference's pair order), so each exchange is a two-body collision and energy stays conserved.

Rendering on a ``resolution x resolution`` grid of pixel centres ``((k + 1/2) box / resolution)``: the
intensity ``sum_i exp(-(d_i^2 / r_i^2)^4)`` (``d_i`` the distance to ball ``i``'s centre), binarized at
``threshold = 0.5``: a single ball lights the pixels within ``r (ln 2)^(1/8) = 0.955 r`` of its centre.
``x`` is the column coordinate, ``y`` the row coordinate (row 0 at ``y = 0``).

The curtain: a fixed rectangle ``(x0, y0, x1, y1)`` in box units; every pixel whose centre lies inside it
is 0 (the balls behind it are hidden; the curtain itself is not drawn).

Radii, masses and curtain geometry were not published; ours are parameters with documented defaults:
radii uniform in ``[0.8, 1.2]`` per ball, masses proportional to radii, curtain ``(3.5, 0, 6.5, 10)``
(a vertical band over the middle 30 % of the frame).

    >>> data = generate(100, balls=4, resolution=32, seed=0)           # 100 sequences of 51 frames
    >>> data.frames.shape, data.frames.dtype
    ((100, 51, 32, 32), dtype('uint8'))
    >>> data.save("balls4.npz"); same = BouncingBalls.load("balls4.npz")
    >>> ds = BouncingBallsDataset(same)                                # ds[i]: (51, 1, 32, 32) float
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch

__all__ = ["BouncingBalls", "BouncingBallsDataset", "generate", "initial_state", "simulate", "physics_substep",
           "render", "curtain_mask", "pixel_centres", "describe", "DEFAULT_CURTAIN", "DEFAULT_RADII", "BOX"]

BOX = 10.0
DEFAULT_RADII = (0.8, 1.2)
DEFAULT_CURTAIN = (3.5, 0.0, 6.5, 10.0)
_FORMAT_VERSION = 1

Range = Union[int, Tuple[int, int], Sequence[int]]
FRange = Union[float, Tuple[float, float], Sequence[float]]


def _as_range(value, name: str, cast=float) -> Tuple:
    """``v`` or ``(lo, hi)`` -> ``(lo, hi)``, checked."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        lo = hi = cast(value)
    else:
        vals = list(value)
        if len(vals) not in (1, 2):
            raise ValueError(f"{name} must be one value or a (low, high) pair, got {value!r}")
        lo, hi = cast(vals[0]), cast(vals[-1])
    if lo > hi:
        raise ValueError(f"{name}: low {lo} > high {hi}")
    return lo, hi


# --------------------------------------------------------------------------------------------------------
# physics
# --------------------------------------------------------------------------------------------------------

def _place(rng: np.random.Generator, r: np.ndarray, box: float, tries: int) -> Tuple[np.ndarray, np.ndarray]:
    """Positions ``2 + 8 U`` (for ``box = 10``) for radii ``r (N, n)``, ball by ball, all sequences at once.

    Returns ``x (N, n, 2)`` and ``ok (N,)``: false where some ball found no room in ``tries`` draws.
    """
    num, balls = r.shape
    lo, span = 0.2 * box, 0.8 * box
    x = np.zeros((num, balls, 2))
    ok = np.ones(num, dtype=bool)
    for k in range(balls):
        pending = np.flatnonzero(ok)
        for _ in range(tries):
            cand = lo + span * rng.random((len(pending), 2))
            rk = r[pending, k][:, None]
            fits = ((cand - rk >= 0) & (cand + rk <= box)).all(-1)
            if k:
                d = np.linalg.norm(cand[:, None, :] - x[pending, :k], axis=-1)        # (P, k)
                fits &= (d >= rk + r[pending, :k]).all(-1)
            x[pending[fits], k] = cand[fits]
            pending = pending[~fits]
            if not len(pending):
                break
        ok[pending] = False
    return x, ok


def initial_state(rng: np.random.Generator, num: int, balls: int, radii: FRange = DEFAULT_RADII,
                  masses: Optional[FRange] = None, box: float = BOX, speed: float = 0.5,
                  tries_per_ball: int = 100, max_restarts: int = 100
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Initial positions, velocities, radii and masses of ``num`` sequences of ``balls`` balls.

    Radii are uniform in ``radii`` (a value or ``(low, high)``), per ball; masses are uniform in ``masses``
    when given, else equal to the radii (proportional, the documented default). Positions ``2 + 8 U``
    (scaled to ``box``), ball ``k`` redrawn until it is inside the box and clear of balls ``0..k-1``; a
    sequence whose ball finds no room in ``tries_per_ball`` draws starts over (up to ``max_restarts``).

    Returns:
        x ``(num, balls, 2)``, v ``(num, balls, 2)`` (``|v|_F = speed`` per sequence), r ``(num, balls)``,
        m ``(num, balls)``, all float64.
    """
    r_lo, r_hi = _as_range(radii, "radii")
    if r_lo <= 0:
        raise ValueError(f"radii must be positive, got {radii!r}")
    if 2 * r_hi >= box:
        raise ValueError(f"radius {r_hi} does not fit in a box of side {box}")
    r = rng.uniform(r_lo, r_hi, size=(num, balls))
    if masses is None:
        m = r.copy()
    else:
        m_lo, m_hi = _as_range(masses, "masses")
        if m_lo <= 0:
            raise ValueError(f"masses must be positive, got {masses!r}")
        m = rng.uniform(m_lo, m_hi, size=(num, balls))
    v = rng.standard_normal((num, balls, 2))
    v *= speed / np.maximum(np.linalg.norm(v.reshape(num, -1), axis=1), 1e-12)[:, None, None]
    x = np.zeros((num, balls, 2))
    pending = np.arange(num)
    for _ in range(max_restarts):                                     # a jammed sequence starts over
        placed, ok = _place(rng, r[pending], box, tries_per_ball)
        x[pending[ok]] = placed[ok]
        pending = pending[~ok]
        if not len(pending):
            break
    else:
        raise ValueError(f"could not place {balls} balls of radius up to {r_hi} in a box of side {box} "
                         f"({max_restarts} restarts); use fewer or smaller balls")
    return x, v, r, m


def _pairs(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``j < i``, in the reference's order ``(1,0), (2,0), (2,1), (3,0), ...``."""
    i, j = np.tril_indices(n, -1)
    return i, j


def physics_substep(x: np.ndarray, v: np.ndarray, r: np.ndarray, m: np.ndarray, dt: float, box: float = BOX,
                    max_rounds: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One Euler sub-step: move, reflect at the walls, resolve ball-ball collisions (see module docstring).

    Args:
        x, v: ``(N, n, 2)`` positions and velocities (not modified; new arrays are returned).
        r, m: ``(N, n)`` radii and masses.

    Returns:
        ``x, v`` after the step, ``wall (N, n)`` bool (the ball bounced off a wall), ``collisions (N,)``
        int (pair exchanges applied).
    """
    x = x + dt * v
    v = v.copy()
    lo = r[..., None]
    hi = box - lo
    below, above = x < lo, x > hi
    x = np.where(below, 2 * lo - x, np.where(above, 2 * hi - x, x))
    v = np.where(below, np.abs(v), np.where(above, -np.abs(v), v))
    wall = cast(np.ndarray, (below | above).any(-1))                  # (N, n): an array, never a scalar
    n = x.shape[1]
    collisions = np.zeros(x.shape[0], dtype=np.int64)
    if n < 2:
        return x, v, wall, collisions
    i, j = _pairs(n)
    d = x[:, i] - x[:, j]                                              # (N, P, 2), from j to i
    dist2 = (d * d).sum(-1)
    touching = dist2 < (r[:, i] + r[:, j]) ** 2
    rows = np.flatnonzero(touching.any(1))                             # only sequences with contacts
    if not len(rows):
        return x, v, wall, collisions
    d, touching, vs = d[rows], touching[rows], v[rows]
    w = d / np.maximum(np.sqrt(dist2[rows]), 1e-300)[..., None]        # unit line of centres
    mi, mj = m[rows][:, i], m[rows][:, j]
    onehot_i, onehot_j = np.eye(n)[i], np.eye(n)[j]                    # (P, n)
    inc = (onehot_i + onehot_j).T > 0                                  # (n, P) ball-pair incidence
    prio = np.arange(len(i), dtype=np.float64)
    count = np.zeros(len(rows), dtype=np.int64)
    for _ in range(max_rounds or len(i)):
        ui = (vs[:, i] * w).sum(-1)
        uj = (vs[:, j] * w).sum(-1)
        hit = touching & (ui - uj < 0)                                 # overlapping and approaching
        if not hit.any():
            break
        # a matching: a pair goes this round if it is the first colliding pair of both its balls
        score = np.where(hit, prio, np.inf)                            # (R, P)
        first = np.where(inc[None], score[:, None, :], np.inf).min(-1)   # (R, n) first pair per ball
        go = hit & (score == first[:, i]) & (score == first[:, j])
        uj_new = (2 * mi * ui + (mj - mi) * uj) / (mi + mj)
        ui_new = uj_new + (uj - ui)
        di = np.where(go, ui_new - ui, 0.0)[..., None] * w             # (R, P, 2)
        dj = np.where(go, uj_new - uj, 0.0)[..., None] * w
        vs = vs + np.einsum("bpc,pn->bnc", di, onehot_i) + np.einsum("bpc,pn->bnc", dj, onehot_j)
        count += go.sum(1)
    v[rows] = vs
    collisions[rows] = count
    return x, v, wall, collisions


def simulate(x: np.ndarray, v: np.ndarray, r: np.ndarray, m: np.ndarray, frames: int = 51, substeps: int = 2,
             box: float = BOX) -> Tuple[np.ndarray, np.ndarray]:
    """Run the physics: the state at every frame (recorded before that frame's sub-steps).

    Args:
        x, v: ``(N, n, 2)`` initial positions and velocities; r, m: ``(N, n)``.

    Returns:
        positions, velocities: ``(N, frames, n, 2)`` float64.
    """
    if frames < 1 or substeps < 1:
        raise ValueError(f"frames and substeps must be >= 1, got {frames}, {substeps}")
    N, n, _ = x.shape
    pos = np.empty((N, frames, n, 2))
    vel = np.empty((N, frames, n, 2))
    dt = 1.0 / substeps
    for t in range(frames):
        pos[:, t], vel[:, t] = x, v
        for _ in range(substeps):
            x, v, _, _ = physics_substep(x, v, r, m, dt, box)
    return pos, vel


# --------------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------------

def pixel_centres(resolution: int, box: float = BOX) -> np.ndarray:
    """Box coordinates of the pixel centres along one axis: ``(k + 1/2) box / resolution``."""
    return (np.arange(resolution) + 0.5) * (box / resolution)


def curtain_mask(resolution: int, rect: Sequence[float], box: float = BOX) -> np.ndarray:
    """``(resolution, resolution)`` bool, true for the pixels whose centres lie inside ``rect = (x0, y0, x1, y1)``
    (``x`` columns, ``y`` rows, box units, bounds inclusive)."""
    x0, y0, x1, y1 = map(float, rect)
    c = pixel_centres(resolution, box)
    cols = (c >= x0) & (c <= x1)
    rows = (c >= y0) & (c <= y1)
    return rows[:, None] & cols[None, :]


def render(positions: np.ndarray, radii: np.ndarray, resolution: int = 64, box: float = BOX,
           threshold: float = 0.5, curtain: Optional[Sequence[float]] = None, tail: float = 1e-7,
           chunk_frames: int = 64) -> np.ndarray:
    """Binary frames of balls: ``sum_i exp(-(d_i^2 / r_i^2)^4) > threshold`` on the pixel-centre grid.

    Each ball's term is evaluated on a square patch of pixels around its centre that holds every pixel
    where the term exceeds ``tail`` (``d^2 / r^2 < (-ln tail)^(1/4)``), and the patches of all frames and
    balls are summed into the frames with one ``np.bincount``. Terms left out are below ``tail`` each, so a
    pixel can differ from the dense sum only if that sum lies within ``n * tail`` of the threshold.
    NumPy, single-threaded: no thread pool to oversubscribe on a shared machine.

    Args:
        positions: ``(..., n, 2)`` ball centres (``x`` column, ``y`` row); NaN rows are absent balls.
        radii: broadcastable to ``positions.shape[:-1]``: ``(n,)``, or ``(N, 1, n)`` for positions
            ``(N, T, n, 2)``; NaN or 0 for absent balls.
        curtain: a rectangle ``(x0, y0, x1, y1)`` whose pixels are set to 0, or ``None``.
        chunk_frames: frames rendered per chunk (work arrays stay in cache).

    Returns:
        ``positions.shape[:-2] + (resolution, resolution)`` uint8 in ``{0, 1}``.
    """
    pos = np.asarray(positions, dtype=np.float64)
    lead, n = pos.shape[:-2], pos.shape[-2]
    r = np.broadcast_to(np.asarray(radii, dtype=np.float64), lead + (n,)).reshape(-1, n)
    pos = pos.reshape(-1, n, 2)
    absent = np.isnan(pos).any(-1) | ~(r > 0)                              # NaN radius compares false
    num_frames = pos.shape[0]
    frames: np.ndarray = np.zeros((num_frames, resolution, resolution), dtype=np.uint8)
    if num_frames and n and not absent.all():
        px = resolution / box                                              # pixels per box unit
        q_cut = (-math.log(tail)) ** 0.25                                  # term < tail beyond q_cut
        half = int(math.ceil(r[~absent].max() * math.sqrt(q_cut) * px)) + 1
        P = 2 * half + 1                                                   # patch side, pixels
        side = resolution + 2 * P                                          # canvas padded by P
        offs = np.arange(P) - half
        pos = np.where(absent[..., None], 0.0, pos)
        inv_r2 = np.where(absent, 0.0, 1.0 / np.where(absent, 1.0, r) ** 2)
        keep = (~absent).astype(np.float32)
        for s in range(0, num_frames, chunk_frames):
            p, w, k = pos[s:s + chunk_frames], inv_r2[s:s + chunk_frames], keep[s:s + chunk_frames]
            f = p.shape[0]
            idx = np.rint(p * px - 0.5).astype(np.int64)[..., None] + offs        # (f, n, 2, P) pixel indices
            d = (idx + 0.5) / px - p[..., None]                                    # pixel centre - ball centre
            q1 = (d * d * w[..., None, None]).astype(np.float32)                   # per-axis d^2 / r^2
            q = q1[:, :, 1, :, None] + q1[:, :, 0, None, :]                        # (f, n, rows, cols)
            np.square(q, out=q)
            np.square(q, out=q)
            np.negative(q, out=q)
            np.exp(q, out=q)                                                       # exp(-(d^2 / r^2)^4)
            q *= k[..., None, None]
            idx += P
            flat = idx[:, :, 1, :, None] * side + idx[:, :, 0, None, :]
            flat += (np.arange(f) * (side * side))[:, None, None, None]
            canvas = np.bincount(flat.ravel(), weights=q.ravel(), minlength=f * side * side)
            canvas = canvas.reshape(f, side, side)[:, P:P + resolution, P:P + resolution]
            frames[s:s + f] = canvas > threshold
    frames = frames.reshape(lead + (resolution, resolution))
    if curtain is not None:
        frames[..., curtain_mask(resolution, curtain, box)] = 0
    return frames


# --------------------------------------------------------------------------------------------------------
# data sets
# --------------------------------------------------------------------------------------------------------

@dataclass
class BouncingBalls:
    """A generated data set: frames and the physical state behind them.

    Attributes:
        frames: ``(N, T, H, W)`` uint8 in ``{0, 1}``.
        positions, velocities: ``(N, T, n_max, 2)`` float32 at every frame; NaN for absent balls (a
            sequence with fewer than ``n_max`` balls).
        radii, masses: ``(N, n_max)`` float32, NaN for absent balls.
        num_balls: ``(N,)`` int64.
        box, resolution, threshold, substeps, speed, seed: the generator's settings.
        curtain: ``(x0, y0, x1, y1)`` or ``None``.
    """

    frames: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    radii: np.ndarray
    masses: np.ndarray
    num_balls: np.ndarray
    box: float = BOX
    resolution: int = 64
    threshold: float = 0.5
    substeps: int = 2
    speed: float = 0.5
    seed: int = 0
    curtain: Optional[Tuple[float, float, float, float]] = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write a compressed ``.npz`` (frames uint8, states float32, settings as scalars)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp, frames=self.frames, positions=self.positions, velocities=self.velocities, radii=self.radii,
            masses=self.masses, num_balls=self.num_balls, box=self.box, resolution=self.resolution,
            threshold=self.threshold, substeps=self.substeps, speed=self.speed, seed=self.seed,
            curtain=np.asarray(self.curtain if self.curtain is not None else [np.nan] * 4, dtype=np.float64),
            format_version=_FORMAT_VERSION)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "BouncingBalls":
        """Read a data set written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; write one with "
                                    f"python -m tasks.bouncing_balls --generate-only --out {path.parent}")
        with np.load(path) as z:
            missing = {"frames", "positions", "velocities", "radii", "masses", "num_balls"} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a bouncing-balls data set (missing {sorted(missing)})")
            curtain = z["curtain"]
            return cls(frames=z["frames"], positions=z["positions"], velocities=z["velocities"],
                       radii=z["radii"], masses=z["masses"], num_balls=z["num_balls"], box=float(z["box"]),
                       resolution=int(z["resolution"]), threshold=float(z["threshold"]),
                       substeps=int(z["substeps"]), speed=float(z["speed"]), seed=int(z["seed"]),
                       curtain=None if np.isnan(curtain).any()
                       else cast(Tuple[float, float, float, float], tuple(map(float, curtain))))

    def tensor(self) -> torch.Tensor:
        """All frames as a ``(N, T, 1, H, W)`` uint8 tensor (shares memory with :attr:`frames`)."""
        return torch.from_numpy(self.frames).unsqueeze(2)


class BouncingBallsDataset(torch.utils.data.Dataset):
    """A :class:`BouncingBalls` set (or the path of a saved one) as a torch ``Dataset``.

    ``ds[i]`` is sequence ``i``'s frames, ``(T, 1, H, W)`` float32 in ``{0, 1}``; with ``with_state=True``
    a dict ``{"frames", "positions", "velocities", "radii", "masses", "num_balls"}``.
    """

    def __init__(self, data: Union[BouncingBalls, str, os.PathLike], with_state: bool = False) -> None:
        self.data = data if isinstance(data, BouncingBalls) else BouncingBalls.load(data)
        self.with_state = with_state

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        frames = torch.from_numpy(self.data.frames[i]).unsqueeze(1).float()
        if not self.with_state:
            return frames
        d = self.data
        return {"frames": frames, "positions": torch.from_numpy(d.positions[i]),
                "velocities": torch.from_numpy(d.velocities[i]), "radii": torch.from_numpy(d.radii[i]),
                "masses": torch.from_numpy(d.masses[i]), "num_balls": int(d.num_balls[i])}


def generate(num_sequences: int, balls: Range = 4, *, frames: int = 51, resolution: int = 64,
             radii: FRange = DEFAULT_RADII, masses: Optional[FRange] = None, box: float = BOX,
             speed: float = 0.5, substeps: int = 2, threshold: float = 0.5,
             curtain: Optional[Sequence[float]] = None, seed: int = 0) -> BouncingBalls:
    """Generate ``num_sequences`` bouncing-ball videos (module docstring: physics and rendering).

    Args:
        balls: number of balls, or ``(low, high)``: each sequence draws its count uniformly from the range.
        frames: frames per sequence (51, the standard).
        resolution: frame side in pixels (64, the standard; 32 for quick runs).
        radii: ball radius, or ``(low, high)`` drawn per ball (box units; the box side is ``box``).
        masses: ``None`` (proportional to radii, the default) or a value / ``(low, high)`` drawn per ball.
        speed: Frobenius norm of each sequence's initial ``(balls, 2)`` velocity matrix.
        curtain: ``(x0, y0, x1, y1)`` rectangle hiding the balls behind it, or ``None``
            (:data:`DEFAULT_CURTAIN` is ours).
        seed: everything is drawn from ``numpy.random.default_rng(seed)``; same seed, same data.
    """
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    lo, hi = _as_range(balls, "balls", int)
    if lo < 1:
        raise ValueError(f"balls must be >= 1, got {balls!r}")
    if curtain is not None:
        curtain = tuple(map(float, curtain))
        if len(curtain) != 4 or not (curtain[0] < curtain[2] and curtain[1] < curtain[3]):
            raise ValueError(f"curtain must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {curtain!r}")
    rng = np.random.default_rng(seed)
    counts = rng.integers(lo, hi + 1, size=num_sequences)
    out_frames = np.empty((num_sequences, frames, resolution, resolution), dtype=np.uint8)
    pos_all = np.full((num_sequences, frames, hi, 2), np.nan, dtype=np.float32)
    vel_all = np.full((num_sequences, frames, hi, 2), np.nan, dtype=np.float32)
    r_all = np.full((num_sequences, hi), np.nan, dtype=np.float32)
    m_all = np.full((num_sequences, hi), np.nan, dtype=np.float32)
    for n in range(lo, hi + 1):                                        # one vectorized group per ball count
        idx = np.flatnonzero(counts == n)
        if not len(idx):
            continue
        x, v, r, m = initial_state(rng, len(idx), n, radii, masses, box, speed)
        pos, vel = simulate(x, v, r, m, frames, substeps, box)
        out_frames[idx] = render(pos, r[:, None], resolution, box, threshold, curtain)
        pos_all[idx, :, :n], vel_all[idx, :, :n] = pos, vel
        r_all[idx, :n], m_all[idx, :n] = r, m
    return BouncingBalls(frames=out_frames, positions=pos_all, velocities=vel_all, radii=r_all, masses=m_all,
                         num_balls=counts.astype(np.int64), box=box, resolution=resolution, threshold=threshold,
                         substeps=substeps, speed=speed, seed=seed, curtain=curtain)


def describe(balls: Range) -> str:
    """``4`` -> ``"4"``, ``(6, 8)`` -> ``"6-8"``: the name a ball count or range goes by in results."""
    lo, hi = _as_range(balls, "balls", int)
    return str(lo) if lo == hi else f"{lo}-{hi}"

