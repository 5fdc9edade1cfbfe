"""Object picking among distractors on MiniGrid (thesis 8.4.3, Fig. 4), with seen and novel distractors.

The RIMs paper trains a recurrent PPO agent on a partially observed BabyAI object-picking task and then
evaluates it with *new* distractors that never appeared in training. The exact level and split are in
the paper's appendix, not in the thesis; ours is :class:`DistractorPickupEnv`:

* one room, ``size`` x ``size`` cells with walls (default 8: 6x6 free cells; ``rl.distractors`` uses 7,
  5x5 free cells), the agent sees the 7x7 cells ahead of it (MiniGrid's egocentric, partial view: nothing
  behind it or beside it beyond 3 cells; walls block the view);
* the goal is fixed, **pick up the red ball** (no language to parse), placed at random;
* ``num_distractors`` (default 4) other objects, each a key, ball or box of a colour drawn from the
  split's colours (never the red ball itself);
* reward ``1 - 0.9 * steps / max_steps`` for picking up the red ball (MiniGrid's convention); picking up
  any other object ends the episode with reward 0 (as MiniGrid's Fetch does), so a distractor the agent
  mistakes for the target costs the episode; ``max_steps`` (64) ends it too.

The split (colours are MiniGrid's six): distractors in training and in the *seen* evaluation are keys,
balls and boxes in **red, green, blue** (red keys and red boxes included, so the agent must use the
shape, and green/blue balls, so it must use the colour); the *novel* evaluation uses the same count of
keys, balls and boxes in **purple, yellow, grey**, colours the agent never saw. ``SEEN_COLORS``,
``NOVEL_COLORS`` and ``DISTRACTOR_TYPES`` hold it.

Wrappers for the agents: :class:`OneHotView` turns the 7x7x3 view of (object, colour, state) indices into
one-hot features, flattened: ``(7 * 7 * 20,)`` float32 (a novel colour lights a colour unit that was 0 in
every training observation); :class:`IndexView` keeps MiniGrid's raw indices instead, channels first,
``(3, 7, 7)`` float32 (what the BabyAI / MiniGrid reference agents' convolutions read: a novel colour is a
new value of the colour channel); :class:`PickupActions` keeps the four useful actions (left, right, forward,
pick up) of MiniGrid's seven. :func:`make_distractor_env` stacks them; the registered ids
``zoo/DistractorPickupSeen-v0`` and ``zoo/DistractorPickupNovel-v0`` are the raw MiniGrid envs (dict
observations: ``image``, ``direction``, ``mission``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional, Sequence, Tuple

import gymnasium as gym
import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Ball, Box, Key
from minigrid.minigrid_env import MiniGridEnv

__all__ = ["DistractorPickupEnv", "OneHotView", "IndexView", "PickupActions", "make_distractor_env", "SEEN_COLORS",
           "NOVEL_COLORS", "DISTRACTOR_TYPES", "TARGET", "SPLITS", "register_gridworlds"]

SEEN_COLORS: Tuple[str, ...] = ("red", "green", "blue")
NOVEL_COLORS: Tuple[str, ...] = ("purple", "yellow", "grey")
DISTRACTOR_TYPES: Tuple[str, ...] = ("key", "ball", "box")
TARGET: Tuple[str, str] = ("ball", "red")
SPLITS = {"seen": SEEN_COLORS, "novel": NOVEL_COLORS}
_OBJECTS = {"key": Key, "ball": Ball, "box": Box}
_WALL = np.array([OBJECT_TO_IDX["wall"], COLOR_TO_IDX["grey"], 0], np.uint8)


class DistractorPickupEnv(MiniGridEnv):
    """Pick up the red ball in one room among ``num_distractors`` distractors (see the module docstring).

    Args:
        size: room side in cells, walls included (8: 6x6 free cells).
        num_distractors: objects besides the target.
        distractor_colors, distractor_types: what distractors are drawn from (uniformly, without the target
            pair); default: the seen split.
        max_steps: episode limit (64).
        agent_view_size: side of the egocentric view (7, MiniGrid's and BabyAI's).
    """

    def __init__(self, size: int = 8, num_distractors: int = 4, distractor_colors: Sequence[str] = SEEN_COLORS,
                 distractor_types: Sequence[str] = DISTRACTOR_TYPES, max_steps: int = 64,
                 agent_view_size: int = 7, **kwargs) -> None:
        bad = [c for c in distractor_colors if c not in COLOR_TO_IDX] + [t for t in distractor_types if t not in _OBJECTS]
        if bad or not distractor_colors or not distractor_types:
            raise ValueError(f"distractor colours must be among {list(COLOR_TO_IDX)} and types among "
                             f"{list(_OBJECTS)} (non-empty); got {list(distractor_colors)}, {list(distractor_types)}")
        if num_distractors < 0 or num_distractors > (size - 2) ** 2 - 2:
            raise ValueError(f"num_distractors={num_distractors} does not fit a {size}x{size} room")
        self.pairs = [(t, c) for t in distractor_types for c in distractor_colors if (t, c) != TARGET]
        if num_distractors and not self.pairs:
            raise ValueError("the only distractor allowed is the target itself (the red ball)")
        self.num_distractors = num_distractors
        self.distractor_colors, self.distractor_types = tuple(distractor_colors), tuple(distractor_types)
        super().__init__(mission_space=MissionSpace(mission_func=lambda: "pick up the red ball"), grid_size=size,
                         max_steps=max_steps, agent_view_size=agent_view_size, see_through_walls=False, **kwargs)

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        self.place_obj(_OBJECTS[TARGET[0]](TARGET[1]))
        for _ in range(self.num_distractors):
            kind, colour = self.pairs[self._rand_int(0, len(self.pairs))]
            self.place_obj(_OBJECTS[kind](colour))
        self.place_agent()
        self.mission = "pick up the red ball"

    def gen_obs(self) -> dict:
        """MiniGrid's observation, computed with numpy: the same ``image`` as ``MiniGridEnv.gen_obs``
        (tested) at a fraction of its cost (its object-by-object slice, rotations and visibility pass
        dominate an env step). Valid for rooms whose only opaque cells are walls, as here."""
        v = self.agent_view_size
        w, h = self.grid.width, self.grid.height
        full = np.empty((w + 2 * v, h + 2 * v, 3), np.uint8)
        full[...] = _WALL                                       # outside the grid: walls, as Grid.slice
        cells = [(1, 0, 0) if o is None else o.encode() for o in self.grid.grid]   # row-major (y, x)
        full[v:v + w, v:v + h] = np.asarray(cells, np.uint8).reshape(h, w, 3).transpose(1, 0, 2)
        top_x, top_y, _, _ = self.get_view_exts()
        view = np.rot90(full[top_x + v:top_x + 2 * v, top_y + v:top_y + 2 * v], -(self.agent_dir + 1)).copy()
        visible = _visibility(view[..., 0] == _WALL[0])
        view[v // 2, v - 1] = self.carrying.encode() if self.carrying else (1, 0, 0)
        view[~visible] = 0
        return {"image": view, "direction": self.agent_dir, "mission": self.mission}

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.carrying is not None:
            success = (self.carrying.type, self.carrying.color) == TARGET
            reward, terminated = (self._reward() if success else 0.0), True
            info = dict(info, success=success)
        elif terminated or truncated:
            info = dict(info, success=False)
        return obs, reward, terminated, truncated, info


def _visibility(opaque: np.ndarray) -> np.ndarray:
    """``Grid.process_vis`` on a ``(V, V)`` [x, y] array of opaque cells, agent at ``(V // 2, V - 1)``:
    visibility spreads row by row away from the agent through see-through cells."""
    v = opaque.shape[0]
    op = opaque.tolist()
    mask = [[False] * v for _ in range(v)]                    # mask[x][y]
    mask[v // 2][v - 1] = True
    for j in range(v - 1, -1, -1):
        for i in range(v - 1):
            if mask[i][j] and not op[i][j]:
                mask[i + 1][j] = True
                if j > 0:
                    mask[i + 1][j - 1] = mask[i][j - 1] = True
        for i in range(v - 1, 0, -1):
            if mask[i][j] and not op[i][j]:
                mask[i - 1][j] = True
                if j > 0:
                    mask[i - 1][j - 1] = mask[i][j - 1] = True
    return np.asarray(mask, dtype=bool)


class _GridView(gym.ObservationWrapper, ABC):
    """Base of the agents' views: MiniGrid's ``image`` (V, V, 3) through :meth:`encode` into
    :meth:`image_space`; ``keep_dict=True`` gives ``{"image": ..., "direction": Discrete(4)}`` instead.
    Subclasses define the two (abstract) methods."""

    def __init__(self, env: gym.Env, keep_dict: bool = False) -> None:
        super().__init__(env)
        space = env.observation_space
        image = space["image"] if isinstance(space, gym.spaces.Dict) else space
        assert image.shape is not None                       # minigrid's image space is a Box
        self.view, self.keep_dict = image.shape[0], keep_dict
        box = self.image_space(self.view)
        self.observation_space = gym.spaces.Dict({"image": box, "direction": gym.spaces.Discrete(4)}) \
            if keep_dict else box

    @abstractmethod
    def image_space(self, view: int) -> gym.spaces.Box:
        """The observation space of one encoded ``(view, view, 3)`` image."""

    @abstractmethod
    def encode(self, image: np.ndarray) -> np.ndarray:
        """One ``(V, V, 3)`` image of indices -> the agent's observation."""

    def observation(self, observation):
        if self.keep_dict:
            return {"image": self.encode(observation["image"]), "direction": int(observation["direction"])}
        return self.encode(observation["image"] if isinstance(observation, dict) else observation)


class OneHotView(_GridView):
    """MiniGrid's ``image`` (V, V, 3) of (object, colour, state) indices -> one-hot features, flattened.

    ``(V, V, 3)`` int -> ``(V * V * (11 + 6 + 3),)`` float32 in {0, 1}: per cell a one-hot of the object type
    (11), of the colour (6) and of the state (3); the ``direction`` and ``mission`` entries are dropped
    (the view is egocentric and the mission is fixed). ``keep_dict=True``: a dict ``{"image": that vector,
    "direction": Discrete(4)}`` instead (for multi-input policies).
    """

    SIZES = (len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX))

    def __init__(self, env: gym.Env, keep_dict: bool = False) -> None:
        self.offsets = np.cumsum((0,) + self.SIZES[:-1])
        super().__init__(env, keep_dict)

    def image_space(self, view: int) -> gym.spaces.Box:
        return gym.spaces.Box(0.0, 1.0, (view * view * sum(self.SIZES),), np.float32)

    def encode(self, image: np.ndarray) -> np.ndarray:
        cells = image.reshape(-1, 3).astype(np.int64) + self.offsets          # (V*V, 3) indices into 20 slots
        out = np.zeros((cells.shape[0], sum(self.SIZES)), np.float32)
        np.put_along_axis(out, cells, 1.0, axis=1)
        return out.reshape(-1)


