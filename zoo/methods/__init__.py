"""Training methods picked by name: ``create_method("manifold_mixup", alpha=2.0)``; see ``list_methods()``.

Importing this package registers: ``erm``, ``input_mixup``, ``manifold_mixup``, ``ict``, ``irl``, ``dai``,
``lipschitz``, ``semantic_noise``, ``snm_random``, ``snm_base``. Harnesses check user hyperparameters with
``resolve_method_kwargs(kwargs, methods)`` (shared or per-method JSON) before any work.
"""
from .base import (ERM, Method, MethodStepFn, check_hparams, create_method, get_method_class, list_methods,
                   method_hparam_names, register_method, resolve_method_kwargs)
from .mixup import InputMixup, ManifoldMixup  # noqa: F401  (registers input_mixup, manifold_mixup)
from .ict import ICT  # noqa: F401  (registers ict)
from .irl import IRL  # noqa: F401  (registers irl)
from .dai import DAI  # noqa: F401  (registers dai and the 'invariance' evaluation)
from .lipschitz import Lipschitz  # noqa: F401  (registers lipschitz and the 'lipschitz' evaluation)
from .semantic_noise import SemanticNoise  # noqa: F401  (registers semantic_noise, snm_random, snm_base)

__all__ = ["Method", "ERM", "MethodStepFn", "register_method", "create_method", "list_methods",
           "get_method_class", "method_hparam_names", "check_hparams", "resolve_method_kwargs",
           "ManifoldMixup", "InputMixup", "ICT", "IRL", "DAI", "Lipschitz", "SemanticNoise"]
