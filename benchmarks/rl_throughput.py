"""RecurrentPPO training throughput (env steps per second, rollouts + updates): RIM / LSTM / GRU cores of
:class:`RecurrentCorePolicy` against sb3-contrib's stock ``MlpLstmPolicy``, same env, same hidden size,
same PPO settings, in one process.

    python benchmarks/rl_throughput.py --lr 0                           # issue 16's table: speed alone (same episodes)
    python benchmarks/rl_throughput.py                                  # the same at RecurrentPPO's default rate
    python benchmarks/rl_throughput.py --variants stock rim lstm gru --hidden 64 --threads 1

Every variant trains on ``--env`` (default ``zoo/CartPoleNoVel-v0``) with RecurrentPPO's default settings
(``n_steps=128``, ``batch_size=128``, 10 epochs, actor and critic cores) after a warm-up update at each thread
count; variants are interleaved over ``--repeats`` rounds (every hidden size and thread count in the same
rounds) and each reports its median steps/s and the ratio to sb3-contrib's stock ``MlpLstmPolicy`` at the same
hidden size and thread count. ``rim`` runs the RIM's time step through ``torch.compile``, ``--compile-chunk``
steps per graph (default 8; the warm-up updates compile, a few minutes the first time, then torch's on-disk
cache loads it), ``rim_eager`` without. Goal (issue 16): ``rim`` >= 1.0x the stock policy at hidden 32, 64, 128
and 256, 1 and 2 threads. ``--lr 0`` measures speed alone: every policy stays at its initial behaviour, so every
variant sees episodes of the same length distribution; with the default rate a policy that learns faster gets
longer episodes, longer training sequences and slower updates (docs/rl.md). Numbers on a shared machine are
noisy.
"""
from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Dict, List

import torch
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.env_util import make_vec_env

from rl.cores import CORES
from rl.policies import RecurrentCorePolicy
from rl.pomdp import register_pomdps
from zoo.engine import arg, parse_config


class SteppedRIMPolicy(RecurrentCorePolicy):
    """The naive RIM policy: ``zoo.RIM`` stepped by sb3-contrib's own time loop (one call per time step)."""

    _process_sequence = staticmethod(RecurrentActorCriticPolicy._process_sequence)


@dataclass
class Bench:
    """RecurrentPPO throughput: stock MlpLstmPolicy vs RecurrentCorePolicy cores, interleaved, median steps/s."""

    env: str = arg("zoo/CartPoleNoVel-v0", help="gymnasium env id")
    variants: List[str] = arg(["stock", "rim"], help="stock (sb3-contrib MlpLstmPolicy), rim (compiled in chunks of "
                              "--compile-chunk steps), rim_step (compiled, one graph per step), rim_eager, lstm, gru, "
                              "rim_stepped (RIM in sb3-contrib's time loop)")
    threads: List[int] = arg([1, 2], help="torch thread counts to compare")
    hidden: List[int] = arg([32, 64, 128, 256], help="hidden sizes of every core (RIM: num_units * unit size)")
    num_units: int = arg(4, help="RIM units")
    k_active: int = arg(2, help="RIM active units")
    compile_chunk: int = arg(8, help="rim: time steps per compiled graph (zoo.RIM compile_chunk; 1: one per step)",
                             ge=1)
    n_envs: int = arg(4, help="envs")
    n_steps: int = arg(128, help="rollout length per env (RecurrentPPO default)")
    batch_size: int = arg(128, help="minibatch size (RecurrentPPO default)")
    n_epochs: int = arg(10, help="PPO epochs per update (RecurrentPPO default)")
    updates: int = arg(2, help="timed PPO updates per repeat")
    repeats: int = arg(5, help="interleaved rounds")
    lr: float = arg(3e-4, help="learning rate (RecurrentPPO default); 0 keeps every policy at its initial "
                                 "behaviour, so all variants see episodes of the same length distribution")
    seed: int = arg(0, help="seed")
    phases: bool = arg(False, help="also print each variant's median milliseconds per update in rollouts "
                                   "(collect_rollouts) and in training (train)")


