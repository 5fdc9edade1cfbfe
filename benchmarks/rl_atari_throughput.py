"""Atari PPO training throughput (env steps per second, rollout + update) by encoder, core and torch threads.

    python benchmarks/rl_atari_throughput.py                               # nature vs nfm, threads 1 vs 2
    python benchmarks/rl_atari_throughput.py --cores none lstm rim --encoders nature --threads 1

Every variant trains ``rl.train``'s model on ``ALE/Pong-v5`` for ``--updates`` PPO updates after one
warm-up update; variants are interleaved over ``--repeats`` rounds and the median is reported with its
ratio to the first variant (the baseline), all in this process. Numbers on a shared machine are noisy.
"""
from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from typing import List

import torch

from rl.envs import make_atari
from rl.train import Config, build_model
from zoo.engine import arg, parse_config


@dataclass
class Bench:
    """Atari PPO throughput: encoders x cores x threads, interleaved repeats, median steps/s."""

    env: str = arg("ALE/Pong-v5", help="game")
    encoders: List[str] = arg(["nature", "nfm"], help="encoders to compare")
    cores: List[str] = arg(["none"], help="cores to compare (none, lstm, gru, rim)")
    threads: List[int] = arg([1, 2], help="torch thread counts to compare")
    n_envs: int = arg(4, help="envs")
    n_steps: int = arg(32, help="rollout length per env")
    n_epochs: int = arg(4, help="PPO epochs per update")
    updates: int = arg(2, help="timed PPO updates per repeat")
    repeats: int = arg(3, help="interleaved rounds")


def main(argv=None) -> None:
    b = parse_config(Bench, argv, prog="python benchmarks/rl_atari_throughput.py")
    variants = list(itertools.product(b.cores, b.encoders, b.threads))
    models = {}
    for core, enc, _ in variants:
        if (core, enc) not in models:
            cfg = Config(env=b.env, core=core, encoder=enc, n_envs=b.n_envs, n_steps=b.n_steps,
                         n_epochs=b.n_epochs, steps=10**9, progress=False)
            model = build_model(cfg, make_atari(cfg.atari_spec(), b.n_envs, seed=0))
            model.learn(b.n_envs * b.n_steps)                         # warm-up update
            models[core, enc] = model
    times = {v: [] for v in variants}
    steps = b.updates * b.n_envs * b.n_steps
    for _ in range(b.repeats):
        for v in variants:
            torch.set_num_threads(v[2])
            model = models[v[:2]]
            t0 = time.perf_counter()
            model.learn(steps, reset_num_timesteps=False)
            times[v].append(time.perf_counter() - t0)
    base = steps / statistics.median(times[variants[0]])
    print(f"{b.env}, {b.n_envs} envs x {b.n_steps} steps, {b.n_epochs} epochs, {b.updates} updates x {b.repeats} "
          f"repeats (median)")
    print("| core | encoder | threads | steps/s | ratio |\n|---|---|---|---|---|")
    for v in variants:
        sps = steps / statistics.median(times[v])
        print(f"| {v[0]} | {v[1]} | {v[2]} | {sps:.1f} | {sps / base:.2f}x |")


if __name__ == "__main__":
    main()
