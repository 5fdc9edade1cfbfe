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
import json
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
from stable_baselines3.common.logger import CSVOutputFormat

from zoo.engine import (CheckpointError, ConfigError, Interrupted, MetricLogger, arg, atomic_write, check_device,
                        config_to_dict, parse_config, resolve_device, retain_freed_memory, run_cli, seed_everything, stop_requested,
                        validate_config, write_json)
from zoo.engine.loop import clear_stop, stop_handlers

from .encoders import encoder_policy_kwargs
from .envs import AtariSpec, check_atari_id, game_name, make_atari

__all__ = ["Config", "build_model", "train", "main", "save_agent", "plot_curve", "CORES"]

CORES = ("none", "lstm", "gru", "rim")


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _sticky(value: float) -> Optional[str]:
    return None if value == -1 or 0 <= value <= 1 else "-1 (the game's default) or a probability in [0, 1]"


#: options that define the agent a checkpoint holds; ``--resume`` refuses a checkpoint that differs in any
AGENT_OPTIONS = ("env", "core", "encoder", "hidden_size", "num_units", "k_active", "frame_stack")


@dataclass
class Config:
    """PPO / RecurrentPPO on an Atari game with the standard preprocessing (see rl/train.py)."""

    env: str = arg("ALE/Pong-v5", help="gymnasium Atari id (ALE ROMs ship with ale-py)", check=check_atari_id)
    core: str = arg("lstm", choices=list(CORES), help="recurrent core ('none': feed-forward PPO)")
    encoder: str = arg("nature", choices=["nature", "nfm"], help="image encoder (rl/encoders.py)")
    steps: int = arg(1_000_000, help="total environment steps (agent steps, 4 frames each)", ge=1)
    n_envs: int = arg(8, help="parallel environments", ge=1, le=1024)
    vec_env: str = arg("dummy", choices=["dummy", "subproc"], help="envs in this process or one process each")
    n_steps: int = arg(128, help="rollout length per env and update", ge=1)
    n_minibatches: int = arg(4, help="minibatches per epoch (batch size = n_envs * n_steps / n_minibatches)", ge=1)
    n_epochs: int = arg(4, help="PPO epochs per rollout", ge=1)
    lr: float = arg(2.5e-4, help="Adam learning rate (decayed linearly to 0)", gt=0, le=1)
    clip_range: float = arg(0.1, help="PPO clip (decayed linearly to 0)", gt=0, le=1)
    ent_coef: float = arg(0.01, help="entropy bonus", ge=0)
    vf_coef: float = arg(0.5, help="value loss weight", ge=0)
    gamma: float = arg(0.99, help="discount", gt=0, le=1)
    gae_lambda: float = arg(0.95, help="GAE lambda", ge=0, le=1)
    max_grad_norm: float = arg(0.5, help="gradient-norm clip", gt=0)
    hidden_size: int = arg(192, help="recurrent state size (RIM: num_units x unit size)", ge=1)
    num_units: int = arg(6, help="RIM units (paper k_T)", ge=1)
    k_active: int = arg(4, help="active RIM units per step (paper k_A)", ge=1)
    compile: bool = arg(False, help="RIM core: its time step through torch.compile, 8 steps per graph (the first "
                                    "compile takes 1-4 min; docs/rims.md#speed)")
    frame_stack: int = arg(4, help="frames stacked per observation", ge=1, le=64)
    sticky: float = arg(-1.0, help="sticky-action probability (-1: the game's default, 0.25 for v5)", check=_sticky)
    max_episode_frames: int = arg(0, help="cap on raw frames per episode (0: the game's default, 108000)", ge=0)
    eval_every: int = arg(100_000, help="evaluate every this many env steps (0: only at the start and end)", ge=0)
    eval_episodes: int = arg(5, help="full games per evaluation (real scores, no episodic life)", ge=1)
    random_episodes: int = arg(10, help="games played by a uniformly random agent at the start, drawn as the "
                                        "random-agent line of curve.png (0: none)", ge=0)
    deterministic_eval: bool = arg(False, help="greedy actions in evaluation (default: sample)")
    checkpoint_every: int = arg(100_000, help="write checkpoint.zip every this many env steps (0: only at the end)",
                                ge=0)
    seed: int = arg(0, help="seed (torch, numpy, envs)", ge=0)
    out: str = arg("", help="output folder (default runs/rl/<game>-<core>-<encoder>-s<seed>)", path="out_dir",
                   allow_empty=True)
    device: str = arg("auto", help="'auto' (CUDA if present), 'cpu', 'cuda', ...", check=check_device)
    threads: int = arg(1, help="torch CPU threads (1: safe on a shared machine; on an idle 2-core one, 2 trained "
                                "1.2-1.6x faster, docs/rl.md)", ge=1)
    retain_memory: bool = arg(True, help="on the CPU keep freed memory in the process instead of glibc's default, "
                                         "which faults large tensors in again every update (zoo.engine.retain_freed_memory)",
                                  run_control=True)
    resume: bool = arg(False, help="continue from <out>/checkpoint.zip")
    progress: bool = arg(True, help="show a progress bar")

    def __post_init__(self) -> None:
        validate_config(self)

    def check(self) -> None:
        batch = self.n_envs * self.n_steps
        if batch % self.n_minibatches:
            raise ConfigError(f"--n-envs x --n-steps = {batch} is not divisible by --n-minibatches {self.n_minibatches}")
        if batch // self.n_minibatches < 2:
            raise ConfigError(f"minibatches of {batch // self.n_minibatches} step(s) (--n-envs x --n-steps / "
                              f"--n-minibatches); PPO needs at least 2")
        if self.core == "rim":
            if self.k_active > self.num_units:
                raise ConfigError(f"--k-active {self.k_active} exceeds --num-units {self.num_units}")
            if self.hidden_size % self.num_units:
                raise ConfigError(f"--hidden-size {self.hidden_size} is not a multiple of --num-units {self.num_units}")
        elif self.compile:
            raise ConfigError(f"--compile applies to the RIM core only (--core {self.core} runs torch's fused kernels)")

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("runs/rl") / f"{game_name(self.env)}-{self.core}-{self.encoder}-s{self.seed}"

    def atari_spec(self) -> AtariSpec:
        return AtariSpec(env_id=self.env, frame_stack=self.frame_stack,
                         repeat_action_probability=None if self.sticky < 0 else self.sticky,
                         max_episode_frames=self.max_episode_frames or None)

    def agent_options(self) -> Dict[str, Any]:
        """The options that define the agent (saved in its zip, checked on ``--resume``)."""
        d = {k: getattr(self, k) for k in AGENT_OPTIONS}
        if self.core != "rim":
            d.pop("num_units"), d.pop("k_active")
        if self.core == "none":
            d.pop("hidden_size")
        return d


