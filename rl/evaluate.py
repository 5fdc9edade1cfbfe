"""Play a saved agent and report its game score: ``python -m rl.evaluate AGENT.zip --episodes 10``.

    python -m rl.evaluate runs/rl/pong-rim-nature-s0/agent.zip --episodes 10
    python -m rl.evaluate runs/rl/pong-rim-nature-s0/agent.zip --episodes 2 --video videos/

The agent file holds the preprocessing it was trained with (``rl.train`` stores it in the zip), so the
same game and frames are rebuilt; the evaluation env keeps real rewards and ends episodes at game over,
so the numbers are game scores. PPO and RecurrentPPO agents both work (recurrent states are carried and
reset at episode starts). ``--video DIR`` records every played game as an mp4: with gymnasium's
``RecordVideo`` when ``moviepy`` is installed, else with OpenCV; without either it says so and plays on.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, cast

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.evaluation import evaluate_policy

from zoo.engine import (ConfigError, RunError, arg, check_device, parse_config, run_cli, seed_everything,
                        validate_config, write_json)

from .envs import AtariSpec, check_atari_id, game_name, make_atari

if TYPE_CHECKING:
    import cv2

__all__ = ["EvalConfig", "evaluate_agent", "video_wrapper", "main"]


def evaluate_agent(model, env, episodes: int, deterministic: bool = False) -> Dict[str, Any]:
    """Play ``episodes`` games with sb3's ``evaluate_policy`` (which carries recurrent states and resets
    them at episode starts); returns mean/std of the score and the per-game scores and lengths."""
    # return_episode_rewards=True: per-episode lists
    returns, lengths = cast(Tuple[List[float], List[int]],
                            evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=deterministic,
                                            return_episode_rewards=True, warn=False))
    return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "mean_length": float(np.mean(lengths)), "returns": [float(r) for r in returns],
            "lengths": [int(n) for n in lengths]}


class _OpenCVVideo(gym.Wrapper):
    """Write each episode's ``render()`` frames to ``<folder>/<prefix>-episode-<i>.mp4`` with OpenCV."""

    def __init__(self, env: gym.Env, folder: Path, prefix: str) -> None:
        super().__init__(env)
        import cv2

        self.cv2, self.folder, self.prefix = cv2, Path(folder), prefix
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer: Optional[cv2.VideoWriter] = None
        self.episode = 0
        self.fps = int(env.metadata.get("render_fps", 30) or 30)

    def _frame(self) -> None:
        frame = cast(np.ndarray, self.env.render())                   # render_mode="rgb_array"
        if self.writer is None:
            path = self.folder / f"{self.prefix}-episode-{self.episode}.mp4"
            h, w = frame.shape[:2]
            self.writer = self.cv2.VideoWriter(str(path), self.cv2.VideoWriter.fourcc(*"mp4v"), self.fps, (w, h))
        self.writer.write(self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2BGR))

    def _close_video(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer, self.episode = None, self.episode + 1

    def reset(self, **kwargs):
        self._close_video()
        out = self.env.reset(**kwargs)
        self._frame()
        return out

    def step(self, action):
        out = self.env.step(action)
        self._frame()
        if out[2] or out[3]:
            self._close_video()
        return out

    def close(self):
        self._close_video()
        return super().close()


def video_wrapper(folder, prefix: str = "agent") -> Optional[Callable[[gym.Env], gym.Env]]:
    """A wrapper that records every episode to ``folder`` (RecordVideo with moviepy, else OpenCV), or
    ``None`` (with a message) when neither can write videos."""
    try:
        import moviepy  # noqa: F401  (gymnasium's RecordVideo needs it)

        return lambda env: gym.wrappers.RecordVideo(env, str(folder), episode_trigger=lambda i: True,
                                                    name_prefix=prefix, disable_logger=True)
    except ImportError:
        pass
    try:
        import cv2  # noqa: F401

        return lambda env: _OpenCVVideo(env, Path(folder), prefix)
    except ImportError:
        print("no video: install moviepy (gymnasium RecordVideo) or opencv-python; evaluating without video")
        return None


def _atari_or_empty(env_id: str) -> Optional[str]:
    return None if env_id == "" else check_atari_id(env_id)


@dataclass
class EvalConfig:
    """Play a saved agent (python -m rl.evaluate AGENT.zip [options]) and report its mean game score."""

    agent: str = arg("", help="the agent file (agent.zip or checkpoint.zip written by rl.train); may be "
                              "given as the first positional argument")
    episodes: int = arg(10, help="games to play", ge=1)
    deterministic: bool = arg(False, help="greedy actions (default: sample from the policy)")
    video: str = arg("", help="folder for mp4 videos of the games (empty: no video)", path="out_dir", allow_empty=True)
    env: str = arg("", help="override the game id stored in the agent (the same game, e.g. another version)",
                   check=_atari_or_empty)
    max_episode_frames: int = arg(0, help="cap on raw frames per game (0: as trained / game default)", ge=0)
    seed: int = arg(0, help="seed of the evaluation envs", ge=0)
    threads: int = arg(1, help="torch CPU threads", ge=1)
    device: str = arg("auto", help="'auto', 'cpu', 'cuda', ...", check=check_device)
    out: str = arg("", help="also write the results as JSON to this file", path="out_file", allow_empty=True)

    def __post_init__(self) -> None:
        validate_config(self)
        if not self.agent:
            raise ConfigError("no agent file given: python -m rl.evaluate AGENT.zip [options]")


def check_env_override(data: Dict[str, Any], env_id: str) -> None:
    """Refuse (one line) to play an agent on another game than the one it was trained on."""
    trained = (data.get("atari_spec") or {}).get("env_id")
    if trained and game_name(trained) != game_name(env_id):
        n = getattr(data.get("action_space"), "n", "?")
        raise ConfigError(f"--env {env_id}: the agent was trained on {trained} ({n} actions) and plays only that "
                          f"game; drop --env or pass a version of the same game")


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    from .train import load_agent, read_agent_data

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--agent", argv[0]] + argv[1:]
    cfg = parse_config(EvalConfig, argv, prog="python -m rl.evaluate")
    data = read_agent_data(cfg.agent)
    if cfg.env:
        check_env_override(data, cfg.env)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    model = load_agent(cfg.agent, device=cfg.device)
    spec = AtariSpec(**getattr(model, "atari_spec", {}) or {})
    if cfg.env:
        spec.env_id = cfg.env
    if cfg.max_episode_frames:
        spec.max_episode_frames = cfg.max_episode_frames
    wrapper = video_wrapper(cfg.video, Path(cfg.agent).stem) if cfg.video else None
    env = make_atari(spec, 1, seed=cfg.seed, training=False, render_mode="rgb_array" if wrapper else None,
                     inner_wrapper=wrapper)
    if env.action_space != model.action_space:
        env.close()
        raise RunError(f"{spec.env_id} has {env.action_space} actions; the agent plays {model.action_space}")
    res = evaluate_agent(model, env, cfg.episodes, cfg.deterministic)
    env.close()
    videos: List[str] = []
    if wrapper:                 # the vec env resets after the last game: drop the stub of a game never played
        found = sorted(Path(cfg.video).glob(f"{Path(cfg.agent).stem}*episode-*.mp4"),
                       key=lambda p: int(p.stem.rsplit("-", 1)[1]))
        for p in found[cfg.episodes:]:
            p.unlink()
        videos = [str(p) for p in found[:cfg.episodes]]
    res.update(agent=cfg.agent, env=spec.env_id, episodes=cfg.episodes, deterministic=cfg.deterministic,
               videos=videos)
    print(f"{spec.env_id}: mean return {res['mean_return']:.2f} ± {res['std_return']:.2f} over {cfg.episodes} "
          f"games (lengths {res['mean_length']:.0f} frames on average)"
          + (f"; videos in {cfg.video}" if res["videos"] else ""))
    if cfg.out:
        write_json(cfg.out, res)
    return res


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
