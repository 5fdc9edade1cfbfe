"""Small convnets of the NFM experiments, and their NFM versions (thesis 10.4.2-10.4.3).

* ``sortclevr_cnn``: the Sort-of-CLEVR CNN+MLP of Santoro et al. (2017): 4 x (3x3 stride-2 conv with 24
  channels, ReLU, BN) on 75x75 RGB -> 24x5x5, flattened and concatenated with the 11-long question vector
  -> 256 -> 256 -> 10 answers. ``nfm_sortclevr_cnn`` runs the 4 conv modules as a 2-pass NFM network
  (top-k 5, ``d_k = d_v = 16``, 4 heads; an NFM block before every conv, the first conv of pass 2 reads
  the image with top-down attention over pass 1).
* ``mnist_convnet``: a 3-module MNIST convnet (32 ch at 28x28, 64 at 14x14, 128 at 7x7, each 3x3 conv-BN-
  ReLU) -> global average pool -> linear. Any input size works (the multi-digit 64x64 canvases too).
  ``nfm_mnist_convnet``: its 2-pass NFM version (thesis 10.4.2: k = 5, ``d_k = d_v = 16``, 4 heads).

Every model is a :class:`zoo.models.staged.StagedNet` (timm API: ``feature_info``,
``forward_intermediates``, ``reset_classifier``, ...), built by :func:`zoo.models.staged.build_zoo_model`.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._checks import check_size, zeros_if_none
from .staged import StagedNet, build_zoo_model, check_head_args, check_pool, split_nfm_kwargs

#: the head "pooling" of the Sort-of-CLEVR models: ``"flatten"`` (the MLP / relation head) or ``""`` (none:
#: with ``num_classes=0`` the model returns its unpooled conv features, timm's ``global_pool=''``)
CLEVR_POOLS = ("flatten", "")

__all__ = ["SortOfClevrCNN", "MnistConvNet"]


def _conv_bn(cin: int, cout: int, stride: int, order: str) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 3, stride, 1)
    if order == "relu_bn":                                              # Santoro et al.: conv, ReLU, BN
        return nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(cout))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


class SortOfClevrCNN(StagedNet):
    """Sort-of-CLEVR CNN+MLP (optionally NFM).

    Args:
        question_dim: length of the question vector concatenated to the flattened features (11 for the
            NFM paper's questions, 18 for the ternary version, 0 for an image-only classifier).
        width, depth: conv channels (24) and number of stride-2 convs (4).
        img_size: input side (75); fixes the flattened feature size ``width * s * s``.
        hidden: MLP width (256). num_classes: answers (10). drop_rate: dropout before the last linear.
        nfm: ``None`` or :class:`zoo.NFM` options.
        global_pool: ``"flatten"`` (the MLP head) or ``""`` (with ``num_classes=0``: no head, the conv features).

    Shapes: ``x (B, in_chans, img_size, img_size)``, ``question (B, question_dim)`` -> ``(B, num_classes)``.
    ``forward(x)`` without a question uses the zero question (shape checks and image-only probes); give the
    question for the task.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, question_dim: int = 11, width: int = 24,
                 depth: int = 4, img_size: int = 75, hidden: int = 256, drop_rate: float = 0.0,
                 nfm: Optional[Dict[str, Any]] = None, global_pool: str = "flatten") -> None:
        check_head_args(num_classes, in_chans)
        check_pool(num_classes, global_pool, CLEVR_POOLS)
        for name, v in (("width", width), ("depth", depth), ("img_size", img_size), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if isinstance(question_dim, bool) or not isinstance(question_dim, int) or question_dim < 0:
            raise ValueError(f"question_dim must be an int >= 0, got {question_dim!r}")
        body, cin, side = [], in_chans, img_size
        for i in range(depth):
            side = (side - 1) // 2 + 1
            body.append((f"conv{i + 1}", _conv_bn(cin, width, 2, "relu_bn"), width, 2 ** (i + 1)))
            cin = width
        super().__init__(body, in_chans, num_classes, nn.Identity(), width, drop_rate=drop_rate, nfm=nfm,
                         global_pool=None)
        self.question_dim, self.hidden, self.flat_dim = question_dim, hidden, width * side * side
        self.head_hidden_size, self.global_pool = hidden, global_pool
        self.mlp = nn.Sequential(nn.Linear(self.flat_dim + question_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        check_head_args(num_classes, self.in_chans)
        check_pool(num_classes, self.global_pool if global_pool is None else global_pool, CLEVR_POOLS)
        self.num_classes = num_classes
        self.global_pool = self.global_pool if global_pool is None else global_pool
        self.fc = nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    # the question is an input StagedNet's head has not; every caller passes pre_logits by keyword
    def forward_head(self, x: torch.Tensor, question: Optional[torch.Tensor] = None,  # type: ignore[override]
                     pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x
        x = x.flatten(1)
        check_size(x, 1, self.flat_dim, "features flatten to {got}, the MLP was built for "
                   f"{self.flat_dim}; build the model with the matching img_size")
        if self.question_dim:
            x = torch.cat([x, zeros_if_none(question, x, self.question_dim)], dim=1)
        x = self.mlp(x)
        x = nn.functional.dropout(x, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else x
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, question: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), question)


class MnistConvNet(StagedNet):
    """Small MNIST convnet (optionally NFM): ``widths`` 3x3 conv-BN-ReLU modules (the first at stride 1,
    then stride 2; ``strides`` sets them, e.g. ``(2, 2, 2, 2)`` for 64x64 canvases) -> global average pool
    -> linear.

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, num_classes)``; ``forward_features`` ``(B, widths[-1], H/4, W/4)``
    with the default strides.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128),
                 drop_rate: float = 0.0, nfm: Optional[Dict[str, Any]] = None,
                 strides: Optional[Sequence[int]] = None, global_pool: str = "avg") -> None:
        check_head_args(num_classes, in_chans)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of ints >= 1, got {widths!r}")
        strides = [1] + [2] * (len(widths) - 1) if strides is None else list(strides)
        if len(strides) != len(widths) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in strides):
            raise ValueError(f"strides must give one positive int stride per width, got {strides} for {list(widths)}")
        body, cin, red = [], in_chans, 1
        for i, (w, stride) in enumerate(zip(widths, strides)):
            red *= stride
            body.append((f"conv{i + 1}", _conv_bn(cin, w, stride, "bn_relu"), w, red))
            cin = w
        super().__init__(body, in_chans, num_classes, nn.Identity(), cin, drop_rate=drop_rate, nfm=nfm,
                         global_pool=global_pool)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {"url": "", "num_classes": 10, "crop_pct": 1.0, "interpolation": "bilinear", "first_conv": "conv1.0",
            "license": "mit", **kwargs}


_CLEVR = dict(input_size=(3, 75, 75), pool_size=(5, 5), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), classifier="fc")
_MNIST = dict(input_size=(1, 28, 28), pool_size=(7, 7), mean=(0.1307,), std=(0.3081,), classifier="head.fc")
_NFM = dict(paper_ids="arXiv:2010.08012", paper_name="Neural Function Modules with Sparse Arguments",
            first_conv="nfm.passes.0.0.0")
default_cfgs = generate_default_cfgs({
    "sortclevr_cnn.untrained": _cfg(description="Sort-of-CLEVR CNN+MLP: 4 x (conv 24, stride 2)", **_CLEVR),
    "nfm_sortclevr_cnn.untrained": _cfg(description="NFM Sort-of-CLEVR CNN: 2 passes, top-k 5", **_CLEVR, **_NFM),
    "mnist_convnet.untrained": _cfg(description="MNIST convnet 32-64-128", **_MNIST),
    "nfm_mnist_convnet.untrained": _cfg(description="NFM MNIST convnet: 2 passes, top-k 5", **_MNIST, **_NFM),
})


def _create(cls, variant: str, pretrained: bool, nfm: bool, kwargs: Dict[str, Any]):
    return build_zoo_model(cls, variant, pretrained, **split_nfm_kwargs(dict(kwargs), nfm))


@register_model
def sortclevr_cnn(pretrained: bool = False, **kwargs) -> SortOfClevrCNN:
    """Sort-of-CLEVR CNN+MLP baseline (Santoro et al. 2017; thesis Table 6 "CNN")."""
    return _create(SortOfClevrCNN, "sortclevr_cnn", pretrained, False, kwargs)


@register_model
def nfm_sortclevr_cnn(pretrained: bool = False, **kwargs) -> SortOfClevrCNN:
    """NFM(CNN) for Sort-of-CLEVR (thesis Table 6): 2 passes, top-k 5, ``d_k = d_v = 16``, 4 heads."""
    return _create(SortOfClevrCNN, "nfm_sortclevr_cnn", pretrained, True, kwargs)


@register_model
def mnist_convnet(pretrained: bool = False, **kwargs) -> MnistConvNet:
    """Small MNIST convnet (32-64-128)."""
    return _create(MnistConvNet, "mnist_convnet", pretrained, False, kwargs)


@register_model
def nfm_mnist_convnet(pretrained: bool = False, **kwargs) -> MnistConvNet:
    """NFM MNIST convnet (thesis 10.4.2 settings: 2 passes, top-k 5, ``d_k = d_v = 16``, 4 heads)."""
    return _create(MnistConvNet, "nfm_mnist_convnet", pretrained, True, kwargs)
