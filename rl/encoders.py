"""Image encoders for RL agents as stable-baselines3 features extractors: the Nature CNN and its NFM version.

``NFMNatureCNN`` runs the three convolutions of the Nature DQN encoder (Mnih et al. 2015: 32 8x8/4,
64 4x4/2, 64 3x3/1, ReLU; then 512 units) as a Neural Function Modules network (thesis ch. 10,
Algorithm 2, via :class:`zoo.NFM`): two passes over the conv stack, each conv of the second and third
position preceded by an :class:`zoo.NFMAttention` block that reads, with multi-head top-k attention, every
layer computed so far (all layers of pass 1 and the earlier layers of pass 2: top-down feedback)

    ``h_{i-1} <- h_{i-1} + gamma * sigma(A W_o1) W_o2``,  ``A = top-k-softmax(Q K^T / d_k) V``,

and the last conv's output of the last pass goes to the 512-unit linear layer. The defaults follow the
thesis' Atari encoder (10.4.5): ``K = 2`` passes, top-k 4, ``d_k = d_v = 32``, 4 heads, NFM at four places
(before conv 2 and conv 3 of each pass). Two choices are ours: no BatchNorm inside the blocks (PPO
collects rollouts in eval mode and trains in train mode, and BN statistics would differ between the two),
and pass 2 reads the frames through a plain conv 1 (attending from the 84x84 pixels costs more than the
rest of the encoder; ``attend=(0, 1, 2)`` turns it on). ``gamma`` starts at 0, so an untrained
``NFMNatureCNN`` computes exactly the Nature CNN with the same conv weights.

Both work with ``PPO("CnnPolicy", ...)``, ``RecurrentPPO("CnnLstmPolicy", ...)`` and the recurrent policies
of :mod:`rl.policies` (``policy_kwargs=dict(features_extractor_class=NFMNatureCNN)``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Type

import gymnasium as gym
import torch
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from torch import nn

from zoo.layers.nfm import NFM

__all__ = ["NFMNatureCNN", "MLPEncoder", "CellEncoder", "GridConvEncoder", "nature_convs", "ENCODERS",
           "encoder_policy_kwargs"]


def nature_convs(in_chans: int) -> Tuple[nn.Sequential, ...]:
    """The three conv modules of the Nature CNN: ``(B, C, 84, 84) -> (B, 32, 20, 20) -> (B, 64, 9, 9)
    -> (B, 64, 7, 7)`` (conv + ReLU each)."""
    return (nn.Sequential(nn.Conv2d(in_chans, 32, 8, stride=4), nn.ReLU()),
            nn.Sequential(nn.Conv2d(32, 64, 4, stride=2), nn.ReLU()),
            nn.Sequential(nn.Conv2d(64, 64, 3, stride=1), nn.ReLU()))


class NFMNatureCNN(BaseFeaturesExtractor):
    """The Nature CNN run as an NFM network (see the module docstring), as an sb3 features extractor.

    Args:
        observation_space: a channels-first image ``Box`` ``(C, H, W)`` (sb3 transposes channels-last
            image observations before the policy sees them).
        features_dim: units of the final linear layer (512).
        normalized_image: the observations are already in [0, 1] (sb3's flag; otherwise the policy
            divides uint8 frames by 255 before this module).
        passes: ``K``, passes over the conv stack (thesis Atari: 2).
        attend: indices of the convs preceded by an NFM block (default ``(1, 2)``: four blocks with 2 passes).
        top_k, d_k, d_v, num_heads: of every :class:`zoo.NFMAttention` (thesis Atari: 4, 32, 32, 4).
        batch_norm: BatchNorm inside the blocks (default off for RL, see the module docstring).
        share_modules: one set of conv weights for all passes (default: per-pass copies, as the thesis).
        share_kv: project each stored layer to keys/values once for all blocks (default: per block, as the
            thesis; ``True`` is cheaper, see :class:`zoo.NFM`).

    Shapes: ``(B, C, H, W)`` float -> ``(B, features_dim)``.
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 512, normalized_image: bool = False,
                 passes: int = 2, attend: Sequence[int] = (1, 2), top_k: Optional[int] = 4, d_k: int = 32,
                 d_v: int = 32, num_heads: int = 4, batch_norm: bool = False, share_modules: bool = False,
                 share_kv: bool = False) -> None:
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(f"NFMNatureCNN needs an image Box observation space (C, H, W), got {observation_space}")
        if not is_image_space(observation_space, check_channels=False, normalized_image=normalized_image):
            raise ValueError(f"NFMNatureCNN needs an image observation space (uint8 in [0, 255] unless "
                             f"normalized_image=True), got {observation_space}; see sb3's NatureCNN for the same check")
        super().__init__(observation_space, features_dim)
        in_chans = observation_space.shape[0]
        self.nfm = NFM(nature_convs(in_chans), [32, 64, 64], in_chans, passes=passes, attend=attend,
                       share_modules=share_modules, share_kv=share_kv, d_k=d_k, d_v=d_v, num_heads=num_heads, top_k=top_k,
                       batch_norm=batch_norm)
        with torch.no_grad():
            n_flatten = self.nfm(torch.as_tensor(observation_space.sample()[None]).float()).flatten(1).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nfm(observations).flatten(1))


