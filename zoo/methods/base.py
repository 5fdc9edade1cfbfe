"""The training-method interface: a :class:`Method` is a ``step_fn`` (plus callbacks and state) for
:func:`zoo.engine.fit`, and a registry so harnesses pick methods by name.

    method = create_method("manifold_mixup", alpha=2.0)
    method.setup(model, total_steps=1000)
    fit(model, optimizer, batches, **method.fit_kwargs(), steps=1000)

Harnesses that take hyperparameters from users check them first: :func:`create_method` raises a one-line
``ValueError`` naming the method, the unknown name and the accepted ones, and :func:`resolve_method_kwargs`
splits a ``--method-kwargs`` object into per-method hyperparameters (shared or keyed by method name).

Batches are dicts ``{"x": images, "y": labels}``, plus ``"x_u"`` (unlabeled images) when the method
``needs_unlabeled``.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Method", "ERM", "register_method", "create_method", "list_methods", "get_method_class",
           "MethodStepFn", "method_hparam_names", "check_hparams", "resolve_method_kwargs"]

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


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_method_class(name: str) -> Type["Method"]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}{_did_you_mean(str(name), list_methods())}; "
                         f"registered methods: {', '.join(list_methods())}")
    return _METHODS[name]


def method_hparam_names(name: str) -> Optional[List[str]]:
    """The hyperparameters method ``name`` accepts (its ``__init__`` keywords), or ``None`` when its
    ``__init__`` takes arbitrary ``**kwargs`` (a user class that checks them itself)."""
    cls = get_method_class(name)
    if cls.__init__ is Method.__init__:
        return []
    names = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.name != "self" and p.kind is not p.VAR_POSITIONAL:
            names.append(p.name)
    return names


def check_hparams(name: str, hparams: Mapping[str, Any]) -> None:
    """Raise a one-line ``ValueError`` if ``hparams`` holds a name method ``name`` does not accept."""
    accepted = method_hparam_names(name)
    if accepted is None:
        return
    unknown = [k for k in hparams if k not in accepted]
    if not unknown:
        return
    if not accepted:
        raise ValueError(f"method {name!r} takes no hyperparameters, got {', '.join(map(repr, unknown))}")
    bad = unknown[0]
    raise ValueError(f"method {name!r} has no hyperparameter {bad!r}{_did_you_mean(bad, accepted)}; "
                     f"accepted: {', '.join(accepted)}")


def create_method(name: str, **hparams: Any) -> "Method":
    """Build the method registered as ``name`` with its hyperparameters.

    Raises:
        ValueError: an unknown method, or a hyperparameter the method does not take (one line naming the
            method, the unknown name and the accepted ones), or a value its ``__init__`` rejects.
    """
    check_hparams(name, hparams)
    return get_method_class(name)(**hparams)


def resolve_method_kwargs(kwargs: Mapping[str, Any], methods: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Per-method hyperparameters from one ``--method-kwargs`` object, checked before any work.

    Two forms: **shared**, ``{"alpha": 2.0}`` (every method in ``methods`` gets it), or **per method**,
    ``{"manifold_mixup": {"alpha": 2.0}, "ict": {"w_max": 10}}`` (keys are method names, values objects;
    methods not named get ``{}``).

    Returns:
        ``{method: hparams}`` for every name in ``methods``.

    Raises:
        ValueError (one line): an unknown method; a per-method key that is not a registered method (a typo
        such as ``"manifld_mixup"``); a per-method key for a method not being run; per-method and shared
        keys mixed; a hyperparameter a method does not accept.
    """
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"method kwargs must be an object (a dict), got {type(kwargs).__name__}")
    for m in methods:
        get_method_class(m)
    registered = set(list_methods())
    accepted = set()
    for m in methods:
        accepted.update(method_hparam_names(m) or [])
    per_method = [k for k, v in kwargs.items() if isinstance(v, Mapping) and k not in accepted]
    shared = [k for k in kwargs if k not in per_method]
    for k in per_method:
        if k not in registered:
            raise ValueError(f"method kwargs name {k!r}, which is neither a registered method"
                             f"{_did_you_mean(k, list_methods())} nor a hyperparameter of {', '.join(methods)}; "
                             f"registered methods: {', '.join(list_methods())}")
        if k not in methods:
            raise ValueError(f"method kwargs are given for method {k!r}, which is not being run "
                             f"(methods: {', '.join(methods)})")
    if per_method and shared:
        raise ValueError(f"method kwargs mix per-method entries ({', '.join(map(repr, per_method))}) with shared "
                         f"hyperparameters ({', '.join(map(repr, shared))}); put the shared ones inside each method's entry")
    out = {m: dict(kwargs.get(m, {})) if per_method else dict(kwargs) for m in methods}
    for m, hp in out.items():
        try:
            check_hparams(m, hp)
        except ValueError as e:
            if per_method or len(methods) == 1:
                raise
            raise ValueError(f"{e} (shared method kwargs go to every method; key them by method name to give "
                             f"each its own, e.g. {{{methods[-1]!r}: {{...}}}})") from None
    return out


class Method:
    """A training method = a loss for :func:`zoo.engine.fit` (plain training: cross-entropy, ``erm``).

    Subclasses override :meth:`loss` and, as needed, :meth:`setup` (taps, teachers), :meth:`remove`
    (detach taps after training), :meth:`eval_model` (the network to evaluate),
    :meth:`callbacks` (called as ``cb(step, model)`` after every optimizer step) and
    :meth:`extra_state` (objects with ``state_dict`` saved in checkpoints).

    Attributes:
        name: registry name.
        needs_unlabeled: batches must carry ``"x_u"``.
        total_steps: the run's length in optimizer steps, given to :meth:`setup` (schedules use it;
            ``None`` when the caller did not say).
        hparams: the keyword arguments given to ``__init__``.
    """

    name = "erm"
    needs_unlabeled = False

    def __init__(self, **hparams: Any) -> None:
        if hparams:
            raise ValueError(f"{type(self).__name__} takes no hyperparameters, got {sorted(hparams)}")
        self.hparams: Dict[str, Any] = dict(hparams)
        self.total_steps: Optional[int] = None

    def setup(self, model: nn.Module, total_steps: Optional[int] = None) -> None:
        """Prepare for training ``model`` for ``total_steps`` optimizer steps (attach taps, build teachers);
        called once before :func:`fit`. Subclasses call ``super().setup(model, total_steps)`` first."""
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ValueError(f"total_steps must be a positive integer or None, got {total_steps!r}")
        self.total_steps = total_steps

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
