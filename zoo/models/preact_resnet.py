"""Pre-activation ResNets for CIFAR-sized inputs (PreActResNet-18/34/50, WRN-28-k) and their NFM versions.

The PreActResNets are the seeds' backbone (Manifold Mixup / ICT / NFM papers, He et al. 2016 "Identity
Mappings"): a 3x3 stem conv (no pooling), four stages of pre-activation blocks at strides 1, 2, 2, 2, a
final BN-ReLU, global average pooling and a linear classifier. The wide ResNet is Zagoruyko & Komodakis'
WRN-d-k (16 stem channels, three stages of ``(d - 4) / 6`` wide pre-activation blocks, widths 16k, 32k, 64k).

The ``nfm_*`` versions run the same stem and stages as an :class:`zoo.NFM` network (thesis ch. 10,
Algorithm 2): 2 passes, an NFM block before each stage (8 blocks for PreActResNet-18), ``d_k = d_v = 16``,
4 heads, top-k 5 (thesis 10.4.2 settings), one key/value projection per stored layer. Keyword arguments of
every ``nfm_*`` entrypoint: ``nfm_passes``, ``nfm_share`` (one set of module weights for all passes),
``nfm_share_kv`` (``False``: a key/value projection per reading block and source), ``nfm_attend`` (module
indices or ``"all"``: also a block before the stem of pass 2, as in Algorithm 2), ``nfm_pass_init``
(``"independent"``: pass-2 modules not copied from pass 1), ``nfm_compile_blocks`` (``torch.compile`` the
blocks), and the block options ``d_k``, ``d_v``, ``num_heads``, ``top_k``, ``hidden_dim``, ``batch_norm``,
``scale``, ``topk_rule``, ``out_layers``, ``pad`` (see :class:`zoo.NFMAttention` and ``docs/nfm.md``).

Every model is a :class:`zoo.models.staged.StagedNet` (the NFM wiring and the timm model API), built by
:func:`zoo.models.staged.build_zoo_model`; the head is timm's ``ClassifierHead`` (``global_pool``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ..layers.nfm import reset_parameters
from .staged import StagedNet, build_zoo_model, check_head_args, split_nfm_kwargs

__all__ = ["PreActResNet", "PreActBlock", "PreActBottleneck"]

class PreActBlock(nn.Module):
    """Pre-activation basic block: ``x + conv(relu(bn(conv(relu(bn(x))))))``; the projection shortcut
    (1x1 conv) reads the pre-activated input. ``drop_rate`` is WRN's dropout between the two convs."""
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + sc


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (1x1, 3x3 with the stride, 1x1 to ``4 * planes``)."""
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != out_planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return self.conv3(F.relu(self.bn3(out))) + sc


_BLOCKS: Dict[str, Union[Type[PreActBlock], Type[PreActBottleneck]]] = {
    "basic": PreActBlock, "bottleneck": PreActBottleneck}


class PreActResNet(StagedNet):
    """CIFAR pre-activation ResNet: ``conv1`` (3x3, stride 1) -> ``layer1..layerS`` -> BN-ReLU -> pool -> fc.

    Args:
        layers: blocks per stage (``(2, 2, 2, 2)`` for 18, ``(3, 4, 6, 3)`` for 34/50, ``(4, 4, 4)`` WRN-28).
        widths: ``planes`` per stage (``(64, 128, 256, 512)``; WRN-28-k ``(16k, 32k, 64k)``).
        block: ``"basic"`` or ``"bottleneck"``.
        stem_width: channels of ``conv1`` (64; WRN 16).
        block_drop: dropout inside the blocks (WRN's dropout; 0 by default).
        nfm: ``None`` or :class:`zoo.NFM` options; NFM blocks go before each stage (``attend = 1..S``).
        global_pool: the head's pooling (``"avg"``; ``""`` with ``num_classes=0``: unpooled features).

    Shapes: ``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``; ``forward_features`` ``(B, C, H/8, W/8)``.
    """

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
                 block: str = "basic", stem_width: int = 64, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, block_drop: float = 0.0, nfm: Optional[Dict[str, Any]] = None,
                 global_pool: str = "avg") -> None:
        check_head_args(num_classes, in_chans)
        if block not in _BLOCKS:
            raise ValueError(f"block={block!r} is not supported; allowed values: {', '.join(map(repr, _BLOCKS))}")
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers and widths need one entry per stage, got {list(layers)} and {list(widths)}")
        blk = _BLOCKS[block]
        body: List[Tuple[str, nn.Module, int, int]] = [
            ("conv1", nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False), stem_width, 1)]
        in_planes, reduction = stem_width, 1
        for s, (n, planes) in enumerate(zip(layers, widths)):
            stride = 1 if s == 0 else 2
            reduction *= stride
            blocks = []
            for b in range(n):
                blocks.append(blk(in_planes, planes, stride if b == 0 else 1, drop_rate=block_drop))
                in_planes = planes * blk.expansion
            body.append((f"layer{s + 1}", nn.Sequential(*blocks), in_planes, reduction))
        for _, m, _, _ in body:                       # init before NFM copies the body for each pass
            _init_convs(m)
        if nfm is not None:
            nfm = {"attend": tuple(range(1, len(body))), "init_fn": init_weights, **nfm}
        super().__init__(body, in_chans, num_classes, nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU()),
                         in_planes, drop_rate=drop_rate, nfm=nfm, global_pool=global_pool)


def _init_convs(module: nn.Module) -> None:
    for c in module.modules():
        if isinstance(c, nn.Conv2d):
            nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")


def init_weights(module: nn.Module) -> None:
    """The PreActResNet initialisation of one module (PyTorch defaults, Kaiming-normal convs): what
    ``nfm_pass_init="independent"`` applies to the modules of passes 2 and later."""
    reset_parameters(module)
    _init_convs(module)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {"url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (4, 4), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
            "first_conv": "conv1", "classifier": "head.fc", "license": "mit", **kwargs}


_NFM_PAPER = dict(paper_ids="arXiv:2010.08012", paper_name="Neural Function Modules with Sparse Arguments")
default_cfgs = generate_default_cfgs({
    "preactresnet18.untrained": _cfg(description="PreActResNet-18, CIFAR stem"),
    "preactresnet34.untrained": _cfg(description="PreActResNet-34, CIFAR stem"),
    "preactresnet50.untrained": _cfg(description="PreActResNet-50 (bottleneck), CIFAR stem"),
    "wrn28_2.untrained": _cfg(description="WRN-28-2", pool_size=(8, 8)),
    "wrn28_10.untrained": _cfg(description="WRN-28-10", pool_size=(8, 8)),
    "nfm_preactresnet18.untrained": _cfg(description="NFM PreActResNet-18: 2 passes, NFM before each stage",
                                         first_conv="nfm.passes.0.0", **_NFM_PAPER),
    "nfm_preactresnet34.untrained": _cfg(description="NFM PreActResNet-34", first_conv="nfm.passes.0.0",
                                         **_NFM_PAPER),
    "nfm_preactresnet50.untrained": _cfg(description="NFM PreActResNet-50", first_conv="nfm.passes.0.0",
                                         **_NFM_PAPER),
    "nfm_wrn28_2.untrained": _cfg(description="NFM WRN-28-2", pool_size=(8, 8), first_conv="nfm.passes.0.0",
                                  **_NFM_PAPER),
    "nfm_wrn28_10.untrained": _cfg(description="NFM WRN-28-10", pool_size=(8, 8), first_conv="nfm.passes.0.0",
                                   **_NFM_PAPER),
})


def _resnet(variant: str, pretrained: bool, nfm: bool, kwargs: Dict[str, Any], **arch: Any) -> PreActResNet:
    kwargs = split_nfm_kwargs(dict(kwargs), nfm)
    return build_zoo_model(PreActResNet, variant, pretrained, kwargs_filter=("img_size",), **{**arch, **kwargs})


def _wrn(variant: str, pretrained: bool, nfm: bool, kwargs: Dict[str, Any], depth: int, k: int) -> PreActResNet:
    n = (depth - 4) // 6
    return _resnet(variant, pretrained, nfm, kwargs, layers=(n,) * 3, widths=(16 * k, 32 * k, 64 * k), stem_width=16)


@register_model
def preactresnet18(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreActResNet-18 for 32x32 inputs (the Manifold Mixup / ICT / NFM papers' backbone)."""
    return _resnet("preactresnet18", pretrained, False, kwargs, layers=(2, 2, 2, 2))


@register_model
def preactresnet34(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreActResNet-34 for 32x32 inputs."""
    return _resnet("preactresnet34", pretrained, False, kwargs, layers=(3, 4, 6, 3))


@register_model
def preactresnet50(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreActResNet-50 (bottleneck blocks) for 32x32 inputs."""
    return _resnet("preactresnet50", pretrained, False, kwargs, layers=(3, 4, 6, 3), block="bottleneck")


@register_model
def wrn28_2(pretrained: bool = False, **kwargs) -> PreActResNet:
    """WRN-28-2 (1.5 M parameters; the usual semi-supervised CIFAR backbone)."""
    return _wrn("wrn28_2", pretrained, False, kwargs, 28, 2)


@register_model
def wrn28_10(pretrained: bool = False, **kwargs) -> PreActResNet:
    """WRN-28-10 (36.5 M parameters)."""
    return _wrn("wrn28_10", pretrained, False, kwargs, 28, 10)


@register_model
def nfm_preactresnet18(pretrained: bool = False, **kwargs) -> PreActResNet:
    """NFM PreActResNet-18: 2 passes, NFM before each stage (8 blocks), d_k = d_v = 16, 4 heads, top-k 5."""
    return _resnet("nfm_preactresnet18", pretrained, True, kwargs, layers=(2, 2, 2, 2))


@register_model
def nfm_preactresnet34(pretrained: bool = False, **kwargs) -> PreActResNet:
    """NFM PreActResNet-34 (thesis Table 2 / Table 9 backbone)."""
    return _resnet("nfm_preactresnet34", pretrained, True, kwargs, layers=(3, 4, 6, 3))


@register_model
def nfm_preactresnet50(pretrained: bool = False, **kwargs) -> PreActResNet:
    """NFM PreActResNet-50 (bottleneck)."""
    return _resnet("nfm_preactresnet50", pretrained, True, kwargs, layers=(3, 4, 6, 3), block="bottleneck")


@register_model
def nfm_wrn28_2(pretrained: bool = False, **kwargs) -> PreActResNet:
    """NFM WRN-28-2: 2 passes, NFM before each of the 3 stages."""
    return _wrn("nfm_wrn28_2", pretrained, True, kwargs, 28, 2)


@register_model
def nfm_wrn28_10(pretrained: bool = False, **kwargs) -> PreActResNet:
    """NFM WRN-28-10."""
    return _wrn("nfm_wrn28_10", pretrained, True, kwargs, 28, 10)
