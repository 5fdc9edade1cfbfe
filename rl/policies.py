"""RIMs (or an LSTM / GRU) as the recurrent core of sb3-contrib's ``RecurrentPPO``, with no other change to PPO.

The RIMs paper (thesis 8.4) swaps PPO's LSTM for RIMs and keeps every PPO hyperparameter; these policies
do the same in sb3-contrib:

    from sb3_contrib import RecurrentPPO
    from rl import RIMActorCriticPolicy
    model = RecurrentPPO(RIMActorCriticPolicy, "CartPole-v1", policy_kwargs=dict(num_units=6, k_active=4))
    model.learn(50_000); model.save("agent.zip"); RecurrentPPO.load("agent.zip")

* :class:`RecurrentCorePolicy`: sb3-contrib's ``RecurrentActorCriticPolicy`` with ``core="rim" | "lstm" |
  "gru"`` (see :mod:`rl.cores`); ``lstm_actor`` / ``lstm_critic`` hold the cores, so everything in
  RecurrentPPO that reads them (``num_layers``, ``hidden_size``, the ``(h, c)`` states of shape
  ``(num_layers, n_envs, hidden_size)`` in the rollout buffer) works unchanged.
* :class:`RIMActorCriticPolicy` (vector observations, MLP features), :class:`RIMActorCriticCnnPolicy`
  (image observations, Nature CNN features: ``CnnLstmPolicy``'s equivalent) and
  :class:`RIMMultiInputActorCriticPolicy` (``Dict`` observations, sb3's ``CombinedExtractor``:
  ``MultiInputLstmPolicy``'s equivalent). Any sb3 features extractor works through
  ``features_extractor_class`` (e.g. :class:`rl.encoders.NFMNatureCNN`).

Action spaces: everything RecurrentPPO takes (``Discrete``, ``MultiDiscrete``, ``Box``, ``MultiBinary``).
``MultiBinary`` actions crash inside sb3-contrib's own policies (sb3 2.9 stores them as int8 and the
Bernoulli log-probability refuses int8); these policies cast them to float first.

Speed. sb3-contrib's ``_process_sequence`` steps its LSTM one time step at a time in Python whenever a
sequence holds an episode start, which is nearly every training minibatch. Here the core gets the whole
sequence and its episode-start mask in one call (:func:`rl.cores.run_core`); since the rollout buffer cuts
sequences at episode starts, the only resets in training are at a sequence's first step, and the LSTM/GRU
cores run as one ATen call. Hidden states reset exactly at episode starts, as the stock LSTM's do. The RIM
core still loops over time inside :class:`zoo.RIM`, on its one-row fast path (features are one vector per
step): at hidden 252 it trains at about 0.9x the stock ``MlpLstmPolicy``'s steps/s eager and 1.3x with
``core_kwargs=dict(compile=True, compile_chunk=8)`` (one thread, an idle CPU; docs/rl.md).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Type, cast

import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from .cores import CORES, make_core, run_core

__all__ = ["RecurrentCorePolicy", "RIMActorCriticPolicy", "RIMActorCriticCnnPolicy", "RIMMultiInputActorCriticPolicy",
           "DEFAULT_HIDDEN"]

DEFAULT_HIDDEN = 256            # sb3-contrib's lstm_hidden_size default


class RecurrentCorePolicy(RecurrentActorCriticPolicy):
    """sb3-contrib's recurrent actor-critic policy with a choice of recurrent core.

    Args (besides every ``RecurrentActorCriticPolicy`` argument: ``net_arch``, ``features_extractor_class``,
    ``n_lstm_layers``, ``shared_lstm``, ``enable_critic_lstm``, ...):
        core: ``"rim"`` (:class:`zoo.RIM`), ``"lstm"`` or ``"gru"`` (masked ``nn.LSTM`` / ``nn.GRU``).
        lstm_hidden_size: the core's total state size (RIM: ``num_units * unit_size``). ``None`` (default):
            256 (sb3-contrib's default) for LSTM/GRU, the largest multiple of ``num_units`` not above 256 for
            RIM (252 for 6 units).
        num_units, k_active: RIM units and active units per step (thesis: 6 and 4; RL section 8.4 also 5).
        features_extractor_class: default ``CombinedExtractor`` for ``Dict`` observations, else
            ``FlattenExtractor`` (sb3's defaults for its multi-input and MLP policies).
        input_rows: give a RIM core each step's features as this many input rows (a set it attends over,
            thesis eq. 8.1) instead of one vector: ``features_dim`` must be a multiple. ``None`` (default): the
            features extractor's ``rows`` attribute if it has one (:class:`rl.encoders.CellEncoder`), else 1.
            LSTM and GRU cores always read the features as one vector.
        core_kwargs: more :class:`zoo.RIM` keywords (``cell="gru"``, ``comm_topk=2``, ``official=True``,
            ...) or ``nn.LSTM`` / ``nn.GRU`` keywords. ``lstm_kwargs`` (sb3's name) is merged into it.

    The actor and critic cores are ``self.lstm_actor`` and ``self.lstm_critic`` (sb3's names).
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule,
                 *args: Any, core: str = "rim", lstm_hidden_size: Optional[int] = None, num_units: int = 6,
                 k_active: int = 4, input_rows: Optional[int] = None, core_kwargs: Optional[Dict[str, Any]] = None,
                 lstm_kwargs: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        if core not in CORES:
            raise ValueError(f"core={core!r} is not supported; allowed values: {', '.join(map(repr, CORES))}")
        extractor = kwargs.get("features_extractor_class")
        if isinstance(observation_space, spaces.Dict):
            if extractor is None:
                kwargs["features_extractor_class"] = CombinedExtractor
            elif extractor in (FlattenExtractor, NatureCNN):
                raise ValueError(f"{extractor.__name__} cannot read Dict observations ({list(observation_space.spaces)}); "
                                 f"use RIMMultiInputActorCriticPolicy or RecurrentCorePolicy (CombinedExtractor, "
                                 f"MultiInputLstmPolicy's equivalent) or a Dict-aware features_extractor_class")
        elif extractor is None:
            kwargs["features_extractor_class"] = FlattenExtractor
        if core != "rim" and (num_units, k_active) != (6, 4):
            raise ValueError(f"num_units / k_active are RIM options; core={core!r} takes neither")
        if lstm_hidden_size is None:
            lstm_hidden_size = DEFAULT_HIDDEN if core != "rim" else num_units * max(1, DEFAULT_HIDDEN // num_units)
        if input_rows is not None and (isinstance(input_rows, bool) or not isinstance(input_rows, int) or input_rows < 1):
            raise ValueError(f"input_rows must be a positive int or None, got {input_rows!r}")
        if core != "rim" and input_rows not in (None, 1):
            raise ValueError(f"input_rows is a RIM option (a set of input rows); core={core!r} reads one vector")
        self.core_name = core
        self.core_options = dict(num_units=num_units, k_active=k_active, **(lstm_kwargs or {}), **(core_kwargs or {}))
        if core != "rim":
            self.core_options = {k: v for k, v in self.core_options.items() if k not in ("num_units", "k_active")}
        # The parent builds nn.LSTM cores and the optimizer; ours replace the cores, then the optimizer is rebuilt.
        # (mypy: *args could reach lstm_hidden_size's position; sb3 passes the policy arguments by keyword)
        super().__init__(observation_space, action_space, lr_schedule, *args,  # type: ignore[misc]
                         lstm_hidden_size=lstm_hidden_size, **kwargs)
        layers = self.lstm_actor.num_layers
        rows = input_rows if input_rows is not None else int(getattr(self.features_extractor, "rows", 1))
        self.input_rows = rows if core == "rim" else 1
        if self.features_dim % self.input_rows:
            raise ValueError(f"input_rows={self.input_rows} does not divide the features extractor's "
                             f"features_dim={self.features_dim}")
        # the cores stand in for the parent's nn.LSTM attributes (same call interface, see rl.cores)
        self.lstm_actor = self._make_core(layers, lstm_hidden_size)  # type: ignore[assignment]
        if self.lstm_critic is not None:
            self.lstm_critic = self._make_core(layers, lstm_hidden_size)  # type: ignore[assignment]
        # a concrete optimizer class (Adam by default) takes lr; sb3 makes the same call with the same ignore
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1),  # type: ignore[call-arg]
                                              **self.optimizer_kwargs)

    # RecurrentActorCriticPolicy's signature, which adds lstm_states to ActorCriticPolicy's
    def evaluate_actions(self, obs, actions: torch.Tensor, lstm_states,  # type: ignore[override]
                         episode_starts: torch.Tensor):
        """sb3-contrib's, with ``MultiBinary`` actions cast to float (the rollout buffer stores them as int8,
        which the Bernoulli log-probability refuses)."""
        if isinstance(self.action_space, spaces.MultiBinary):
            actions = actions.float()
        return super().evaluate_actions(obs, actions, lstm_states, episode_starts)

    def _make_core(self, num_layers: int, hidden_size: int) -> nn.Module:
        return make_core(self.core_name, self.features_dim // self.input_rows, hidden_size, num_layers,
                         **self.core_options)

    # sb3-contrib annotates the new states as one tensor; they are the (h, c) pair, as here
    def _process_sequence(self, features: torch.Tensor,  # type: ignore[override]
                          lstm_states: Tuple[torch.Tensor, torch.Tensor], episode_starts: torch.Tensor,
                          lstm: nn.Module) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """The whole ``(n_seq * T, F)`` padded batch through the core in one call (sb3-contrib loops over T).

        features ``(n_seq * T, F)`` (sequence-major, as sb3 lays it out), lstm_states each ``(L, n_seq, H)``,
        episode_starts ``(n_seq * T,)`` -> output ``(n_seq * T, H)``, new states each ``(L, n_seq, H)``.
        With ``input_rows = N > 1`` the RIM core gets ``(T, n_seq, N, F / N)``.
        """
        n_seq = lstm_states[0].shape[1]
        input_size = cast(int, lstm.input_size)                                    # every core has one
        rows = self.input_rows
        x = features.reshape(n_seq, -1, rows, input_size).transpose(0, 1)         # (T, n_seq, N, F / N)
        x = x.squeeze(2) if rows == 1 else x
        starts = episode_starts.reshape(n_seq, -1).transpose(0, 1)                # (T, n_seq)
        out, states = run_core(lstm, x, lstm_states, starts)
        return out.transpose(0, 1).flatten(0, 1), states


class RIMActorCriticPolicy(RecurrentCorePolicy):
    """:class:`RecurrentCorePolicy` with a RIM core and sb3's MLP features (``MlpLstmPolicy``'s equivalent).
    ``Dict`` observations: :class:`RIMMultiInputActorCriticPolicy`."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule,
                 *args: Any, features_extractor_class: Type[BaseFeaturesExtractor] = FlattenExtractor,
                 core: str = "rim", **kwargs: Any) -> None:
        super().__init__(observation_space, action_space, lr_schedule, *args, core=core,
                         features_extractor_class=features_extractor_class, **kwargs)


class RIMActorCriticCnnPolicy(RecurrentCorePolicy):
    """:class:`RecurrentCorePolicy` with a RIM core and the Nature CNN features (``CnnLstmPolicy``'s equivalent)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule,
                 *args: Any, features_extractor_class: Type[BaseFeaturesExtractor] = NatureCNN,
                 core: str = "rim", **kwargs: Any) -> None:
        super().__init__(observation_space, action_space, lr_schedule, *args, core=core,
                         features_extractor_class=features_extractor_class, **kwargs)


class RIMMultiInputActorCriticPolicy(RecurrentCorePolicy):
    """:class:`RecurrentCorePolicy` with a RIM core for ``Dict`` observations: sb3's ``CombinedExtractor``
    (images through a Nature CNN, vectors flattened, concatenated), ``MultiInputLstmPolicy``'s equivalent."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule,
                 *args: Any, features_extractor_class: Type[BaseFeaturesExtractor] = CombinedExtractor,
                 core: str = "rim", **kwargs: Any) -> None:
        super().__init__(observation_space, action_space, lr_schedule, *args, core=core,
                         features_extractor_class=features_extractor_class, **kwargs)
