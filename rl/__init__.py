"""RL agents: RIMs / LSTM / GRU cores for sb3-contrib's RecurrentPPO (:mod:`rl.policies`), partially
observable control tasks (:mod:`rl.pomdp`, registered with gymnasium on import), Atari envs, encoders and
the train / evaluate commands (:mod:`rl.envs`, :mod:`rl.encoders`, :mod:`rl.train`, :mod:`rl.evaluate`)."""
from .policies import RecurrentCorePolicy, RIMActorCriticCnnPolicy, RIMActorCriticPolicy
from .pomdp import POMDP_IDS, MaskObservation

__all__ = ["RecurrentCorePolicy", "RIMActorCriticPolicy", "RIMActorCriticCnnPolicy", "MaskObservation", "POMDP_IDS"]