class IndexView(_GridView):
    """MiniGrid's ``image`` (V, V, 3) of (object, colour, state) indices -> ``(3, V, V)`` float32, the raw
    indices channels first (no one-hot, no scaling), as the BabyAI / MiniGrid reference agents feed their
    convolutions (rl-starter-files' ``ACModel``); :class:`rl.encoders.GridConvEncoder` reads it. Colours
    are MiniGrid's indices 0-5 (red 0, green 1, blue 2, purple 3, yellow 4, grey 5), so the novel split's
    colours are values 3-5 of the colour channel, never seen in training. ``keep_dict`` as
    :class:`OneHotView`."""

    def image_space(self, view: int) -> gym.spaces.Box:
        high = float(max(len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX)) - 1)
        return gym.spaces.Box(0.0, high, (3, view, view), np.float32)

    def encode(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


VIEWS = {"onehot": OneHotView, "index": IndexView}
"""Observation wrappers of :func:`make_distractor_env` by name."""


class PickupActions(gym.ActionWrapper):
    """Keep MiniGrid's actions left (0), right (1), forward (2) and pick up (3): ``Discrete(4)``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.action_space = gym.spaces.Discrete(4)

    def action(self, action):
        return int(action)          # MiniGrid's Actions: left 0, right 1, forward 2, pickup 3


def make_distractor_env(split: str = "seen", num_distractors: int = 4, size: int = 8, max_steps: int = 64,
                        render_mode: Optional[str] = None, dict_obs: bool = False, view: str = "onehot",
                        **kwargs) -> gym.Env:
    """The agent's env for ``split`` (``"seen"`` or ``"novel"`` distractor colours): the view, 4 actions.

    ``view``: ``"onehot"`` (:class:`OneHotView`, flat one-hot features) or ``"index"`` (:class:`IndexView`,
    the raw indices channels first). ``dict_obs=True``: dict observations ``{"image": the view,
    "direction": Discrete(4)}``, for multi-input policies (sb3's ``CombinedExtractor`` flattens both).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {', '.join(SPLITS)}")
    if view not in VIEWS:
        raise ValueError(f"view={view!r}; allowed: {', '.join(VIEWS)}")
    env = DistractorPickupEnv(size=size, num_distractors=num_distractors, distractor_colors=SPLITS[split],
                              max_steps=max_steps, render_mode=render_mode, **kwargs)
    return VIEWS[view](PickupActions(env), keep_dict=dict_obs)


def register_gridworlds() -> None:
    """Register ``zoo/DistractorPickupSeen-v0`` and ``zoo/DistractorPickupNovel-v0`` (raw MiniGrid envs)."""
    for split, colours in SPLITS.items():
        env_id = f"zoo/DistractorPickup{split.capitalize()}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="rl.gridworld:DistractorPickupEnv",
                         kwargs=dict(distractor_colors=colours))


register_gridworlds()
