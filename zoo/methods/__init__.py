"""Training methods picked by name: ``create_method("manifold_mixup", alpha=2.0)``; see ``list_methods()``.

Importing this package registers: ``erm``, ``input_mixup``, ``manifold_mixup``, ``ict``.
"""
from .base import ERM, Method, MethodStepFn, create_method, get_method_class, list_methods, register_method
from .mixup import InputMixup, ManifoldMixup  # noqa: F401  (registers input_mixup, manifold_mixup)
from .ict import ICT  # noqa: F401  (registers ict)
from .irl import IRL  # noqa: F401  (registers irl)
from .dai import DAI  # noqa: F401  (registers dai and the 'invariance' evaluation)
from .lipschitz import Lipschitz  # noqa: F401  (registers lipschitz and the 'lipschitz' evaluation)
from .semantic_noise import SemanticNoise  # noqa: F401  (registers semantic_noise, snm_random, snm_base)

__all__ = ["Method", "ERM", "MethodStepFn", "register_method", "create_method", "list_methods",
           "get_method_class", "ManifoldMixup", "InputMixup", "ICT"]
