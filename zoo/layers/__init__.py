"""Layer-level zoo: building blocks to wire into any network."""
from .grouped import GroupedLinear
from .nfm import NFM, NFMAttention, NFMAttentionInfo, NFMTrace, depth_to_space, rescale, space_to_depth, upsample_nearest
from .rim import RIM, RIMCell, RIMOptions, RIMStepInfo

__all__ = ["GroupedLinear", "NFM", "NFMAttention", "NFMAttentionInfo", "NFMTrace", "depth_to_space", "rescale",
           "space_to_depth", "upsample_nearest", "RIM", "RIMCell", "RIMOptions", "RIMStepInfo"]