def linear_schedule(start: float) -> Callable[[float], float]:
    """sb3 schedule: ``start`` at the beginning, 0 at the end (``progress`` goes 1 -> 0)."""
    return lambda progress: progress * start


def recurrent_policy(core: str, hidden_size: int, num_units: int, k_active: int,
                     compile: bool = False) -> Tuple[Any, Dict[str, Any]]:
    """The RecurrentPPO policy class and its kwargs for ``core`` (``lstm``, ``gru`` or ``rim``); ``compile``
    (RIM only) runs the RIM's time step through ``torch.compile`` in chunks of 8 steps."""
    from .policies import RecurrentCorePolicy

    kw: Dict[str, Any] = dict(core=core, lstm_hidden_size=hidden_size, enable_critic_lstm=False)
    if core == "rim":
        kw.update(num_units=num_units, k_active=k_active)
        if compile:
            kw.update(core_kwargs=dict(compile=True, compile_chunk=8))
    return RecurrentCorePolicy, kw


def build_model(cfg: Config, env) -> BaseAlgorithm:
    """PPO (``core="none"``) or RecurrentPPO with the chosen core and encoder, Atari hyperparameters."""
    batch = cfg.n_envs * cfg.n_steps
    common: Dict[str, Any] = dict(learning_rate=linear_schedule(cfg.lr), n_steps=cfg.n_steps,
                  batch_size=batch // cfg.n_minibatches, n_epochs=cfg.n_epochs, gamma=cfg.gamma,
                  gae_lambda=cfg.gae_lambda, clip_range=linear_schedule(cfg.clip_range), ent_coef=cfg.ent_coef,
                  vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
                  device=resolve_device(cfg.device), verbose=0)
    policy_kwargs = encoder_policy_kwargs(cfg.encoder)
    model: BaseAlgorithm
    if cfg.core == "none":
        model = PPO("CnnPolicy", env, policy_kwargs=policy_kwargs, **common)
    elif cfg.core in CORES:
        from sb3_contrib import RecurrentPPO

        policy, extra = recurrent_policy(cfg.core, cfg.hidden_size, cfg.num_units, cfg.k_active, cfg.compile)
        model = RecurrentPPO(policy, env, policy_kwargs={**policy_kwargs, **extra}, **common)
    else:
        raise ValueError(f"core={cfg.core!r} is not supported; allowed values: {', '.join(CORES)}")
    # attributes of ours (not sb3's, hence setattr) on the model object, which saves them into the zip
    setattr(model, "atari_spec", cfg.atari_spec().to_dict())    # rl.evaluate rebuilds the env
    setattr(model, "agent_options", cfg.agent_options())        # saved too; --resume checks them
    return model


