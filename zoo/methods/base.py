"""The training-method interface: a :class:`Method` is a ``step_fn`` (plus callbacks and state) for
:func:`zoo.engine.fit`, and a registry so harnesses pick methods by name.

    method = create_method("manifold_mixup", alpha=2.0)
    method.setup(model)
    fit(model, optimizer, batches, **method.fit_kwargs(), steps=1000)

Batches are dicts ``{"x": images, "y": labels}``, plus ``"x_u"`` (unlabeled images) when the method
``needs_unlabeled``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Method", "ERM", "register_method", "create_method", "list_methods", "get_method_class",
           "MethodStepFn"]

_METHODS: Dict[str, Type["Method"]] = {}


def register_method(name: str) -> Callable[[Type["Method"]], Type["Method"]]:
    """Class decorator: register a :class:`Method` subclass under ``name`` (sets ``cls.name``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")

    def deco(cls: Type["Method"]) -> Type["Method"]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise ValueError(f"register_method({name!r}) decorates Method subclasses, got {cls!r}")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name].__module__}")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def list_methods() -> List[str]:
    """Names of every registered method, sorted."""
    return sorted(_METHODS)


def get_method_class(name: str) -> Type["Method"]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(list_methods())}")
    return _METHODS[name]


def create_method(name: str, **hparams: Any) -> "Method":
    """Build the method registered as ``name`` with its hyperparameters (``ValueError`` if unknown)."""
    return get_method_class(name)(**hparams)


class Method:
    """A training method = a loss for :func:`zoo.engine.fit` (plain training: cross-entropy, ``erm``).

    Subclasses override :meth:`loss` and, as needed, :meth:`setup` (taps, teachers), :meth:`remove`
    (detach taps after training), :meth:`eval_model` (the network to evaluate),
    :meth:`callbacks` (called as ``cb(step, model)`` after every optimizer step) and
    :meth:`extra_state` (objects with ``state_dict`` saved in checkpoints).

    Attributes:
        name: registry name.
        needs_unlabeled: batches must carry ``"x_u"``.
        total_steps: the run's length, set by the harness before :meth:`setup` (schedules use it).
        hparams: the keyword arguments given to ``__init__``.
    """

    name = "erm"
    needs_unlabeled = False

    def __init__(self, **hparams: Any) -> None:
        if hparams:
            raise ValueError(f"{type(self).__name__} takes no hyperparameters, got {sorted(hparams)}")
        self.hparams: Dict[str, Any] = dict(hparams)
        self.total_steps: Optional[int] = None

    def setup(self, model: nn.Module) -> None:
        """Prepare for training ``model`` (attach taps, build teachers); called once before :func:`fit`."""

    def loss(self, model: nn.Module, batch: dict, step: int) -> Tuple[Tensor, Dict[str, float]]:
        """``(loss, metrics)`` for one batch at optimizer step ``step`` (0-based)."""
        logits = model(batch["x"])
        loss = F.cross_entropy(logits, batch["y"])
        return loss, {"acc": float((logits.argmax(-1) == batch["y"]).float().mean())}

    def callbacks(self) -> tuple:
        return ()

    def extra_state(self) -> dict:
        return {}

    def remove(self) -> None:
        """Undo :meth:`setup`'s hooks (taps) on the model; the harness calls it after training."""

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The network to evaluate after training (ICT: the mean teacher); default ``model`` itself."""
        return model

    # -- glue for zoo.engine.fit ------------------------------------------------------------------------
    def step_fn(self, start: int = 0) -> "MethodStepFn":
        """A ``step_fn(model, batch)`` for :func:`fit` that passes the step number to :meth:`loss`."""
        return MethodStepFn(self, start)

    def fit_kwargs(self) -> dict:
        """``step_fn``, ``callbacks`` and ``extra_state`` for ``fit(...)`` (the step counter is saved too,
        so resumed runs continue their schedules)."""
        fn = self.step_fn()
        return {"step_fn": fn, "callbacks": tuple(self.callbacks()),
                "extra_state": {**self.extra_state(), "method_step": fn}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


class MethodStepFn:
    """Counts steps for :meth:`Method.loss`; has ``state_dict`` so checkpoints resume the count."""

    def __init__(self, method: Method, start: int = 0) -> None:
        self.method, self.step = method, int(start)

    def __call__(self, model: nn.Module, batch: dict) -> Tuple[Tensor, Dict[str, float]]:
        out = self.method.loss(model, batch, self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


ERM = register_method("erm")(Method)