class MLPEncoder(BaseFeaturesExtractor):
    """Flatten, then one ReLU layer: ``(B, *shape) -> (B, features_dim)``; for vector observations such as
    :class:`rl.gridworld.OneHotView`'s (the encoder the recurrent core reads, shared by every core)."""

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 128) -> None:
        super().__init__(observation_space, features_dim)
        n_in = int(torch.tensor(observation_space.shape).prod())
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n_in, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.net(observations.float())


class CellEncoder(BaseFeaturesExtractor):
    """One embedding per cell of a grid view, for cores that read a *set* of inputs (RIM input attention).

    ``(B, N * C)`` (``N`` cells of ``C`` features each, cell-major, as :class:`rl.gridworld.OneHotView`
    lays them out) -> ``(B, N * cell_dim)``: cell ``i`` becomes ``ReLU(W x_i + p_i)`` with ``W`` shared by
    all cells and ``p_i`` a learned embedding of the cell's position in the view. ``rows = N`` tells
    :class:`rl.policies.RecurrentCorePolicy` to hand a RIM core the ``N`` embeddings as ``N`` input rows,
    so its input attention (thesis 8.2, eq. 8.1: each unit attends over ``[null; x_1 .. x_N]``) can pick
    the cells it reads; an LSTM or GRU core reads the same embeddings concatenated (one memory flow).

    Args:
        observation_space: a flat ``Box`` of ``cells * C`` features.
        cells: ``N`` (default: a square view of 7 x 7, MiniGrid's ``agent_view_size``).
        cell_dim: features per cell embedding.
    """

    def __init__(self, observation_space: gym.spaces.Box, cells: int = 49, cell_dim: int = 16) -> None:
        n_in = int(torch.tensor(observation_space.shape).prod())
        if cells < 1 or cell_dim < 1:
            raise ValueError(f"cells and cell_dim must be positive, got cells={cells}, cell_dim={cell_dim}")
        if n_in % cells:
            raise ValueError(f"CellEncoder: an observation of {n_in} features is not {cells} cells of equal size")
        super().__init__(observation_space, cells * cell_dim)
        self.rows, self.cell_features = cells, n_in // cells
        self.embed = nn.Linear(self.cell_features, cell_dim)
        self.position = nn.Parameter(torch.zeros(cells, cell_dim))
        nn.init.normal_(self.position, std=0.1)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        x = observations.float().reshape(observations.shape[0], self.rows, self.cell_features)   # (B, N, C)
        return torch.relu(self.embed(x) + self.position).flatten(1)                               # (B, N * E)


class GridConvEncoder(BaseFeaturesExtractor):
    """The convolutions of the MiniGrid / BabyAI reference agents (rl-starter-files' ``ACModel``) over a
    grid view of raw (object, colour, state) indices (:class:`rl.gridworld.IndexView`):

        ``(B, 3, V, V)`` -> conv 16 2x2, ReLU, max-pool 2x2 -> conv 32 2x2, ReLU -> conv 64 2x2, ReLU -> flatten

    ``(B, 64 * ((V - 1) // 2 - 2) ** 2)``: 64 features for MiniGrid's 7x7 view. The indices are fed as
    numbers, unscaled, as the reference does, so a colour never seen in training is a new *value* of the
    colour channel rather than a new input unit (:class:`rl.gridworld.OneHotView`). Views narrower than
    7 leave nothing after the third conv (``ValueError``)."""

    def __init__(self, observation_space: gym.spaces.Box) -> None:
        shape = observation_space.shape
        if len(shape) != 3 or shape[0] != 3 or min(shape[1:]) < 7:
            raise ValueError(f"GridConvEncoder needs a (3, V, V) view of indices with V >= 7, got {shape}")
        net = nn.Sequential(nn.Conv2d(3, 16, 2), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 2), nn.ReLU(), nn.Conv2d(32, 64, 2), nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            features = net(torch.zeros(1, *shape)).shape[1]
        super().__init__(observation_space, features)
        self.net = net

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.net(observations.float())


ENCODERS: Dict[str, Type[BaseFeaturesExtractor]] = {"nature": NatureCNN, "nfm": NFMNatureCNN}


def encoder_policy_kwargs(name: str, **kwargs: Any) -> Dict[str, Any]:
    """The ``policy_kwargs`` entries that select encoder ``name`` (``"nature"`` or ``"nfm"``); ``kwargs``
    go to the extractor (e.g. ``top_k=5``)."""
    if name not in ENCODERS:
        raise ValueError(f"encoder={name!r} is not supported; allowed values: {', '.join(ENCODERS)}")
    return dict(features_extractor_class=ENCODERS[name], features_extractor_kwargs=dict(kwargs))
