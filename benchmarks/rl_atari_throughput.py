"""Atari PPO training throughput (env steps per second, rollout + update) by encoder, core and torch threads.

    python benchmarks/rl_atari_throughput.py                               # nature vs nfm, threads 1 vs 2
    python benchmarks/rl_atari_throughput.py --cores none lstm rim --encoders nature --threads 1
    python benchmarks/rl_atari_throughput.py --env ALE/Breakout-v5 --cores lstm rim --encoders nature --threads 1 \
        --vec-envs dummy subproc --n-envs 8 --n-steps 128 --updates 1
    python benchmarks/rl_atari_throughput.py --env-only --vec-envs dummy subproc envpool --n-envs 8

``--env-only`` times the environments alone (random actions, no network): ``dummy`` and ``subproc`` are
``rl.envs.make_atari``'s vec envs; ``envpool`` is envpool's own C++ pool with the same preprocessing
(``pip install "envpool>=1.1,<1.2"``; 1.2.x fails at import without its MuJoCo asset packages), 1 and 2
threads. It shows what a faster env could save at most; ``rl.train`` uses the first two.

Every variant trains ``rl.train``'s model on ``ALE/Pong-v5`` for ``--updates`` PPO updates after one
warm-up update; variants are interleaved over ``--repeats`` rounds and the median is reported with its
ratio to the first variant (the baseline), all in this process. Numbers on a shared machine are noisy.
Freed CPU memory is kept in the process as ``rl.train`` does (``--no-retain-memory``: glibc's default, whose
page faults cost up to 1.2x here, docs/rl.md).
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
from zoo.engine import arg, parse_config, retain_freed_memory


@dataclass
class Bench:
    """Atari PPO throughput: encoders x cores x threads, interleaved repeats, median steps/s."""

    env: str = arg("ALE/Pong-v5", help="game")
    encoders: List[str] = arg(["nature", "nfm"], help="encoders to compare")
    cores: List[str] = arg(["none"], help="cores to compare (none, lstm, gru, rim)")
    threads: List[int] = arg([1, 2], help="torch thread counts to compare")
    vec_envs: List[str] = arg(["dummy"], choices=["dummy", "subproc", "envpool"],
                              help="vector envs to compare (envpool: --env-only)")
    env_only: bool = arg(False, help="time the envs alone with random actions (no network)")
    n_envs: int = arg(4, help="envs")
    n_steps: int = arg(32, help="rollout length per env")
    n_epochs: int = arg(4, help="PPO epochs per update")
    updates: int = arg(2, help="timed PPO updates per repeat")
    repeats: int = arg(3, help="interleaved rounds")
    retain_memory: bool = arg(True, help="keep freed CPU memory in the process, as rl.train does (default)")


def _envpool(env_id: str, n_envs: int, threads: int):
    """envpool's Atari pool with rl.envs' training preprocessing (sticky 0.25, episodic life, clipped rewards)."""
    import envpool

    return envpool.make(env_id.split("/")[-1], env_type="gymnasium", num_envs=n_envs, batch_size=n_envs,
                        num_threads=threads, seed=0, episodic_life=True, reward_clip=True,
                        repeat_action_probability=0.25)


def env_only(b: Bench) -> None:
    """Random actions through each vector env, interleaved; steps/s and ratio to the first."""
    import numpy as np

    envs = {}
    for v in b.vec_envs:
        if v == "envpool":
            for t in b.threads:
                envs[f"envpool, {t} thread(s)"] = _envpool(b.env, b.n_envs, t)
        else:
            envs[v] = make_atari(b.env, b.n_envs, seed=0, vec_env=v)
    for e in envs.values():
        e.reset()
    rng, n = np.random.default_rng(0), b.updates * b.n_steps
    n_actions = make_atari(b.env, 1).action_space.n
    times = {k: [] for k in envs}
    for _ in range(b.repeats):
        for k, e in envs.items():
            acts = rng.integers(0, n_actions, size=(n, b.n_envs))
            t0 = time.perf_counter()
            for a in acts:
                e.step(a)
            times[k].append(time.perf_counter() - t0)
    base = n * b.n_envs / statistics.median(times[next(iter(envs))])
    print(f"{b.env}, {b.n_envs} envs, {n} steps x {b.repeats} repeats (median), random actions, no network")
    print("| vec env | steps/s | ratio |\n|---|---|---|")
    for k in envs:
        sps = n * b.n_envs / statistics.median(times[k])
        print(f"| {k} | {sps:.1f} | {sps / base:.2f}x |")


def main(argv=None) -> None:
    b = parse_config(Bench, argv, prog="python benchmarks/rl_atari_throughput.py")
    if b.env_only:
        return env_only(b)
    retained = b.retain_memory and retain_freed_memory("cpu")
    if "envpool" in b.vec_envs:
        raise SystemExit("--vec-envs envpool is for --env-only (rl.train steps dummy or subproc envs)")
    variants = list(itertools.product(b.cores, b.encoders, b.vec_envs, b.threads))
    models = {}
    for core, enc, vec, _ in variants:
        if (core, enc, vec) not in models:
            cfg = Config(env=b.env, core=core, encoder=enc, n_envs=b.n_envs, n_steps=b.n_steps,
                         n_epochs=b.n_epochs, steps=10**9, progress=False, vec_env=vec)
            model = build_model(cfg, make_atari(cfg.atari_spec(), b.n_envs, seed=0, vec_env=vec))
            model.learn(b.n_envs * b.n_steps)                         # warm-up update
            models[core, enc, vec] = model
    times = {v: [] for v in variants}
    steps = b.updates * b.n_envs * b.n_steps
    for _ in range(b.repeats):
        for v in variants:
            torch.set_num_threads(v[3])
            model = models[v[:3]]
            t0 = time.perf_counter()
            model.learn(steps, reset_num_timesteps=False)
            times[v].append(time.perf_counter() - t0)
    base = steps / statistics.median(times[variants[0]])
    print(f"{b.env}, {b.n_envs} envs x {b.n_steps} steps, {b.n_epochs} epochs, {b.updates} updates x {b.repeats} "
          f"repeats (median), malloc {'retained' if retained else 'default'}")
    print("| core | encoder | vec env | threads | steps/s | ratio |\n|---|---|---|---|---|---|")
    for v in variants:
        sps = steps / statistics.median(times[v])
        print(f"| {v[0]} | {v[1]} | {v[2]} | {v[3]} | {sps:.1f} | {sps / base:.2f}x |")


if __name__ == "__main__":
    main()
