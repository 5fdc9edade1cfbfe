"""Speed of the bouncing-balls generator (issue 14's goal: 1,000 sequences of 51 frames at 64x64 in <= 10 s).

    python benchmarks/balls_generator.py                     # 1,000 x 51 x 64x64, 4 balls, 1 and 2 threads
    python benchmarks/balls_generator.py --balls 6 8 --sequences 500

Prints, per thread count, the wall time and the process CPU time (median of ``--repeats``) of the whole
``zoo.data.bouncing_balls.generate`` call and of its two stages (physics, rendering), and the goal ratio
``wall / 10 s``. On a shared machine the wall time is inflated by other jobs; the CPU time of a
single-threaded run is what a quiet core would need, so it is printed too.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

from zoo.data.bouncing_balls import generate, initial_state, render, simulate  # noqa: E402

GOAL_S = 10.0


def _time(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", type=int, default=1000)
    p.add_argument("--frames", type=int, default=51)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--balls", type=int, nargs="+", default=[4], help="a count or a LOW HIGH range")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    balls = a.balls[0] if len(a.balls) == 1 else (a.balls[0], a.balls[-1])
    print(f"generate({a.sequences}, balls={balls}, frames={a.frames}, resolution={a.resolution}); "
          f"median of {a.repeats}, interleaved over thread counts")
    rows = {t: {"total": [], "physics": [], "render": []} for t in a.threads}
    n = balls if isinstance(balls, int) else balls[1]
    for rep in range(a.repeats):
        x, v, r, m = initial_state(np.random.default_rng(rep), a.sequences, n)
        pos = simulate(x, v, r, m, a.frames)[0]
        for t in a.threads:
            torch.set_num_threads(t)
            rows[t]["total"].append(_time(partial(generate, a.sequences, balls, frames=a.frames,
                                                  resolution=a.resolution, seed=rep)))
            rows[t]["physics"].append(_time(partial(simulate, x, v, r, m, a.frames)))
            rows[t]["render"].append(_time(partial(render, pos, r[:, None], a.resolution)))
    print(f"{'threads':>7} | {'stage':>8} | {'wall s':>7} | {'cpu s':>7} | wall / {GOAL_S:.0f} s goal")
    for t in a.threads:
        for stage, vals in rows[t].items():
            wall = statistics.median(v[0] for v in vals)
            cpu = statistics.median(v[1] for v in vals)
            goal = f"{wall / GOAL_S:.2f}" if stage == "total" else ""
            print(f"{t:>7} | {stage:>8} | {wall:7.2f} | {cpu:7.2f} | {goal}")


if __name__ == "__main__":
    main()
