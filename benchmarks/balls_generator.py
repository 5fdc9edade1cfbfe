"""Speed of the bouncing-balls generator (issue 14's goal: 1,000 sequences of 51 frames at 64x64 in <= 10 s).

    python benchmarks/balls_generator.py                     # 1,000 x 51 x 64x64, 4 balls
    python benchmarks/balls_generator.py --balls 6 8 --sequences 500

Prints the wall time and the process CPU time (median of ``--repeats``) of the whole
``zoo.data.bouncing_balls.generate`` call and of its stages (initial state, physics, rendering), the goal
ratio ``wall / 10 s``, and the patch renderer against the baseline of the same process: the formula
evaluated densely on every pixel (NumPy, the tests' reference), on the first ``--baseline-sequences``.
The generator is NumPy and single-threaded, so there is no thread count to vary. On a shared machine the
wall time is inflated by other jobs; the CPU time is what a quiet core needs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

from zoo.data.bouncing_balls import (BOX, generate, initial_state, pixel_centres, render,  # noqa: E402
                                     simulate)

GOAL_S = 10.0


def _time(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def dense_render(pos: np.ndarray, r: np.ndarray, res: int, chunk: int = 64) -> np.ndarray:
    """Baseline: ``sum_i exp(-(d_i^2 / r_i^2)^4) > 0.5`` on every pixel. pos ``(N, T, n, 2)``, r ``(N, n)``."""
    c = pixel_centres(res, BOX).astype(np.float32)
    out = np.empty(pos.shape[:2] + (res, res), dtype=np.uint8)
    for s in range(0, len(pos), chunk):
        p = pos[s:s + chunk].astype(np.float32)
        inv = (1.0 / r[s:s + chunk, None, :, None] ** 2).astype(np.float32)
        qx = (c - p[..., 0:1]) ** 2 * inv
        qy = (c - p[..., 1:2]) ** 2 * inv
        q = qy[..., :, None] + qx[..., None, :]
        out[s:s + chunk] = np.exp(-(q * q) ** 2).sum(2) > 0.5
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", type=int, default=1000)
    p.add_argument("--frames", type=int, default=51)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--balls", type=int, nargs="+", default=[4], help="a count or a LOW HIGH range")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-sequences", type=int, default=100)
    a = p.parse_args()
    balls = a.balls[0] if len(a.balls) == 1 else (a.balls[0], a.balls[-1])
    n = a.balls[-1]
    nb = min(a.baseline_sequences, a.sequences)
    print(f"generate({a.sequences}, balls={balls}, frames={a.frames}, resolution={a.resolution}); "
          f"median of {a.repeats}; renderer vs the dense baseline on {nb} sequences")
    rows = {k: [] for k in ("generate (total)", "initial state", "physics", "render", "render (baseline part)",
                            "dense baseline")}
    for rep in range(a.repeats):
        rows["generate (total)"].append(_time(partial(generate, a.sequences, balls, frames=a.frames,
                                                      resolution=a.resolution, seed=rep)))
        state = {}
        rows["initial state"].append(_time(lambda: state.update(
            zip("xvrm", initial_state(np.random.default_rng(rep), a.sequences, n)))))  # noqa: B023
        x, v, r, m = state["x"], state["v"], state["r"], state["m"]
        pos = simulate(x, v, r, m, a.frames)[0]
        rows["physics"].append(_time(partial(simulate, x, v, r, m, a.frames)))
        rows["render"].append(_time(partial(render, pos, r[:, None], a.resolution)))
        rows["render (baseline part)"].append(_time(partial(render, pos[:nb], r[:nb, None], a.resolution)))
        rows["dense baseline"].append(_time(partial(dense_render, pos[:nb], r[:nb], a.resolution)))
        if rep == 0:
            got, want = render(pos[:nb], r[:nb, None], a.resolution), dense_render(pos[:nb], r[:nb], a.resolution)
            print(f"patch renderer vs dense float32 formula on {nb} sequences: {int((got != want).sum())} of "
                  f"{got.size} pixels differ (knife-edge float32 rounding; the tests compare in float64)")
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in rows.items()}
    print(f"{'stage':>24} | {'wall s':>7} | {'cpu s':>7}")
    for k, (w, c) in med.items():
        print(f"{k:>24} | {w:7.2f} | {c:7.2f}")
    w, c = med["generate (total)"]
    print(f"goal: {a.sequences} sequences in <= {GOAL_S:.0f} s: wall {w:.2f} s ({w / GOAL_S:.2f} of the goal), "
          f"CPU {c:.2f} s ({c / GOAL_S:.2f})")
    speedup = med["dense baseline"][1] / med["render (baseline part)"][1]
    print(f"patch renderer vs dense baseline (CPU time, same process): {speedup:.1f}x faster")


if __name__ == "__main__":
    main()
