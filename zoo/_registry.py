"""Thin conveniences over timm's registry: the zoo registers with ``@register_model`` and nothing else."""
from __future__ import annotations

import fnmatch
from typing import List

import timm
from timm.models import model_entrypoint

from . import models as _models  # noqa: F401  (registers the zoo's models)

__all__ = ["create_model", "list_models", "is_zoo_model"]

_PREFIX = __name__.rsplit(".", 1)[0] + ".models."


def _zoo_names() -> List[str]:
    return sorted(name for name in timm.list_models()
                  if getattr(model_entrypoint(name), "__module__", "").startswith(_PREFIX))


def is_zoo_model(name: str) -> bool:
    """True if ``name`` (without a ``.tag``) is registered by this package."""
    return name.split(".")[0] in _zoo_names()


def list_models(filter: str = "*") -> List[str]:
    """Names of the zoo's registered models matching a glob (``zoo.list_models("rim*")``).

    For timm's whole registry (the zoo's models included) use ``timm.list_models``.
    """
    return [n for n in _zoo_names() if fnmatch.fnmatch(n, filter)]


def create_model(name: str, **kwargs):
    """Build a model by registry name; the same as ``timm.create_model(name, **kwargs)`` after ``import zoo``.

    Any timm model name works too. Unknown names raise ``RuntimeError`` listing close zoo names.
    """
    if not timm.is_model(name.split(".")[0]):
        close = [n for n in _zoo_names() if name.split("_")[0] in n] or _zoo_names()
        raise RuntimeError(f"unknown model {name!r}; zoo models: {', '.join(close)} (or any timm model)")
    return timm.create_model(name, **kwargs)
