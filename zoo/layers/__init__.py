"""Layer-level zoo: building blocks to wire into any network."""
from .grouped import GroupedLinear
from .rim import RIM, RIMCell, RIMOptions, RIMStepInfo

__all__ = ["GroupedLinear", "RIM", "RIMCell", "RIMOptions", "RIMStepInfo"]
