"""Train a PPO agent on an Atari game: ``python -m rl.train --env ALE/Pong-v5 --core rim --encoder nfm``.

``--core none`` is feed-forward PPO (stable-baselines3); ``lstm``, ``gru`` and ``rim`` are sb3-contrib's
RecurrentPPO with the chosen recurrent core (RIMs replace the LSTM with no other change to PPO, as in the
RIMs paper, thesis 8.4). ``--encoder nature|nfm`` picks the image encoder (:mod:`rl.encoders`). The envs
get the standard Atari preprocessing (:mod:`rl.envs`).

    python -m rl.train --help
    python -m rl.train --env ALE/Pong-v5 --core rim --encoder nature --steps 2000000
    python -m rl.train --env ALE/Breakout-v5 --core none --encoder nfm --n-envs 16 --vec-env subproc

Writes to ``--out`` (default ``runs/rl/<game>-<core>-<encoder>-s<seed>``):

* ``progress.csv`` (sb3's training statistics; also TensorBoard event files when ``tensorboard`` is
  installed), ``eval.csv`` (one row per evaluation: mean/std game score), ``episodes.csv`` (every training
  game's real score and length in frames, at the env step it ended),
* ``checkpoint.zip`` (written atomically every ``--checkpoint-every`` steps; ``--resume`` continues from
  it), ``agent.zip`` (the final agent, for ``python -m rl.evaluate``),
* ``curve.png`` (the learning curve: training episodes and evaluations) and ``results.json``.

Default hyperparameters are the usual Atari PPO ones (Schulman et al. 2017; rl-baselines3-zoo): 8 envs
x 128 steps, 4 epochs of 4 minibatches, lr 2.5e-4 and clip 0.1 both decayed linearly, entropy 0.01.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure

from zoo.engine import (MetricLogger, arg, atomic_write, config_to_dict, parse_config, resolve_device,
                        seed_everything, write_json)

from .encoders import encoder_policy_kwargs
from .envs import AtariSpec, make_atari

__all__ = ["Config", "build_model", "train", "main", "save_agent", "plot_curve", "CORES"]

CORES = ("none", "lstm", "gru", "rim")


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Config:
    """PPO / RecurrentPPO on an Atari game with the standard preprocessing (see rl/train.py)."""

    env: str = arg("ALE/Pong-v5", help="gymnasium Atari id (ALE ROMs ship with ale-py)")
    core: str = arg("lstm", choices=list(CORES), help="recurrent core ('none': feed-forward PPO)")
    encoder: str = arg("nature", choices=["nature", "nfm"], help="image encoder (rl/encoders.py)")
    steps: int = arg(1_000_000, help="total environment steps (agent steps, 4 frames each)")
    n_envs: int = arg(8, help="parallel environments")
    vec_env: str = arg("dummy", choices=["dummy", "subproc"], help="envs in this process or one process each")
    n_steps: int = arg(128, help="rollout length per env and update")
    n_minibatches: int = arg(4, help="minibatches per epoch (batch size = n_envs * n_steps / n_minibatches)")
    n_epochs: int = arg(4, help="PPO epochs per rollout")
    lr: float = arg(2.5e-4, help="Adam learning rate (decayed linearly to 0)")
    clip_range: float = arg(0.1, help="PPO clip (decayed linearly to 0)")
    ent_coef: float = arg(0.01, help="entropy bonus")
    vf_coef: float = arg(0.5, help="value loss weight")
    gamma: float = arg(0.99, help="discount")
    gae_lambda: float = arg(0.95, help="GAE lambda")
    max_grad_norm: float = arg(0.5, help="gradient-norm clip")
    hidden_size: int = arg(192, help="recurrent state size (RIM: num_units x unit size)")
    num_units: int = arg(6, help="RIM units (paper k_T)")
    k_active: int = arg(4, help="active RIM units per step (paper k_A)")
    frame_stack: int = arg(4, help="frames stacked per observation")
    sticky: float = arg(-1.0, help="sticky-action probability (-1: the game's default, 0.25 for v5)")
    max_episode_frames: int = arg(0, help="cap on raw frames per episode (0: the game's default, 108000)")
    eval_every: int = arg(100_000, help="evaluate every this many env steps (0: only at the end)")
    eval_episodes: int = arg(5, help="full games per evaluation (real scores, no episodic life)")
    deterministic_eval: bool = arg(False, help="greedy actions in evaluation (default: sample)")
    checkpoint_every: int = arg(100_000, help="write checkpoint.zip every this many env steps")
    seed: int = arg(0, help="seed (torch, numpy, envs)")
    out: str = arg("", help="output folder (default runs/rl/<game>-<core>-<encoder>-s<seed>)")
    device: str = arg("auto", help="'auto' (CUDA if present), 'cpu', 'cuda', ...")
    threads: int = arg(1, help="torch CPU threads (1 is fastest for these small nets, docs/rl.md)")
    resume: bool = arg(False, help="continue from <out>/checkpoint.zip")
    progress: bool = arg(True, help="show a progress bar")

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        game = self.env.split("/")[-1].split("-")[0].lower()
        return Path("runs/rl") / f"{game}-{self.core}-{self.encoder}-s{self.seed}"

    def atari_spec(self) -> AtariSpec:
        return AtariSpec(env_id=self.env, frame_stack=self.frame_stack,
                         repeat_action_probability=None if self.sticky < 0 else self.sticky,
                         max_episode_frames=self.max_episode_frames or None)


def linear_schedule(start: float) -> Callable[[float], float]:
    """sb3 schedule: ``start`` at the beginning, 0 at the end (``progress`` goes 1 -> 0)."""
    return lambda progress: progress * start


def recurrent_policy(core: str, hidden_size: int, num_units: int, k_active: int) -> Tuple[Any, Dict[str, Any]]:
    """The RecurrentPPO policy class and its kwargs for ``core`` (``lstm``, ``gru`` or ``rim``)."""
    from .policies import RecurrentCorePolicy

    kw: Dict[str, Any] = dict(core=core, lstm_hidden_size=hidden_size, enable_critic_lstm=False)
    if core == "rim":
        kw.update(num_units=num_units, k_active=k_active)
    return RecurrentCorePolicy, kw


def build_model(cfg: Config, env) -> BaseAlgorithm:
    """PPO (``core="none"``) or RecurrentPPO with the chosen core and encoder, Atari hyperparameters."""
    batch = cfg.n_envs * cfg.n_steps
    if batch % cfg.n_minibatches:
        raise ValueError(f"n_envs * n_steps = {batch} is not divisible by n_minibatches={cfg.n_minibatches}")
    common = dict(learning_rate=linear_schedule(cfg.lr), n_steps=cfg.n_steps,
                  batch_size=batch // cfg.n_minibatches, n_epochs=cfg.n_epochs, gamma=cfg.gamma,
                  gae_lambda=cfg.gae_lambda, clip_range=linear_schedule(cfg.clip_range), ent_coef=cfg.ent_coef,
                  vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
                  device=resolve_device(cfg.device), verbose=0)
    policy_kwargs = encoder_policy_kwargs(cfg.encoder)
    if cfg.core == "none":
        model = PPO("CnnPolicy", env, policy_kwargs=policy_kwargs, **common)
    elif cfg.core in CORES:
        from sb3_contrib import RecurrentPPO

        policy, extra = recurrent_policy(cfg.core, cfg.hidden_size, cfg.num_units, cfg.k_active)
        model = RecurrentPPO(policy, env, policy_kwargs={**policy_kwargs, **extra}, **common)
    else:
        raise ValueError(f"core={cfg.core!r} is not supported; allowed values: {', '.join(CORES)}")
    model.atari_spec = cfg.atari_spec().to_dict()          # saved inside the zip; rl.evaluate rebuilds the env
    return model


def save_agent(model: BaseAlgorithm, path) -> Path:
    """``model.save`` to a temporary file, then rename: a crash never leaves a torn agent file."""
    return atomic_write(path, model.save)


def load_agent(path, env=None, device: str = "auto") -> BaseAlgorithm:
    """Load a saved agent; PPO or RecurrentPPO is read from the file (its policy class)."""
    from sb3_contrib import RecurrentPPO
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
    from stable_baselines3.common.save_util import load_from_zip_file

    data, _, _ = load_from_zip_file(path, load_data=True, device="cpu")
    algo = RecurrentPPO if issubclass(data["policy_class"], RecurrentActorCriticPolicy) else PPO
    return algo.load(path, env=env, device=resolve_device(device))


class _Progress(BaseCallback):
    """A tqdm bar over env steps with the recent training score (sb3's own bar needs ``rich``), and every
    finished training game appended to ``episodes.csv`` at the env step it ended."""

    def __init__(self, total: int, enabled: bool, episodes: MetricLogger) -> None:
        super().__init__()
        self.total, self.enabled, self.episodes, self.bar = total, enabled, episodes, None

    def _on_training_start(self) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.num_timesteps, unit="step", desc="train")

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            if "episode" in info:                     # Monitor sits on the game: real score, game over only
                self.episodes.log(self.num_timesteps, {"return": info["episode"]["r"],
                                                       "frames": info["episode"]["l"]})
        if self.bar is not None:
            self.bar.update(self.num_timesteps - self.bar.n)
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.ep_info_buffer
        if self.bar is not None and buf:
            self.bar.set_postfix(score=f"{np.mean([e['r'] for e in buf]):.1f}")

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _EvalAndCheckpoint(BaseCallback):
    """After each rollout: evaluate every ``eval_every`` steps (and at the end), checkpoint every
    ``checkpoint_every`` steps (atomically)."""

    def __init__(self, cfg: Config, eval_env, log: MetricLogger, ckpt: Path) -> None:
        super().__init__()
        self.cfg, self.eval_env, self.log, self.ckpt = cfg, eval_env, log, ckpt
        self.history: List[Dict[str, float]] = []
        self.t0, self.steps0 = time.time(), 0
        self.next_eval = self.next_ckpt = 0

    def _on_training_start(self) -> None:
        self.t0, self.steps0 = time.time(), self.num_timesteps
        every = lambda n: (self.num_timesteps // n + 1) * n if n > 0 else float("inf")  # noqa: E731
        self.next_eval, self.next_ckpt = every(self.cfg.eval_every), every(self.cfg.checkpoint_every)

    def _on_step(self) -> bool:
        return True

    def evaluate(self) -> None:
        from .evaluate import evaluate_agent

        res = evaluate_agent(self.model, self.eval_env, self.cfg.eval_episodes, self.cfg.deterministic_eval)
        fps = (self.num_timesteps - self.steps0) / max(time.time() - self.t0, 1e-9)
        buf = self.model.ep_info_buffer
        row = {"mean_return": res["mean_return"], "std_return": res["std_return"],
               "mean_length": res["mean_length"], "fps": fps,
               "train_return": float(np.mean([e["r"] for e in buf])) if buf else float("nan")}
        self.log.log(self.num_timesteps, row, prefix="eval")
        for k in ("mean_return", "std_return"):
            self.logger.record(f"eval/{k}", row[k])
        self.history.append({"step": self.num_timesteps, **row})

    def _on_rollout_end(self) -> None:
        if self.num_timesteps >= self.next_eval:
            self.evaluate()
            self.next_eval = (self.num_timesteps // self.cfg.eval_every + 1) * self.cfg.eval_every
        if self.num_timesteps >= self.next_ckpt:
            save_agent(self.model, self.ckpt)
            self.next_ckpt = (self.num_timesteps // self.cfg.checkpoint_every + 1) * self.cfg.checkpoint_every


def _read_episodes(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """``episodes.csv`` -> (env step at each training game's end, its score)."""
    if not path.exists():
        return np.zeros(0), np.zeros(0)
    with path.open(newline="") as f:
        rows = [(float(r["step"]), float(r["return"])) for r in csv.DictReader(f)]
    return (np.asarray([r[0] for r in rows]), np.asarray([r[1] for r in rows])) if rows else (np.zeros(0), np.zeros(0))


def plot_curve(out: Path, history: List[Dict[str, float]], title: str) -> Path:
    """``curve.png``: training game scores (points and a running mean over 20 episodes) and evaluation
    mean ± std, against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x, r = _read_episodes(out / "episodes.csv")
    if len(r):
        ax.plot(x, r, ".", alpha=0.25, color="C0", label="training episodes")
        k = min(20, len(r))
        ax.plot(x[k - 1:], np.convolve(r, np.ones(k) / k, mode="valid"), color="C0", label=f"mean of {k}")
    if history:
        s = [h["step"] for h in history]
        ax.errorbar(s, [h["mean_return"] for h in history], yerr=[h["std_return"] for h in history],
                    color="C3", marker="o", capsize=3, label="evaluation (mean ± std)")
    ax.set(xlabel="environment steps", ylabel="game score", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = atomic_write(out / "curve.png", lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def train(cfg: Config) -> Dict[str, Any]:
    """Train, evaluate, checkpoint, plot; returns the content of ``results.json``."""
    if cfg.eval_episodes < 1:
        raise ValueError(f"eval_episodes must be >= 1, got {cfg.eval_episodes}")
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = cfg.run_dir()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.zip"
    resuming = cfg.resume and ckpt.exists()
    spec = cfg.atari_spec()
    env = make_atari(spec, cfg.n_envs, seed=cfg.seed, vec_env=cfg.vec_env)
    eval_env = make_atari(spec, 1, seed=cfg.seed + 10_000, training=False)
    if resuming:
        model = load_agent(ckpt, env=env, device=cfg.device)
        model.tensorboard_log = None
    else:
        model = build_model(cfg, env)
    formats = ["csv"] + (["tensorboard"] if _has_tensorboard() else [])
    model.set_logger(configure(str(out), formats))
    log = MetricLogger(out, filename="eval.csv", tensorboard=False,
                       resume_step=model.num_timesteps if resuming else None)
    write_json(out / "config.json", config_to_dict(cfg))
    episodes = MetricLogger(out, filename="episodes.csv", resume_step=model.num_timesteps if resuming else None)
    evals = _EvalAndCheckpoint(cfg, eval_env, log, ckpt)
    t0 = time.time()
    remaining = max(cfg.steps - model.num_timesteps, 0)
    model.learn(remaining, callback=[_Progress(cfg.steps, cfg.progress, episodes), evals], reset_num_timesteps=not resuming)
    seconds = time.time() - t0
    if not evals.history or evals.history[-1]["step"] != model.num_timesteps:
        evals.evaluate()                                              # the final agent's score
    save_agent(model, ckpt)
    save_agent(model, out / "agent.zip")
    fps = (model.num_timesteps - (cfg.steps - remaining)) / max(seconds, 1e-9)
    plot_curve(out, evals.history, f"{cfg.env}: {'PPO' if cfg.core == 'none' else 'RecurrentPPO ' + cfg.core}, {cfg.encoder} encoder")
    log.close()
    episodes.close()
    env.close()
    eval_env.close()
    results = {"config": config_to_dict(cfg), "steps": int(model.num_timesteps), "seconds": seconds,
               "steps_per_second": fps, "final_eval": evals.history[-1], "evaluations": evals.history,
               "agent": str(out / "agent.zip")}
    write_json(out / "results.json", results)
    print(f"{cfg.env} {cfg.core}/{cfg.encoder}: {model.num_timesteps} steps in {seconds:.0f}s ({fps:.0f} steps/s); "
          f"final evaluation {results['final_eval']['mean_return']:.1f} ± {results['final_eval']['std_return']:.1f} "
          f"over {cfg.eval_episodes} games; outputs in {out}")
    return results


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    cfg = parse_config(Config, argv, prog="python -m rl.train")
    return train(cfg)


if __name__ == "__main__":
    main()
