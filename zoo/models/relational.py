"""Relation Network for Sort-of-CLEVR (Santoro et al. 2017, "A simple neural network module for relational
reasoning"; the strong baseline of thesis Table 7).

The image goes through the same conv stem as the CNN+MLP baseline (:class:`zoo.models.SortOfClevrCNN`:
4 x (3x3 stride-2 conv, 24 channels, ReLU, BN), 75x75 -> 24x5x5). Each of the ``5 x 5`` cells is an
*object* ``o_i`` (its 24 features and its cell coordinates, 26 numbers). The answer is (Santoro et al.,
eq. 1, with the question ``q`` as condition)

    RN(O, q) = f_phi( sum_{i, j} g_theta(o_i, o_j, q) )

over all ``25 x 25`` ordered pairs (``i = j`` included, as in the reference code); ``g_theta`` is a 4-layer
MLP (256 units, ReLU), ``f_phi`` 256 -> 256 -> dropout -> ``num_classes`` (ReLU between).

Vectorized: ``g_theta``'s first layer is linear in the concatenation ``[o_i; o_j; q]``, so it is computed as
``W_i o_i + W_j o_j + W_q q + b`` from per-object products broadcast over the pair grid (the same function
and the same ``Linear(2 * 26 + 11, 256)`` weights as concatenating, without building the ``25 x 25``
concatenated inputs).

Differences from the reference implementation (``kimhc6028/relational-networks``): dropout is off at test
time (the reference calls ``F.dropout`` with ``training=True`` always); the coordinates are the cell's
(row, column) on an even grid in ``[-1, 1]`` (the reference's ``(i / 5 - 2) / 2`` uses true division in
Python 3, so its "row" coordinate is not the row).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .small_cnns import CLEVR_POOLS, _conv_bn
from ._checks import check_size, zeros_if_none
from .staged import StagedNet, build_zoo_model, check_head_args, check_pool, split_nfm_kwargs

__all__ = ["RelationNetwork"]


class RelationNetwork(StagedNet):
    """Conv stem -> objects (cells + coordinates) -> ``f_phi(sum_{i,j} g_theta(o_i, o_j, q))``.

    Args:
        num_classes, in_chans: answers (10) and image channels (3).
        question_dim: length of the question vector (11; 18 for the ternary version; 0: no question).
        width, depth, img_size: the conv stem (24 channels, 4 stride-2 convs, 75x75 input -> 5x5 cells).
        g_hidden, g_layers: ``g_theta``'s width (256) and depth (4).
        f_hidden: ``f_phi``'s width (256). drop_rate: dropout before the last linear (train only).
        nfm: ``None`` or :class:`zoo.NFM` options for the stem (as in every :class:`StagedNet`).
        global_pool: ``"flatten"`` (the relation head) or ``""`` (with ``num_classes=0``: the conv features).

    Shapes: ``x (B, in_chans, img_size, img_size)``, ``question (B, question_dim)`` -> ``(B, num_classes)``;
    ``forward_features(x)`` ``(B, width, s, s)``; ``forward_head(..., pre_logits=True)`` ``(B, f_hidden)``.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, question_dim: int = 11, width: int = 24,
                 depth: int = 4, img_size: int = 75, g_hidden: int = 256, g_layers: int = 4, f_hidden: int = 256,
                 drop_rate: float = 0.0, nfm: Optional[Dict[str, Any]] = None, global_pool: str = "flatten") -> None:
        check_head_args(num_classes, in_chans)
        check_pool(num_classes, global_pool, CLEVR_POOLS)
        if g_layers < 1:
            raise ValueError(f"g_layers must be >= 1, got {g_layers}")
        body, cin, side = [], in_chans, img_size
        for i in range(depth):
            side = (side - 1) // 2 + 1
            body.append((f"conv{i + 1}", _conv_bn(cin, width, 2, "relu_bn"), width, 2 ** (i + 1)))
            cin = width
        super().__init__(body, in_chans, num_classes, nn.Identity(), width, drop_rate=drop_rate, nfm=nfm,
                         global_pool=None)
        self.question_dim, self.side, self.f_hidden = question_dim, side, f_hidden
        self.head_hidden_size, self.global_pool = f_hidden, global_pool
        self.obj_dim = width + 2
        axis = torch.linspace(-1.0, 1.0, side) if side > 1 else torch.zeros(1)
        coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(side * side, 2)
        self.register_buffer("coords", coords, persistent=False)                # (s*s, 2): (row, col)
        self.g_in = nn.Linear(2 * self.obj_dim + question_dim, g_hidden)
        self.g = nn.Sequential(*[m for _ in range(g_layers - 1) for m in (nn.Linear(g_hidden, g_hidden), nn.ReLU())])
        self.f = nn.Sequential(nn.Linear(g_hidden, f_hidden), nn.ReLU(), nn.Linear(f_hidden, f_hidden), nn.ReLU())
        self.fc = nn.Linear(f_hidden, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        check_head_args(num_classes, self.in_chans)
        check_pool(num_classes, self.global_pool if global_pool is None else global_pool, CLEVR_POOLS)
        self.num_classes = num_classes
        self.global_pool = self.global_pool if global_pool is None else global_pool
        self.fc = nn.Linear(self.f_hidden, num_classes) if num_classes > 0 else nn.Identity()

    def objects(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C, s, s)`` conv features -> ``(B, s*s, C + 2)`` objects (features ++ (row, col))."""
        o = feats.flatten(2).transpose(1, 2)                                     # b c h w -> b (h w) c
        check_size(o, 1, self.side * self.side, "features have {got} cells, the model was built for "
                   f"{self.side * self.side}; build it with the matching img_size")
        # a buffer; not annotated on the class (a string annotation breaks torch.jit.script)
        return torch.cat([o, self.coords.to(o.dtype).expand(o.shape[0], -1, -1)], dim=-1)  # type: ignore[operator]

    def relations(self, feats: torch.Tensor, question: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``sum_{i,j} g_theta(o_i, o_j, q)``: ``(B, g_hidden)``."""
        o = self.objects(feats)                                                  # (B, n, d)
        d = self.obj_dim
        w = self.g_in.weight
        first = o @ w[:, :d].T                                                   # W_i o_i  (B, n, H)
        second = o @ w[:, d:2 * d].T                                             # W_j o_j  (B, n, H)
        bias = self.g_in.bias.expand(o.shape[0], -1)
        if self.question_dim:
            bias = bias + zeros_if_none(question, o, self.question_dim) @ w[:, 2 * d:].T                              # W_q q + b  (B, H)
        h = torch.relu(first[:, :, None] + second[:, None, :] + bias[:, None, None])   # (B, n_i, n_j, H)
        return self.g(h).sum(dim=(1, 2))

    # the question is an input StagedNet's head has not; every caller passes pre_logits by keyword
    def forward_head(self, x: torch.Tensor, question: Optional[torch.Tensor] = None,  # type: ignore[override]
                     pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x
        x = self.f(self.relations(x, question))
        x = nn.functional.dropout(x, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else x
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, question: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), question)


default_cfgs = generate_default_cfgs({
    "sortclevr_rn.untrained": {
        "url": "", "num_classes": 10, "input_size": (3, 75, 75), "pool_size": (5, 5), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0, "interpolation": "bilinear", "first_conv": "conv1.0", "classifier": "fc", "license": "mit",
        "description": "Relation Network: 4 x (conv 24, stride 2) -> 25 objects, g 4 x 256, f 256-256",
        "paper_ids": "arXiv:1706.01427", "paper_name": "A simple neural network module for relational reasoning"},
})


@register_model
def sortclevr_rn(pretrained: bool = False, **kwargs) -> RelationNetwork:
    """Relation Network for Sort-of-CLEVR (Santoro et al. 2017; thesis Table 7 "Relation networks")."""
    return build_zoo_model(RelationNetwork, "sortclevr_rn", pretrained, **split_nfm_kwargs(dict(kwargs), False))
