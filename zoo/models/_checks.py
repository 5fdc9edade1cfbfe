"""Input checks and defaults inside ``forward`` that stay one call under FX (timm's notrace functions) and are
left to Python by TorchScript (``torch.jit.ignore``).

No ``from __future__ import annotations`` here: TorchScript reads the signatures of ignored functions as real
types.
"""
from typing import List, Optional

import torch
from timm.models import register_notrace_function

__all__ = ["check_size", "check_shape", "zeros_if_none"]


@register_notrace_function
@torch.jit.ignore
def check_size(x: torch.Tensor, dim: int, want: int, message: str) -> None:
    """One-line error ``message.format(got=...)`` unless ``x.shape[dim] == want``."""
    if x.shape[dim] != want:
        raise ValueError(message.format(got=x.shape[dim]))


@register_notrace_function
@torch.jit.ignore
def check_shape(x: torch.Tensor, want: List[int]) -> None:
    """One-line error unless ``x`` is ``(B, *want)``."""
    if list(x.shape[1:]) != list(want):
        raise ValueError(f"expected inputs (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")


@register_notrace_function
@torch.jit.ignore
def zeros_if_none(cond: Optional[torch.Tensor], like: torch.Tensor, dim: int) -> torch.Tensor:
    """An optional conditioning input (a question): ``cond``, or zeros ``(B, dim)`` like ``like`` if ``None``."""
    return like.new_zeros(like.shape[0], dim) if cond is None else cond
