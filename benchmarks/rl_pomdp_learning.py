"""Learning comparison on a partially observable task: RecurrentPPO with RIM vs LSTM vs GRU cores, seeds, curves.

    python benchmarks/rl_pomdp_learning.py                                     # 3 cores x 3 seeds, CartPoleNoVel
    python benchmarks/rl_pomdp_learning.py --cores rim lstm --seeds 0 --steps 20000 --out runs/rl_pomdp_quick

Every run trains ``rl.RecurrentCorePolicy`` (only the core differs; same PPO settings, hidden size and
heads) on ``--env`` (default ``zoo/CartPoleNoVel-v0``: CartPole with the velocities hidden) and every
``--eval-every`` steps plays ``--eval-episodes`` episodes (greedy actions, recurrent state carried) on a
separate env. Prints the mean final return and the mean return over the curve per core (mean +- std
over seeds), and writes ``curves.png``, ``curves.csv`` and ``results.json`` to ``--out``. PPO settings
(picked by a small sweep with the LSTM core, then fixed for all cores): 16 envs x 32 steps, one minibatch
of 512, 8 epochs, lr 3e-3, gamma 0.98, lambda 0.8, no entropy bonus, 64 hidden units (RIM: 4 units of 16,
3 active), ReLU heads of 64 (rl-baselines3-zoo's CartPoleNoVel heads).
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from torch import nn

from rl.policies import RecurrentCorePolicy
from rl.pomdp import register_pomdps
from zoo.engine import arg, parse_config


@dataclass
class Config:
    """RecurrentPPO on a POMDP: RIM vs LSTM vs GRU cores over seeds, learning curves."""

    env: str = arg("zoo/CartPoleNoVel-v0", help="gymnasium env id")
    cores: List[str] = arg(["rim", "lstm", "gru"], help="cores to compare")
    seeds: List[int] = arg([0, 1, 2], help="seeds")
    steps: int = arg(50_000, help="env steps per run")
    eval_every: int = arg(5_120, help="env steps between evaluations")
    eval_episodes: int = arg(10, help="episodes per evaluation")
    hidden: int = arg(64, help="core state size (RIM: num_units x unit size)")
    num_units: int = arg(4, help="RIM units")
    k_active: int = arg(3, help="RIM active units")
    n_envs: int = arg(16, help="envs")
    n_steps: int = arg(32, help="rollout length per env")
    batch_size: int = arg(512, help="minibatch size")
    n_epochs: int = arg(8, help="PPO epochs per update")
    lr: float = arg(3e-3, help="learning rate (constant)")
    threads: int = arg(1, help="torch threads")
    out: str = arg("runs/rl_pomdp", help="output folder")


def make_model(cfg: Config, core: str, seed: int) -> RecurrentPPO:
    """The compared agent: only ``core`` changes between runs."""
    kw = dict(core=core, lstm_hidden_size=cfg.hidden, ortho_init=False, activation_fn=nn.ReLU,
              net_arch=dict(pi=[64], vf=[64]))
    if core == "rim":
        kw.update(num_units=cfg.num_units, k_active=cfg.k_active)
    env = make_vec_env(cfg.env, n_envs=cfg.n_envs, seed=seed)
    return RecurrentPPO(RecurrentCorePolicy, env, n_steps=cfg.n_steps, batch_size=cfg.batch_size,
                        n_epochs=cfg.n_epochs, gamma=0.98, gae_lambda=0.8, ent_coef=0.0,
                        learning_rate=cfg.lr, policy_kwargs=kw, seed=seed, verbose=0)


def evaluate(model: RecurrentPPO, env_id: str, episodes: int, seed: int) -> float:
    """Mean return of ``episodes`` greedy episodes (recurrent state carried, reset at episode starts)."""
    env = make_vec_env(env_id, n_envs=1, seed=10_000 + seed)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True)
    env.close()
    return float(mean)


def run(cfg: Config, core: str, seed: int) -> Dict[str, List[float]]:
    model = make_model(cfg, core, seed)
    steps, returns = [0], [evaluate(model, cfg.env, cfg.eval_episodes, seed)]
    t0 = time.perf_counter()
    while model.num_timesteps < cfg.steps:
        model.learn(cfg.eval_every, reset_num_timesteps=False)
        steps.append(model.num_timesteps)
        returns.append(evaluate(model, cfg.env, cfg.eval_episodes, seed))
        print(f"  {core} seed {seed}: {model.num_timesteps} steps, return {returns[-1]:.1f} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    return dict(steps=steps, returns=returns, seconds=time.perf_counter() - t0)


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for core, runs in results.items():
        steps = np.array(runs[0]["steps"])
        curves = np.array([r["returns"] for r in runs])
        mean, std = curves.mean(0), curves.std(0)
        ax.plot(steps, mean, label=f"{core} ({len(runs)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("greedy return")
    ax.set_title("RecurrentPPO on CartPole without velocities")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    cfg = parse_config(Config, argv, prog="python benchmarks/rl_pomdp_learning.py")
    register_pomdps()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, list] = {core: [] for core in cfg.cores}
    for seed in cfg.seeds:                                   # seed-major: partial results cover every core
        for core in cfg.cores:
            results[core].append(run(cfg, core, seed))
            (out / "results.json").write_text(json.dumps(dict(config=asdict(cfg), results=results), indent=1))
    with open(out / "curves.csv", "w") as f:
        f.write("core,seed,steps,return\n")
        for core, runs in results.items():
            for seed, r in zip(cfg.seeds, runs):
                f.writelines(f"{core},{seed},{s},{v:.2f}\n" for s, v in zip(r["steps"], r["returns"]))
    plot(results, out / "curves.png")
    print(f"{cfg.env}, {cfg.steps} steps, seeds {cfg.seeds} (mean +- std over seeds)")
    print("| core | return at start | final return | mean return over the curve | minutes per run |")
    print("|---|---|---|---|---|")
    for core, runs in results.items():
        first = [r["returns"][0] for r in runs]
        final = [r["returns"][-1] for r in runs]
        auc = [float(np.mean(r["returns"][1:])) for r in runs]
        mins = statistics.mean(r["seconds"] for r in runs) / 60

        def ms(v):
            return f"{statistics.mean(v):.1f} +- {statistics.pstdev(v):.1f}"

        print(f"| {core} | {ms(first)} | {ms(final)} | {ms(auc)} | {mins:.1f} |")
    print(f"wrote {out / 'curves.png'}, {out / 'curves.csv'}, {out / 'results.json'}")


if __name__ == "__main__":
    main()
