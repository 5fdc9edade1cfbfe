"""Atari environments with the standard preprocessing (Mnih et al. 2015; Machado et al. 2018), vectorized.

:func:`make_atari` builds ``n_envs`` copies of a gymnasium + ale-py game (``ALE/Pong-v5``; the ROMs ship in
the ale-py wheel, nothing is downloaded) through stable-baselines3's :class:`AtariWrapper`, in this order:

* sticky actions (``repeat_action_probability``, 0.25 in the v5 games, Machado et al. 2018),
* a random number of no-ops (1..30) after every reset,
* action repeat 4 with a max over the last two frames (the flicker fix). The v5 games skip 4 frames
  themselves *without* the max, so the game is built with ``frameskip=1`` and the wrapper repeats instead,
* episodic life (a lost life ends the episode for the learner; the game resets only at game over) and
  FIRE on reset for games that need it (training only),
* 84x84 grayscale frames, rewards clipped to their sign (training only),
* a ``Monitor`` under all of it, so ``info["episode"]`` always holds the real game's return and length,

then stacks the last ``frame_stack`` frames (``VecFrameStack``). Evaluation envs (``training=False``) keep
the real rewards and end episodes at game over only, so their returns are game scores.

    env = make_atari("ALE/Pong-v5", n_envs=8, seed=0)               # (8, 84, 84, 4) uint8 observations
    env = make_atari("ALE/Pong-v5", training=False, render_mode="rgb_array")   # for evaluation / videos
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Type, Union

import gymnasium as gym
from stable_baselines3.common.atari_wrappers import AtariWrapper
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack

__all__ = ["AtariSpec", "make_atari", "register_ale", "check_atari_id", "game_name"]

_VEC_ENVS: Dict[str, Union[Type[DummyVecEnv], Type[SubprocVecEnv]]] = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}


def register_ale() -> None:
    """Register the ``ALE/*`` games with gymnasium (idempotent)."""
    import ale_py

    gym.register_envs(ale_py)


def game_name(env_id: str) -> str:
    """The game of an Atari id, for comparisons: ``ALE/Pong-v5`` and ``PongNoFrameskip-v4`` -> ``"pong"``."""
    name = env_id.split("/")[-1].split("-")[0]
    return name.replace("NoFrameskip", "").replace("Deterministic", "").lower()


def check_atari_id(env_id: str) -> Optional[str]:
    """``None`` if ``env_id`` is a registered ALE game, else what is allowed (for ``arg(check=...)``)."""
    register_ale()
    try:
        spec = gym.spec(env_id)
    except Exception:  # noqa: BLE001 - gymnasium raises several error types for unknown ids
        return "an Atari game id such as ALE/Pong-v5 or ALE/Breakout-v5 (this id is not registered)"
    entry = spec.entry_point if isinstance(spec.entry_point, str) else getattr(spec.entry_point, "__module__", "")
    if "ale_py" not in str(entry):
        return ("an Atari game id such as ALE/Pong-v5 (this is not an Atari game; for vector or gridworld envs "
                "use RecurrentPPO with rl.RecurrentCorePolicy, docs/rl.md)")
    return None


def _make_game(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` after registering the ALE games (subprocess envs start without the registration)."""
    register_ale()
    return gym.make(env_id, **kwargs)


@dataclass
class AtariSpec:
    """Everything that defines the observations an agent was trained on; saved with the agent so
    :mod:`rl.evaluate` rebuilds the same preprocessing.

    Attributes:
        env_id: a gymnasium id (``ALE/Pong-v5``, ``PongNoFrameskip-v4``, ...).
        frame_stack: frames stacked per observation (1: no stacking, e.g. for recurrent agents).
        frame_skip: action repeat with max-pooling over the last two frames (4).
        screen_size: side of the square grayscale frame (84).
        noop_max: at most this many no-ops after a reset (30).
        repeat_action_probability: sticky actions; ``None`` keeps the game's default (0.25 for v5).
        max_episode_frames: ALE's own episode cap in raw frames (``None``: the game default, 108,000).
    """

    env_id: str = "ALE/Pong-v5"
    frame_stack: int = 4
    frame_skip: int = 4
    screen_size: int = 84
    noop_max: int = 30
    repeat_action_probability: Optional[float] = None
    max_episode_frames: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def env_kwargs(self, render_mode: Optional[str] = None) -> Dict[str, Any]:
        """Keyword arguments of ``gym.make`` for the raw game."""
        register_ale()
        spec = gym.spec(self.env_id)
        kw: Dict[str, Any] = {}
        own_skip = spec.kwargs.get("frameskip", 1)
        if self.frame_skip > 1 and own_skip != 1:
            kw["frameskip"] = 1                   # the wrapper repeats actions (with the max over 2 frames)
        if self.repeat_action_probability is not None:
            kw["repeat_action_probability"] = float(self.repeat_action_probability)
        if self.max_episode_frames:
            kw["max_num_frames_per_episode"] = int(self.max_episode_frames)
        if render_mode is not None:
            kw["render_mode"] = render_mode
        return kw


def make_atari(spec: "AtariSpec | str" = "ALE/Pong-v5", n_envs: int = 1, seed: Optional[int] = None,
               training: bool = True, vec_env: str = "dummy", monitor_dir: Optional[str] = None,
               render_mode: Optional[str] = None,
               inner_wrapper: Optional[Callable[[gym.Env], gym.Env]] = None) -> VecEnv:
    """``n_envs`` preprocessed copies of an Atari game as one sb3 ``VecEnv`` (see the module docstring).

    Args:
        spec: an :class:`AtariSpec` or just the env id (default preprocessing).
        n_envs: parallel copies. seed: env ``i`` is seeded ``seed + i``.
        training: episodic life and reward clipping on (training) or off (evaluation: game scores).
        vec_env: ``"dummy"`` (all envs in this process) or ``"subproc"`` (one process per env).
        monitor_dir: where ``Monitor`` writes ``*.monitor.csv`` (the real game returns); ``None``: no file.
        render_mode: ``"rgb_array"`` for videos.
        inner_wrapper: applied to the raw game before the preprocessing (e.g. a video recorder).

    Returns:
        a ``VecEnv`` of ``(n_envs, screen, screen, frame_stack)`` uint8 observations (sb3 transposes to
        channels-first for CNN policies).
    """
    if isinstance(spec, str):
        spec = AtariSpec(env_id=spec)
    if vec_env not in _VEC_ENVS:
        raise ValueError(f"vec_env={vec_env!r} is not supported; allowed values: {', '.join(_VEC_ENVS)}")
    if n_envs < 1 or spec.frame_stack < 1:
        raise ValueError(f"n_envs and frame_stack must be >= 1, got {n_envs} and {spec.frame_stack}")
    wrapper_kwargs = dict(noop_max=spec.noop_max, frame_skip=spec.frame_skip, screen_size=spec.screen_size,
                          terminal_on_life_loss=training, clip_reward=training)

    def wrap(env: gym.Env, **kw) -> gym.Env:
        if inner_wrapper is not None:
            env = inner_wrapper(env)
        return AtariWrapper(env, **kw)

    # make_vec_env puts Monitor directly on the game, under every wrapper: episode stats are game scores
    venv = make_vec_env(functools.partial(_make_game, spec.env_id), n_envs=n_envs, seed=seed, monitor_dir=monitor_dir, wrapper_class=wrap,
                        env_kwargs=spec.env_kwargs(render_mode), wrapper_kwargs=wrapper_kwargs,
                        vec_env_cls=_VEC_ENVS[vec_env])
    return VecFrameStack(venv, spec.frame_stack) if spec.frame_stack > 1 else venv
