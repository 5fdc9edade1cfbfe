"""Partially observable control tasks that train on a CPU in minutes, for RIM-vs-LSTM-vs-GRU comparisons.

``import rl`` (or ``import rl.pomdp``) registers them with gymnasium:

* ``zoo/CartPoleNoVel-v0``: ``CartPole-v1`` (500-step limit) observing only the cart position and the pole
  angle; the two velocities are hidden, so a memoryless policy cannot balance well and a recurrent one must
  estimate them from consecutive observations.
* ``zoo/PendulumNoVel-v0``: ``Pendulum-v1`` observing ``[cos theta, sin theta]`` only (the angular velocity
  is hidden). Every episode lasts exactly 200 steps whatever the policy does, so RecurrentPPO's sequences
  have the same lengths for every agent (the throughput benchmark uses it for that).

    import gymnasium as gym, rl
    env = gym.make("zoo/CartPoleNoVel-v0")          # observation (2,): [cart position, pole angle]
    RecurrentPPO(rl.RIMActorCriticPolicy, "zoo/CartPoleNoVel-v0", ...)

:class:`MaskObservation` hides any coordinates of a ``Box`` observation, for other tasks.
"""
from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np

__all__ = ["MaskObservation", "make_cartpole_novel", "make_pendulum_novel", "register_pomdps", "POMDP_IDS"]

POMDP_IDS = ("zoo/CartPoleNoVel-v0", "zoo/PendulumNoVel-v0")


class MaskObservation(gym.ObservationWrapper):
    """Keep only the coordinates ``keep`` of a 1-D ``Box`` observation: ``(D,) -> (len(keep),)``."""

    def __init__(self, env: gym.Env, keep: Sequence[int]) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"MaskObservation needs a 1-D Box observation space, got {space}")
        idx = np.asarray(keep, dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= space.shape[0]:
            raise ValueError(f"keep={idx.tolist()} must be non-empty indices in [0, {space.shape[0]})")
        self.keep = idx
        self.observation_space = gym.spaces.Box(space.low[idx], space.high[idx], dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.keep]


def make_cartpole_novel(**kwargs) -> gym.Env:
    """CartPole without velocities: observation ``[x, theta]`` (indices 0 and 2 of CartPole's state)."""
    from gymnasium.envs.classic_control import CartPoleEnv

    return MaskObservation(CartPoleEnv(**kwargs), keep=(0, 2))


def make_pendulum_novel(**kwargs) -> gym.Env:
    """Pendulum without angular velocity: observation ``[cos theta, sin theta]`` (indices 0 and 1)."""
    from gymnasium.envs.classic_control import PendulumEnv

    return MaskObservation(PendulumEnv(**kwargs), keep=(0, 1))


def register_pomdps() -> None:
    """Register the tasks of :data:`POMDP_IDS` (idempotent)."""
    if "zoo/CartPoleNoVel-v0" not in gym.registry:
        gym.register(id="zoo/CartPoleNoVel-v0", entry_point="rl.pomdp:make_cartpole_novel",
                     max_episode_steps=500, reward_threshold=475.0)
    if "zoo/PendulumNoVel-v0" not in gym.registry:
        gym.register(id="zoo/PendulumNoVel-v0", entry_point="rl.pomdp:make_pendulum_novel", max_episode_steps=200)


register_pomdps()
