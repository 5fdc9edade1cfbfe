"""RL agents: RIMs / LSTM / GRU cores for sb3-contrib's RecurrentPPO (:mod:`rl.policies`), partially
observable control tasks (:mod:`rl.pomdp`, registered with gymnasium on import), object picking among seen
and novel distractors (:mod:`rl.gridworld`, :mod:`rl.distractors`), Atari envs, encoders and the train /
evaluate commands (:mod:`rl.envs`, :mod:`rl.encoders`, :mod:`rl.train`, :mod:`rl.evaluate`).

Needs the RL extra (``pip install "modular-zoo[rl]"``): importing ``rl`` without it raises an ``ImportError``
saying so in one line.
"""
try:
    import gymnasium  # noqa: F401
    import stable_baselines3  # noqa: F401
    import sb3_contrib  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess by tests/test_rl_cli.py
    raise ImportError(f"rl needs the RL extra, which is not installed (no module {(e.name or '?').split('.')[0]!r}): "
                      f"pip install \"modular-zoo[rl]\" (from a checkout: pip install -e \".[rl]\")", name="rl") from None

from .policies import (RecurrentCorePolicy, RIMActorCriticCnnPolicy, RIMActorCriticPolicy,  # noqa: E402
                       RIMMultiInputActorCriticPolicy)
from .pomdp import POMDP_IDS, MaskObservation  # noqa: E402

__all__ = ["RecurrentCorePolicy", "RIMActorCriticPolicy", "RIMActorCriticCnnPolicy", "RIMMultiInputActorCriticPolicy",
           "MaskObservation", "POMDP_IDS"]
