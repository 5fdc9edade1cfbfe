"""RIMs vs LSTM in a recurrent PPO agent, trained with known distractors, tested with novel ones (thesis
8.4.3, Fig. 4): ``python -m rl.distractors``.

The task (:mod:`rl.gridworld`): pick up the red ball in a MiniGrid room, seeing only the 7x7 cells ahead
(``--view-size``), among 4 distractors (keys, balls, boxes). Training and the *seen* evaluation draw
distractor colours from red/green/blue; the *novel* evaluation draws them from purple/yellow/grey, colours
never seen in training.
Picking up a distractor ends the episode with no reward.

Every core gets the same agent and the same PPO settings (the paper changed only the recurrent core):
sb3-contrib's ``RecurrentPPO`` with :class:`rl.policies.RecurrentCorePolicy` (``core="rim" | "lstm" |
"gru"``), one-hot view -> ReLU layer -> core -> 64-unit ReLU heads; the value head reads the features
directly (``enable_critic_lstm=False``), as in ``rl.train``. ``--encoder cells`` replaces the ReLU layer by
:class:`rl.encoders.CellEncoder` (one embedding per view cell): the RIM's input attention then chooses among
the 49 cells (``--rim-rows one``: it reads them concatenated, as the LSTM always does).

    python -m rl.distractors                               # RIM vs LSTM, 3 seeds (the default)
    python -m rl.distractors --cores rim lstm gru --seeds 3
    python -m rl.distractors --steps 300000 --seeds 5      # longer
    python -m rl.distractors --encoder cells               # cores read one embedding per view cell; the RIM
                                                           # attends over the 49 cells (input rows)
    python -m rl.distractors --view-size 3                 # a narrower view: 3x3 cells, more to remember
    python -m rl.distractors --encoder conv                # the BabyAI reference agents' convs over raw indices

Outputs in ``--out`` (default ``runs/rl_distractors``): ``results.json`` (per core: ``seen`` and ``novel``,
each with ``success``, ``success_std``, ``return``, ``return_std`` over seeds and ``per_seed``; plus the
curves, and ``random``: a uniformly random agent's success per split), ``results.md``, ``curves.png``
(success on seen and novel distractors during training, mean ± std over seeds), ``episode-<core>.gif`` (one evaluation episode with novel distractors per core, first
seed), and one folder per run (``<core>-s<seed>/``: ``run.json``, ``agent.zip``, ``checkpoint.zip``). With
``--encoder cells`` also ``attention.md`` / ``attention.json``: where the RIM's input attention goes, per
kind of view cell (:mod:`rl.attention`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from zoo.engine import (per_run, CheckpointError, ConfigError, RunConfig, arg, atomic_write, check_run_options,
                        command_line, markdown_table, parse_config, resolve_device, retain_freed_memory, run_cli,
                        run_grid, run_options, seed_everything, summarize_seeds, write_json, write_report)
from zoo.engine.results import fmt_mean_std

from .cores import CORES
from .gridworld import NOVEL_COLORS, SEEN_COLORS, SPLITS, OneHotView, make_distractor_env

__all__ = ["Config", "train_one", "evaluate_split", "summarize", "main"]

EVAL_SEED = {"seen": 1_000_000, "novel": 2_000_000}     # the same evaluation layouts for every core and seed


@dataclass
class Config(RunConfig):
    """RIM vs LSTM RecurrentPPO agents: train with seen distractors, evaluate with seen and novel ones."""

    out: str = arg("runs/rl_distractors", help="output folder", path="out_dir")
    cores: List[str] = arg(["rim", "lstm"], choices=list(CORES), unique=True, help="recurrent cores to compare")
    seeds: int = arg(3, help="seeds per core (seed, seed+1, ...); tables show mean ± std", ge=1)
    steps: int = arg(200_000, help="environment steps per run", ge=1)
    num_distractors: int = arg(4, help="distractors per room (training and evaluation)", ge=0, le=30)
    room_size: int = arg(7, help="room side in cells, walls included (7: 5x5 free cells)", ge=5, le=16)
    max_steps: int = arg(64, help="episode limit in agent steps", ge=1)
    view_size: int = arg(7, help="side of the agent's egocentric view in cells (odd; 7: MiniGrid's and BabyAI's; "
                                 "3 sees one cell to each side and three ahead)", ge=3, le=15)
    n_envs: int = arg(16, help="parallel training envs", ge=1)
    n_steps: int = arg(64, help="rollout length per env and update", ge=1)
    n_minibatches: int = arg(4, help="minibatches per epoch", ge=1)
    n_epochs: int = arg(4, help="PPO epochs per rollout", ge=1)
    lr: float = arg(1e-3, help="Adam learning rate (constant)", gt=0, le=1)
    clip_range: float = arg(0.2, help="PPO clip", gt=0, le=1)
    ent_coef: float = arg(0.01, help="entropy bonus", ge=0)
    vf_coef: float = arg(0.5, help="value loss weight", ge=0)
    gamma: float = arg(0.99, help="discount", gt=0, le=1)
    gae_lambda: float = arg(0.95, help="GAE lambda", ge=0, le=1)
    max_grad_norm: float = arg(0.5, help="gradient-norm clip", gt=0)
    hidden_size: int = arg(64, help="recurrent state size (RIM: num_units x unit size)", ge=1)
    num_units: int = arg(4, help="RIM units (paper k_T)", ge=1)
    k_active: int = arg(2, help="active RIM units per step (paper k_A)", ge=1)
    head_size: int = arg(64, help="units of the policy and value heads' hidden layer", ge=1)
    features: int = arg(128, help="units of the ReLU layer between the one-hot view and the core (0: the core "
                                  "reads the view itself)", ge=0)
    encoder: str = arg("mlp", choices=["mlp", "cells", "conv"],
                       help="what the core reads: 'mlp', one ReLU layer of --features units over the one-hot view; "
                            "'cells', one embedding of --cell-dim per view cell (rl.encoders.CellEncoder): the RIM "
                            "attends over the view cells (49 at --view-size 7) as input rows, the LSTM reads them "
                            "concatenated; 'conv', the MiniGrid/BabyAI reference agents' convolutions over the raw "
                            "(object, colour, state) indices (rl.encoders.GridConvEncoder; --view-size 7 or more)")
    cell_dim: int = arg(16, help="with --encoder cells: features per cell embedding", ge=1)
    rim_rows: str = arg("cells", choices=["cells", "one"],
                        help="with --encoder cells: the RIM attends over the cells as input rows ('cells') or reads "
                             "them concatenated as one row, as the LSTM does ('one')")
    eval_every: int = arg(25_000, help="evaluate on seen and novel distractors every this many env steps "
                                       "(learning curves; 0: only at the end)", ge=0)
    curve_episodes: int = arg(50, help="episodes per split at each curve point", ge=1)
    eval_episodes: int = arg(200, help="episodes per split in the final evaluation", ge=1)
    chance_episodes: int = arg(2000, help="episodes per split of a uniformly random agent for the chance level "
                                          "in the report (standard error about 0.008 at 2,000; 200 episodes "
                                          "read 0.130 / 0.045 where 2,000 read 0.088 / 0.086)", ge=1)
    deterministic_eval: bool = arg(False, help="greedy actions in evaluation (default: sample from the policy)")
    gif: bool = arg(True, help="write episode-<core>.gif: one novel-distractor evaluation episode per core")
    checkpoint_every: int = arg(50_000, help="save <run>/checkpoint.zip every this many env steps (0: only "
                                             "at the end)", ge=0, run_control=True)

    def check(self) -> None:
        super().check()
        batch = self.n_envs * self.n_steps
        if batch % self.n_minibatches:
            raise ConfigError(f"--n-envs x --n-steps = {batch} is not divisible by --n-minibatches "
                              f"{self.n_minibatches}")
        if self.n_minibatches > batch:
            raise ConfigError(f"--n-minibatches {self.n_minibatches} exceeds the rollout size {batch}")
        if "rim" in self.cores:
            if self.k_active > self.num_units:
                raise ConfigError(f"--k-active {self.k_active} exceeds --num-units {self.num_units}")
            if self.hidden_size % self.num_units:
                raise ConfigError(f"--hidden-size {self.hidden_size} is not a multiple of --num-units "
                                  f"{self.num_units} (RIM: num_units x unit size)")
        changed = {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}
        if self.encoder != "mlp" and "features" in changed:
            hint = {"cells": "with --encoder cells use --cell-dim",
                    "conv": "--encoder conv has its own width (64 features at --view-size 7)"}[self.encoder]
            raise ConfigError(f"--features sets the 'mlp' encoder's layer; {hint}")
        if self.encoder == "conv" and self.view_size < 7:
            raise ConfigError(f"--encoder conv needs --view-size 7 or more (three 2x2 convs and a 2x2 pool), "
                              f"got {self.view_size}")
        if self.encoder != "cells" and changed & {"cell_dim", "rim_rows"}:
            raise ConfigError("--cell-dim and --rim-rows apply only with --encoder cells")
        if self.view_size % 2 == 0:
            raise ConfigError(f"--view-size {self.view_size} must be odd (the agent sits at the middle of the "
                              "view's bottom row)")
        if self.num_distractors > (self.room_size - 2) ** 2 - 2:
            raise ConfigError(f"--num-distractors {self.num_distractors} does not fit a --room-size "
                              f"{self.room_size} room")


def env_kwargs(cfg: Config) -> Dict[str, Any]:
    return dict(num_distractors=cfg.num_distractors, size=cfg.room_size, max_steps=cfg.max_steps,
                agent_view_size=cfg.view_size, view="index" if cfg.encoder == "conv" else "onehot")


def make_vec(cfg: Config, split: str, n: int, seed: int):
    """``n`` envs of ``split`` as an sb3 ``DummyVecEnv`` (env ``i`` seeded ``seed + i``)."""
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(make_distractor_env, n_envs=n, seed=seed, env_kwargs=dict(split=split, **env_kwargs(cfg)))


def build_agent(cfg: Config, core: str, env, seed: int):
    """RecurrentPPO with ``core``; every other setting is shared by all cores."""
    from sb3_contrib import RecurrentPPO

    from .policies import RecurrentCorePolicy

    policy_kwargs: Dict[str, Any] = dict(core=core, lstm_hidden_size=cfg.hidden_size, enable_critic_lstm=False,
                                         net_arch=dict(pi=[cfg.head_size], vf=[cfg.head_size]),
                                         activation_fn=torch.nn.ReLU)
    if core == "rim":
        policy_kwargs.update(num_units=cfg.num_units, k_active=cfg.k_active)
    if cfg.encoder == "cells":
        from .encoders import CellEncoder

        cells = env.observation_space.shape[0] // sum(OneHotView.SIZES)            # view_size x view_size cells
        policy_kwargs.update(features_extractor_class=CellEncoder,
                             features_extractor_kwargs=dict(cells=cells, cell_dim=cfg.cell_dim))
        if core == "rim" and cfg.rim_rows == "one":
            policy_kwargs.update(input_rows=1)
    elif cfg.encoder == "conv":
        from .encoders import GridConvEncoder

        policy_kwargs.update(features_extractor_class=GridConvEncoder)
    elif cfg.features:
        from .encoders import MLPEncoder

        policy_kwargs.update(features_extractor_class=MLPEncoder,
                             features_extractor_kwargs=dict(features_dim=cfg.features))
    batch = cfg.n_envs * cfg.n_steps
    return RecurrentPPO(RecurrentCorePolicy, env, learning_rate=cfg.lr, n_steps=cfg.n_steps,
                        batch_size=batch // cfg.n_minibatches, n_epochs=cfg.n_epochs, gamma=cfg.gamma,
                        gae_lambda=cfg.gae_lambda, clip_range=cfg.clip_range, ent_coef=cfg.ent_coef,
                        vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, seed=seed,
                        policy_kwargs=policy_kwargs, device=resolve_device(cfg.device), verbose=0)


def evaluate_split(model, cfg: Config, split: str, episodes: int) -> Dict[str, float]:
    """Success rate and mean return over ``episodes`` episodes of ``split``; the layouts depend only on the
    split and the episode count (the same for every core and seed). Success <=> return > 0."""
    from stable_baselines3.common.evaluation import evaluate_policy

    n = min(10, episodes)
    env = make_vec(cfg, split, n, EVAL_SEED[split])
    episode_returns, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=cfg.deterministic_eval,
                                         return_episode_rewards=True, warn=False)
    env.close()
    returns = np.asarray(episode_returns, dtype=np.float64)
    return {"success": float((returns > 0).mean()), "return": float(returns.mean())}


def record_gif(model, cfg: Config, split: str, path: Path, seed: int = EVAL_SEED["novel"],
               min_steps: int = 8, tries: int = 20) -> Path:
    """One evaluation episode of ``split`` rendered (the full room; the agent's view highlighted) as a GIF:
    the first of the layouts ``seed, seed + 1, ...`` whose episode lasts at least ``min_steps`` steps (a
    layout with the red ball just ahead ends after one pick-up and shows nothing), else the longest of
    ``tries``."""
    from PIL import Image

    env = make_distractor_env(split, render_mode="rgb_array", tile_size=16, **env_kwargs(cfg))
    best: List[Any] = []
    for layout in range(seed, seed + tries):
        obs, _ = env.reset(seed=layout)
        frames: List[Any] = [env.render()]                        # rgb_array: (H, W, 3) uint8 arrays
        state, start, done = None, np.ones(1, bool), False
        while not done:
            action, state = model.predict(obs[None], state=state, episode_start=start,
                                          deterministic=cfg.deterministic_eval)
            obs, _, terminated, truncated, _ = env.step(int(action[0]))
            frames.append(env.render())
            done, start = terminated or truncated, np.zeros(1, bool)
        if len(frames) > len(best):
            best = frames
        if len(frames) > min_steps:
            break
    env.close()
    images = [Image.fromarray(f) for f in best]
    images += [images[-1]] * 4                                    # hold the last frame
    atomic_write(path, lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                                                duration=180, loop=0))
    return path


def _run_dir(cfg: Config, core: str, seed: int) -> Path:
    return Path(cfg.out) / f"{core}-s{seed}"


#: options that shape the report, not one run: left out of the options a run is checked against on --resume
#: (with ``seeds``), so a folder's finished runs are reused by a report over more seeds or other cores
REPORT_ONLY = ("cores", "chance_episodes", "gif")


def _recorded(path: Path, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The options ``path`` was written under; refuses (one line) a run that did not record them."""
    if options is None:
        raise CheckpointError(f"{path} does not record the options it was trained with (written by an older "
                              f"version); delete its folder or use another --out")
    return options


def train_one(cfg: Config, core: str, seed: int, position: int = 0) -> Dict[str, Any]:
    """Train one agent, with learning-curve evaluations; return its final seen/novel numbers and curve."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(cfg.threads)
    retain_freed_memory(resolve_device(cfg.device))   # reuse freed CPU pages instead of faulting them in again
    seed_everything(seed)
    run_dir = _run_dir(cfg, core, seed)
    done_file, ckpt, options_file = run_dir / "run.json", run_dir / "checkpoint.zip", run_dir / "options.json"
    options = run_options(cfg, exclude=REPORT_ONLY, core=core, seed=seed)
    if cfg.resume and done_file.exists():
        done = json.loads(done_file.read_text())
        check_run_options(done_file, _recorded(done_file, done.get("options")), options)
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    env = make_vec(cfg, "seen", cfg.n_envs, seed)
    curve: List[Dict[str, float]] = []
    if cfg.resume and ckpt.exists():
        check_run_options(ckpt, _recorded(ckpt, json.loads(options_file.read_text()) if options_file.exists()
                                          else None), options)
        try:
            model = RecurrentPPO.load(ckpt, env=env, device=resolve_device(cfg.device))
            curve = json.loads((run_dir / "curve.json").read_text())
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the user's to delete
            raise CheckpointError(f"{ckpt} cannot be resumed ({type(e).__name__}: {e}); delete it or run "
                                  f"without --resume") from None
        if model.policy.core_name != core:
            raise CheckpointError(f"{ckpt} holds a {model.policy.core_name!r} agent, not {core!r}; delete it "
                                  f"or use another --out")
    else:
        model = build_agent(cfg, core, env, seed)
        write_json(options_file, options)

    class Hooks(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            every = lambda n: (model.num_timesteps // n + 1) * n if n else float("inf")  # noqa: E731
            self.next_eval, self.next_ckpt = every(cfg.eval_every), every(cfg.checkpoint_every)

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            if self.num_timesteps >= self.next_eval:
                point: Dict[str, float] = {"step": self.num_timesteps}
                for split in SPLITS:
                    point.update({f"{split}_{k}": v for k, v in
                                  evaluate_split(self.model, cfg, split, cfg.curve_episodes).items()})
                curve.append(point)
                self.next_eval = (self.num_timesteps // cfg.eval_every + 1) * cfg.eval_every
            if self.num_timesteps >= self.next_ckpt:
                atomic_write(ckpt, self.model.save)
                write_json(run_dir / "curve.json", curve)
                self.next_ckpt = (self.num_timesteps // cfg.checkpoint_every + 1) * cfg.checkpoint_every

    t0, cpu0 = time.time(), time.process_time()
    if not curve:
        point: Dict[str, float] = {"step": 0}
        for split in SPLITS:
            point.update({f"{split}_{k}": v for k, v in evaluate_split(model, cfg, split, cfg.curve_episodes).items()})
        curve.append(point)
    model.learn(max(cfg.steps - model.num_timesteps, 0), callback=Hooks(), reset_num_timesteps=False)
    final = {split: evaluate_split(model, cfg, split, cfg.eval_episodes) for split in SPLITS}
    if not curve or curve[-1]["step"] != model.num_timesteps:
        curve.append({"step": model.num_timesteps, **{f"{s}_{k}": v for s in SPLITS for k, v in final[s].items()}})
    atomic_write(run_dir / "agent.zip", model.save)
    atomic_write(ckpt, model.save)
    write_json(run_dir / "curve.json", curve)
    gif = None
    if cfg.gif and seed == cfg.seed:
        gif = str(record_gif(model, cfg, "novel", Path(cfg.out) / f"episode-{core}.gif"))
    env.close()
    run = {"core": core, "seed": seed, "steps": int(model.num_timesteps), **final, "curve": curve, "gif": gif,
           "seconds": time.time() - t0, "cpu_seconds": time.process_time() - cpu0, "options": options}
    write_json(done_file, run)
    return run


def summarize(cfg: Config, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per core: ``seen`` / ``novel`` -> ``success``, ``success_std``, ``return``, ``return_std`` (over seeds),
    ``per_seed``; and the curves (per seed)."""
    out: Dict[str, Any] = {}
    for core in cfg.cores:
        mine = [r for r in runs if r["core"] == core]
        entry: Dict[str, Any] = {}
        for split in SPLITS:
            stats = summarize_seeds([r[split] for r in mine])
            entry[split] = {"success": stats["success"]["mean"], "success_std": stats["success"]["std"],
                            "return": stats["return"]["mean"], "return_std": stats["return"]["std"],
                            "per_seed": [{"seed": r["seed"], **r[split]} for r in mine]}
        entry["curves"] = [{"seed": r["seed"], "points": r["curve"]} for r in mine]
        out[core] = entry
    out["split"] = {"target": "red ball", "seen_colors": list(SEEN_COLORS), "novel_colors": list(NOVEL_COLORS),
                    "distractor_types": ["key", "ball", "box"], "num_distractors": cfg.num_distractors}
    return out


def random_success(cfg: Config, episodes: int) -> Dict[str, float]:
    """Success rate of a uniformly random agent (the 4 actions) over ``episodes`` episodes of each split, in
    seeded random layouts (one env, so short episodes are not over-counted): the chance level of the table."""
    from .train import random_agent

    out = {}
    for split in SPLITS:
        env = make_vec(cfg, split, 1, EVAL_SEED[split])
        returns = np.asarray(random_agent(env, episodes, seed=EVAL_SEED[split])["returns"])
        env.close()
        out[split] = float((returns > 0).mean())
    return out


def results_table(cfg: Config, results: Dict[str, Any]) -> str:
    rows = []
    for core in cfg.cores:
        r = results[core]
        cell = lambda split, k: fmt_mean_std({"mean": r[split][k], "std": r[split][k + "_std"],  # noqa: E731
                                              "n": len(r[split]["per_seed"])}, 2)
        per_seed = " / ".join(f"{p['success']:.2f}" for p in r["novel"]["per_seed"])
        rows.append([core, cell("seen", "success"), cell("novel", "success"), cell("seen", "return"),
                     cell("novel", "return"), per_seed])
    return markdown_table(["core", "success, seen", "success, novel", "return, seen", "return, novel",
                           "novel success per seed"], rows)


def verdict(cfg: Config, results: Dict[str, Any]) -> str:
    """One line comparing RIM with LSTM (when both ran), per seed pair too."""
    if not {"rim", "lstm"} <= set(cfg.cores):
        return ""
    rim, lstm = results["rim"], results["lstm"]
    d = {s: rim[s]["success"] - lstm[s]["success"] for s in SPLITS}
    wins = sum(a["success"] > b["success"] for a, b in zip(rim["novel"]["per_seed"], lstm["novel"]["per_seed"]))
    return (f"\nRIM - LSTM success: seen {d['seen']:+.2f}, novel {d['novel']:+.2f}; RIM beats LSTM on novel "
            f"distractors in {wins} of {cfg.seeds} seed pair(s).\n")


def plot_curves(cfg: Config, results: Dict[str, Any], path: Path) -> Path:
    """Success rate on seen and novel distractors against env steps, mean ± std over seeds, per core, and
    a uniformly random agent's success (dashed) where ``results`` has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, split in zip(axes, SPLITS):
        for i, core in enumerate(cfg.cores):
            curves = [c["points"] for c in results[core]["curves"]]
            n = min(len(c) for c in curves)
            steps = np.array([p["step"] for p in curves[0][:n]])
            y = np.array([[p[f"{split}_success"] for p in c[:n]] for c in curves])
            m, s = y.mean(0), y.std(0)
            ax.plot(steps, m, marker="o", ms=3, color=f"C{i}", label=f"{core} ({len(curves)} seeds)")
            ax.fill_between(steps, m - s, m + s, color=f"C{i}", alpha=0.2)
        if "random" in results:                                   # the chance level of this split
            ax.axhline(results["random"][split], color="grey", ls="--", lw=1, label="random agent")
        colours = SEEN_COLORS if split == "seen" else NOVEL_COLORS
        ax.set(title=f"{split} distractors ({', '.join(colours)})", xlabel="environment steps", ylim=(-0.02, 1.02))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k"))      # 50k, not 50000
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success rate")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Pick up the red ball{room(cfg)}: RecurrentPPO, trained with seen distractors{reads(cfg)}",
                 fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path


def room(cfg: Config) -> str:
    """The room, for figure titles: ``""`` for the default (4 distractors, a 7x7 room), else
    ``" among N distractors in an RxR room"``."""
    default = Config()
    if (cfg.num_distractors, cfg.room_size) == (default.num_distractors, default.room_size):
        return ""
    return f" among {cfg.num_distractors} distractors in a {cfg.room_size}x{cfg.room_size} room"


def reads(cfg: Config) -> str:
    """What the cores read, for figure titles: ``""`` for the default (the one-hot 7x7 view through a ReLU
    layer), else ``"; ..."`` naming the view size and the encoder."""
    parts = [] if cfg.view_size == Config().view_size else [f"{cfg.view_size}x{cfg.view_size} view"]
    if cfg.encoder == "cells":
        parts.append(f"cores read {cfg.cell_dim}-d cell embeddings"
                     + (", RIM over them as a set" if cfg.rim_rows == "cells" else ""))
    elif cfg.encoder == "conv":
        parts.append("cores read the reference convs over raw indices")
    return "".join(f"; {p}" for p in parts)


PROG = "python -m rl.distractors"


def run(cfg: Config, command: Optional[str] = None) -> Dict[str, Any]:
    """Train every core x seed of ``cfg``, test on seen and novel distractors, write the report."""
    command = command or command_line(PROG, [])
    runs, wall, out = run_grid(cfg, train_one, cfg.cores, "distractors", detail=f", {cfg.steps} steps per run",
                               command=command)
    results = summarize(cfg, runs)
    results["random"] = random_success(cfg, cfg.chance_episodes)
    table = results_table(cfg, results)
    curves = plot_curves(cfg, results, out / "curves.png")
    gifs = [Path(r["gif"]) for r in runs if r.get("gif") and r["seed"] == cfg.seed]     # the first seed's
    extra = verdict(cfg, results) + (
        f"\nTraining and seen distractors: keys, balls, boxes in {', '.join(SEEN_COLORS)} (never the red ball); "
        f"novel: the same types in {', '.join(NOVEL_COLORS)}. {cfg.num_distractors} distractors, "
        f"{cfg.eval_episodes} evaluation episodes per split, {'greedy' if cfg.deterministic_eval else 'sampled'} "
        f"actions. A uniformly random agent succeeds in {results['random']['seen']:.3f} (seen) / "
        f"{results['random']['novel']:.3f} (novel) of {cfg.chance_episodes} episodes.\n")
    if cfg.encoder == "cells" and cfg.rim_rows == "cells" and "rim" in cfg.cores:
        from .attention import attention_markdown, summarize_folder

        extra += "\n" + attention_markdown(summarize_folder(out, episodes=min(50, cfg.eval_episodes)))
    timing = {"train_seconds": per_run(runs, key="core")}
    write_report(out, cfg, results, wall, "Distractors: RIM vs LSTM RecurrentPPO, seen and novel distractors",
                 command, table, extra=extra, figures=[curves, *gifs], timing=timing)
    if extra.strip():
        print(extra.strip())
    return results


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    return run(parse_config(Config, argv, prog=PROG), command_line(PROG, argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
