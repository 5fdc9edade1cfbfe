"""Grouped (per-unit) linear maps: one batched matmul for all units, never a Python loop over units."""
from __future__ import annotations

import math

import torch
from torch import nn


class GroupedLinear(nn.Module):
    """``U`` independent linear maps applied in a single batched matmul.

    Equivalent to a block-diagonal ``nn.Linear`` whose blocks are the units: unit ``u`` only sees its own
    input slice and only owns its own weights (``weight[u]``), so units never share parameters.

    Shapes:
        forward: ``(..., U, in_features)`` -> ``(..., U, out_features)``
        unit_major: ``(U, B, in_features)`` -> ``(U, B, out_features)`` (no transposes; RIMs use this)
        weight: ``(U, in_features, out_features)``, bias: ``(U, out_features)``
    """

    def __init__(self, num_units: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num_units, self.in_features, self.out_features = num_units, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_units, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_units, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same law as nn.Linear, per unit: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def unit_major(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path: ``x`` laid out ``(U, B, in)`` -> ``(U, B, out)`` in one ``baddbmm``."""
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-2]
        # (B, U, i) -> (U, B, i) so that torch.bmm/baddbmm runs all units at once.
        xu = x.reshape(-1, self.num_units, self.in_features).transpose(0, 1)
        return self.unit_major(xu).transpose(0, 1).reshape(*lead, self.num_units, self.out_features)

    def extra_repr(self) -> str:
        return (f"num_units={self.num_units}, in_features={self.in_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")
