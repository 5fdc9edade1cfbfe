"""Modular Zoo: modular architectures for systematic generalization (RIMs, NFM, mixup and invariance).

``import zoo`` registers every zoo model with timm, so ``timm.create_model(name)`` and
``zoo.create_model(name)`` both build them.
"""
from ._registry import create_model, is_zoo_model, list_models
from .layers import NFM, NFMAttention, RIM, GroupedLinear, RIMCell, RIMOptions, RIMStepInfo
from .models import SequenceModel

__version__ = "0.1.0"

__all__ = [
    "create_model", "list_models", "is_zoo_model",
    "NFM", "NFMAttention", "RIM", "RIMCell", "RIMOptions", "RIMStepInfo", "GroupedLinear", "SequenceModel",
]