def build(b: Bench, variant: str, hidden: int) -> RecurrentPPO:
    if variant == "stock":
        policy, kw = "MlpLstmPolicy", dict(lstm_hidden_size=hidden)
    elif variant == "rim_stepped":
        policy, kw = SteppedRIMPolicy, dict(core="rim", lstm_hidden_size=hidden, num_units=b.num_units,
                                            k_active=b.k_active)
    elif variant in CORES or variant in ("rim_eager", "rim_step"):
        core = "rim" if variant.startswith("rim") else variant
        policy, kw = RecurrentCorePolicy, dict(core=core, lstm_hidden_size=hidden)
        if core == "rim":
            chunk = {"rim": b.compile_chunk, "rim_step": 1}.get(variant)
            kw.update(num_units=b.num_units, k_active=b.k_active,
                      core_kwargs={} if chunk is None else dict(compile=True, compile_chunk=chunk))
    else:
        raise ValueError(f"variant={variant!r} is not supported; allowed values: stock, rim, rim_step, rim_eager, "
                         "lstm, gru, rim_stepped")
    env = make_vec_env(b.env, n_envs=b.n_envs, seed=b.seed)
    return RecurrentPPO(policy, env, n_steps=b.n_steps, batch_size=b.batch_size, n_epochs=b.n_epochs,
                        learning_rate=b.lr, policy_kwargs=kw, seed=b.seed, verbose=0)


def time_phases(model: RecurrentPPO, log: Dict[str, List[float]]) -> None:
    """Record the seconds of every ``collect_rollouts`` and ``train`` call of ``model`` in ``log``."""
    for phase in ("collect_rollouts", "train"):
        def timed(*args, _fn=getattr(model, phase), _key=phase, **kwargs):
            t0 = time.perf_counter()
            out = _fn(*args, **kwargs)
            log.setdefault(_key, []).append(time.perf_counter() - t0)
            return out
        setattr(model, phase, timed)


def main(argv=None) -> None:
    b = parse_config(Bench, argv, prog="python benchmarks/rl_throughput.py")
    register_pomdps()
    torch.set_num_threads(b.threads[0])
    if "stock" not in b.variants:
        b.variants = ["stock"] + list(b.variants)
    models = {(v, h): build(b, v, h) for h in b.hidden for v in b.variants}
    steps = b.updates * b.n_envs * b.n_steps
    t0 = time.perf_counter()
    for i, threads in enumerate(b.threads):
        # a warm-up update at every thread count: torch.compile guards on the thread count, so the RIM's graphs
        # compile once per count, outside the timed rounds
        torch.set_num_threads(threads)
        for model in models.values():
            model.learn(b.n_envs * b.n_steps, reset_num_timesteps=i == 0)
    warm = time.perf_counter() - t0
    runs = list(itertools.product(b.hidden, b.threads, b.variants))
    times: Dict[tuple, List[float]] = {r: [] for r in runs}
    phase_log: Dict[tuple, Dict[str, List[float]]] = {r: {} for r in runs}
    for _ in range(b.repeats):
        for r in runs:
            hidden, threads, variant = r
            torch.set_num_threads(threads)
            model = models[(variant, hidden)]
            if b.phases:
                time_phases(model, phase_log[r])
            t0 = time.perf_counter()
            model.learn(steps, reset_num_timesteps=False)
            times[r].append(time.perf_counter() - t0)
            if b.phases:                                  # back to the class's methods between rounds
                del model.collect_rollouts, model.train
    print(f"{b.env}, {b.n_envs} envs x {b.n_steps} steps, batch {b.batch_size}, {b.n_epochs} epochs, lr {b.lr}, "
          f"{b.updates} updates x {b.repeats} interleaved repeats (median); warm-up {warm:.0f} s")
    print("| policy | hidden | threads | steps/s | x stock |\n|---|---|---|---|---|")
    rim = f"RIM ({b.num_units} units, k={b.k_active})"
    names = {"stock": "sb3-contrib MlpLstmPolicy", "rim": f"{rim}, compiled in chunks of {b.compile_chunk}",
             "rim_step": f"{rim}, compiled, one graph per step", "rim_eager": f"{rim}, eager",
             "lstm": "RecurrentCorePolicy lstm", "gru": "RecurrentCorePolicy gru",
             "rim_stepped": "RIM stepped by sb3-contrib's loop"}
    for r in runs:
        hidden, threads, variant = r
        sps = steps / statistics.median(times[r])
        base = steps / statistics.median(times[(hidden, threads, "stock")])
        print(f"| {names[variant]} | {hidden} | {threads} | {sps:.1f} | {sps / base:.2f}x |")
    if b.phases:
        print("\n| policy | hidden | threads | rollouts ms per update | training ms per update |\n|---|---|---|---|---|")
        for r in runs:
            hidden, threads, variant = r
            roll, train = (1000 * statistics.median(phase_log[r][k]) for k in ("collect_rollouts", "train"))
            print(f"| {names[variant]} | {hidden} | {threads} | {roll:.1f} | {train:.1f} |")


if __name__ == "__main__":
    main()