def save_agent(model: BaseAlgorithm, path) -> Path:
    """``model.save`` to a temporary file, then rename: a crash never leaves a torn agent file."""
    return atomic_write(path, model.save)


def read_agent_data(path) -> Dict[str, Any]:
    """The saved data of an agent zip (class, spaces, ``atari_spec``, ``agent_options``, ...), or a
    :class:`~zoo.engine.CheckpointError` with one line when ``path`` is missing, a folder or not an agent."""
    from stable_baselines3.common.save_util import load_from_zip_file

    p = Path(path)
    if p.is_dir():
        hint = f"; did you mean {p / 'agent.zip'}?" if (p / "agent.zip").is_file() else ""
        raise CheckpointError(f"{p} is a folder, not an agent file{hint}")
    if not p.is_file():
        raise CheckpointError(f"agent file {p} not found")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, _, _ = load_from_zip_file(p, load_data=True, device="cpu")
    except Exception as e:  # noqa: BLE001 - zip, pickle and torch errors all mean "not an agent file"
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p} is not an agent file written by rl.train (truncated or corrupt? {why}); "
                              f"train again or pass another file") from None
    if not isinstance(data, dict) or not isinstance(data.get("policy_class"), type):
        raise CheckpointError(f"{p} is not an agent file written by rl.train (no policy class in it); train "
                              f"again or pass another file")
    return data


def saved_agent_options(data: Dict[str, Any]) -> Dict[str, Any]:
    """The options of a saved agent: ``agent_options`` when rl.train wrote it, else what the zip tells."""
    if isinstance(data.get("agent_options"), dict):
        return dict(data["agent_options"])
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

    from .encoders import NFMNatureCNN

    kw = data.get("policy_kwargs") or {}
    opts: Dict[str, Any] = {"core": kw.get("core", "lstm") if issubclass(data["policy_class"], RecurrentActorCriticPolicy)
                            else "none"}
    extractor = kw.get("features_extractor_class")
    if extractor is not None:
        opts["encoder"] = "nfm" if issubclass(extractor, NFMNatureCNN) else "nature"
    if isinstance(data.get("atari_spec"), dict):
        opts["env"] = data["atari_spec"].get("env_id")
    return opts


def load_agent(path, env=None, device: str = "auto") -> BaseAlgorithm:
    """Load a saved agent; PPO or RecurrentPPO is read from the file (its policy class). Bad files and
    envs that do not fit the agent raise :class:`~zoo.engine.CheckpointError` (one line)."""
    from sb3_contrib import RecurrentPPO
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

    data = read_agent_data(path)
    algo = RecurrentPPO if issubclass(data["policy_class"], RecurrentActorCriticPolicy) else PPO
    try:
        return algo.load(path, env=env, device=resolve_device(device))
    except Exception as e:  # noqa: BLE001
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} cannot be loaded: {why}") from None


class ResumableCSV(CSVOutputFormat):
    """sb3's ``progress.csv`` writer that keeps an existing file's rows up to ``keep_until`` env steps
    (sb3's own writer truncates the file: ``open(filename, "w+")``); later rows are dropped, since the
    resumed run logs those steps again."""

    def __init__(self, filename: str, keep_until: Optional[int] = None) -> None:
        path = Path(filename)
        header, rows = [], []
        if keep_until is not None and path.exists():
            with path.open(newline="") as f:
                reader = csv.reader(f)
                header = next(reader, [])
                col = header.index("time/total_timesteps") if "time/total_timesteps" in header else None
                for r in reader:
                    if col is None or (r[col] and float(r[col]) <= keep_until):
                        rows.append(r)
        with path.open("w", newline="") as f:
            if header:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(header)
                w.writerows(rows)
        self.file = open(path, "r+")
        self.file.seek(0, os.SEEK_END)
        self.keys: List[str] = list(header)
        self.separator, self.quotechar = ",", '"'


def make_logger(out: Path, keep_until: Optional[int]):
    """sb3 logger writing ``progress.csv`` (kept on resume) and TensorBoard events when installed."""
    from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat

    formats: List[KVWriter] = [ResumableCSV(str(out / "progress.csv"), keep_until)]
    if _has_tensorboard():
        formats.append(TensorBoardOutputFormat(str(out)))
    return Logger(str(out), formats)


def random_agent(env, episodes: int, seed: int) -> Dict[str, Any]:
    """Mean/std score of a uniformly random agent over ``episodes`` full games of the (1-env) ``env``."""
    rng = np.random.default_rng(seed)
    returns: List[float] = []
    env.reset()
    while len(returns) < episodes:
        _, _, dones, infos = env.step(rng.integers(env.action_space.n, size=env.num_envs))
        for done, info in zip(dones, infos):
            if done and "episode" in info:
                returns.append(float(info["episode"]["r"]))
    env.reset()
    return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)), "returns": returns}


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
        self.cpu0 = 0.0                    # CPU seconds of earlier processes of this run (on resume)
        self.next_eval: float = 0                # a step count, or inf when that event is off
        self.next_ckpt: float = 0

    def _on_training_start(self) -> None:
        self.t0, self.steps0 = time.time(), self.num_timesteps
        every = lambda n: (self.num_timesteps // n + 1) * n if n > 0 else float("inf")  # noqa: E731
        self.next_eval, self.next_ckpt = every(self.cfg.eval_every), every(self.cfg.checkpoint_every)

    def _on_step(self) -> bool:
        return not stop_requested()          # Ctrl-C / SIGTERM: stop after this env step; train() saves

    def evaluate(self) -> None:
        from .evaluate import evaluate_agent

        res = evaluate_agent(self.model, self.eval_env, self.cfg.eval_episodes, self.cfg.deterministic_eval)
        fps = (self.num_timesteps - self.steps0) / max(time.time() - self.t0, 1e-9)
        buf = self.model.ep_info_buffer
        row = {"mean_return": res["mean_return"], "std_return": res["std_return"],
               "mean_length": res["mean_length"], "fps": fps, "cpu_seconds": self.cpu0 + time.process_time(),
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


def plot_curve(out: Path, history: List[Dict[str, float]], title: str,
               random_agent: Optional[Dict[str, Any]] = None) -> Path:
    """``curve.png``: training game scores (points and a running mean over 20 episodes), evaluation
    mean ± std and the random agent's mean score, against env steps."""
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
    if random_agent:
        ax.axhline(random_agent["mean_return"], color="k", ls="--", lw=1,
                   label=f"random agent ({len(random_agent['returns'])} games)")
    ax.set(xlabel="environment steps", ylabel="game score", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = atomic_write(out / "curve.png", lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def check_resume(cfg: Config, ckpt: Path) -> None:
    """Refuse (one line) a checkpoint whose agent differs from the one ``cfg`` asks for."""
    saved = saved_agent_options(read_agent_data(ckpt))
    want = cfg.agent_options()
    diff = [k for k in AGENT_OPTIONS if k in saved and k in want and saved[k] != want[k]]
    if "core" in saved and saved["core"] != want["core"]:
        diff = [k for k in ("env", "core", "encoder") if k in saved and saved[k] != want[k]]
    if diff:
        flags = lambda d: " ".join(f"--{k.replace('_', '-')} {d.get(k)}" for k in diff)  # noqa: E731
        raise CheckpointError(f"{ckpt} was trained with {flags(saved)}, but this run asks for {flags(want)}; resume "
                              f"with the checkpoint's options or use another --out")


def _history(log: MetricLogger) -> List[Dict[str, float]]:
    """The evaluations already in ``eval.csv`` (kept on resume), as ``_EvalAndCheckpoint.history`` rows."""
    rows = []
    for r in log.rows:
        if r.get("eval/mean_return") not in (None, ""):
            rows.append({"step": int(float(r["step"])), **{k.split("/", 1)[1]: float(v) for k, v in r.items()
                                                           if k.startswith("eval/") and v not in (None, "")}})
    return rows


def train(cfg: Config) -> Dict[str, Any]:
    """Train, evaluate, checkpoint, plot; returns the content of ``results.json``."""
    validate_config(cfg)
    torch.set_num_threads(cfg.threads)
    if cfg.retain_memory:
        retain_freed_memory(resolve_device(cfg.device))   # reuse freed pages instead of faulting them in again
    seed_everything(cfg.seed)
    out = cfg.run_dir()
    ckpt = out / "checkpoint.zip"
    resuming = cfg.resume and ckpt.exists()
    if resuming:
        check_resume(cfg, ckpt)
    elif cfg.resume:
        print(f"no checkpoint in {out}: starting a new run")
    out.mkdir(parents=True, exist_ok=True)
    spec = cfg.atari_spec()
    env = make_atari(spec, cfg.n_envs, seed=cfg.seed, vec_env=cfg.vec_env)
    eval_env = make_atari(spec, 1, seed=cfg.seed + 10_000, training=False)
    if resuming:
        model = load_agent(ckpt, env=env, device=cfg.device)
        model.tensorboard_log = None
    else:
        model = build_model(cfg, env)
    keep = model.num_timesteps if resuming else None
    model.set_logger(make_logger(out, keep))
    log = MetricLogger(out, filename="eval.csv", tensorboard=False, resume_step=keep)
    write_json(out / "config.json", config_to_dict(cfg))
    episodes = MetricLogger(out, filename="episodes.csv", resume_step=keep)
    random_file = out / "random_agent.json"
    if cfg.random_episodes and not (resuming and random_file.exists()):
        write_json(random_file, random_agent(eval_env, cfg.random_episodes, cfg.seed + 20_000))
    baseline = json.loads(random_file.read_text()) if cfg.random_episodes and random_file.exists() else None
    evals = _EvalAndCheckpoint(cfg, eval_env, log, ckpt)
    evals.history = _history(log)
    if resuming and evals.history:
        evals.cpu0 = evals.history[-1].get("cpu_seconds", 0.0) - time.process_time()
    if not resuming:
        evals.model = model
        evals.evaluate()                                              # the untrained agent: the curve's start
    t0 = time.time()
    remaining = max(cfg.steps - model.num_timesteps, 0)
    with stop_handlers():
        model.learn(remaining, callback=[_Progress(cfg.steps, cfg.progress, episodes), evals],
                    reset_num_timesteps=not resuming)
    seconds = time.time() - t0
    if stop_requested():
        save_agent(model, ckpt)
        for f in (log, episodes, env, eval_env):
            f.close()
        clear_stop()
        raise Interrupted(f"interrupted at step {model.num_timesteps} of {cfg.steps}: checkpoint saved in {ckpt}; "
                          f"continue with the same command and --resume", step=model.num_timesteps)
    if not evals.history or evals.history[-1]["step"] != model.num_timesteps:
        evals.evaluate()                                              # the final agent's score
    save_agent(model, ckpt)
    save_agent(model, out / "agent.zip")
    fps = (model.num_timesteps - (cfg.steps - remaining)) / max(seconds, 1e-9)
    plot_curve(out, evals.history, f"{cfg.env}: {'PPO' if cfg.core == 'none' else 'RecurrentPPO ' + cfg.core}, "
                                   f"{cfg.encoder} encoder", baseline)
    log.close()
    episodes.close()
    env.close()
    eval_env.close()
    results: Dict[str, Any] = {"config": config_to_dict(cfg), "steps": int(model.num_timesteps), "seconds": seconds,
               "steps_per_second": fps, "final_eval": evals.history[-1], "evaluations": evals.history,
               "random_agent": baseline, "agent": str(out / "agent.zip")}
    write_json(out / "results.json", results)
    print(f"{cfg.env} {cfg.core}/{cfg.encoder}: {model.num_timesteps} steps in {seconds:.0f}s ({fps:.0f} steps/s); "
          f"final evaluation {results['final_eval']['mean_return']:.1f} ± {results['final_eval']['std_return']:.1f} "
          f"over {cfg.eval_episodes} games"
          + (f" (random agent {baseline['mean_return']:.1f})" if baseline else "") + f"; outputs in {out}")
    return results


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    cfg = parse_config(Config, argv, prog="python -m rl.train")
    return train(cfg)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
