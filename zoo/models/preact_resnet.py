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

:class:`StagedNet` is the shared skeleton (also used by :mod:`zoo.models.small_cnns`): a list of named
body modules run in order (plain) or as an NFM network, a final norm, and a head; it implements the timm
model API (``feature_info``, ``forward_features``, ``forward_head``, ``forward_intermediates``,
``prune_intermediate_layers``, ``reset_classifier``, ``set_grad_checkpointing``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from ..layers.nfm import NFM, NFMTrace, reset_parameters

__all__ = ["StagedNet", "PreActResNet", "PreActBlock", "PreActBottleneck"]

NFM_KEYS = ("d_k", "d_v", "num_heads", "top_k", "hidden_dim", "batch_norm", "scale", "topk_rule", "out_layers", "pad")
NFM_RENAMED = {"nfm_passes": "passes", "nfm_share": "share_modules", "nfm_share_kv": "share_kv", "nfm_attend": "attend",
               "nfm_pass_init": "pass_init", "nfm_compile_blocks": "compile_blocks"}


def check_head_args(num_classes: Any, in_chans: Any) -> None:
    """One-line errors for a bad ``num_classes`` (an int >= 0; 0: no classifier) or ``in_chans`` (>= 1)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier head), got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")


class StagedNet(nn.Module):
    """Body modules run in order (or as an NFM network) -> final norm -> head.

    Args:
        body: ``(name, module, out_channels, reduction)`` per body module; the first is the stem.
        in_chans, num_classes, drop_rate: as in timm.
        final_norm: applied after the body (``forward_features`` output), e.g. the pre-activation BN-ReLU.
        num_features: channels of ``forward_features``.
        nfm: ``None`` (the plain backbone) or the :class:`zoo.NFM` options (``passes``, ``attend``,
            ``share_modules``, ``d_k``, ...). With NFM the body modules live at ``nfm.passes.{p}.{i}``.

    Plain modules keep their names (``conv1``, ``layer1``, ...); ``feature_info`` names the last pass's
    modules for NFM models, so ``model.get_submodule(info["module"])`` resolves in both cases.
    """

    def __init__(self, body: Sequence[Tuple[str, nn.Module, int, int]], in_chans: int, num_classes: int,
                 final_norm: nn.Module, num_features: int, drop_rate: float = 0.0,
                 nfm: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        check_head_args(num_classes, in_chans)
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.num_features = self.head_hidden_size = num_features
        self.body_names = [b[0] for b in body]
        self.grad_checkpointing = False
        if nfm is None:
            self.nfm = None
            for name, module, _, _ in body:
                self.add_module(name, module)
            prefix = ""
        else:
            self.nfm = NFM([b[1] for b in body], [b[2] for b in body], in_chans, **nfm)
            last = 0 if self.nfm.share_modules else self.nfm.num_passes - 1
            prefix = f"nfm.passes.{last}."
        self.feature_info = [dict(num_chs=c, reduction=r, module=prefix + (n if nfm is None else str(i)))
                             for i, (n, _, c, r) in enumerate(body)]
        self.norm = final_norm

    # -- body --------------------------------------------------------------------------------------
    def body_modules(self) -> List[nn.Module]:
        """The body modules of the plain network (of pass 1 for NFM models)."""
        if self.nfm is None:
            return [getattr(self, n) for n in self.body_names]
        return list(self.nfm.passes[0])

    def load_backbone(self, backbone: "StagedNet") -> None:
        """Copy a plain backbone's weights (body, final norm, head) into this NFM model (every pass)."""
        if self.nfm is None:
            raise ValueError("load_backbone is for NFM models; use load_state_dict for plain ones")
        self.nfm.load_backbone(backbone.body_modules())
        self.norm.load_state_dict(backbone.norm.state_dict())
        self.get_classifier().load_state_dict(backbone.get_classifier().state_dict())

    def nfm_trace(self, x: torch.Tensor, passes: Optional[int] = None) -> NFMTrace:
        """Run the NFM body and return the memory and the attention maps of every block."""
        if self.nfm is None:
            raise ValueError("nfm_trace needs an NFM model (an nfm_* entrypoint)")
        return self.nfm.run(x, passes=passes, return_attention=True)

    def set_random_attention(self, enabled: bool = True, null: bool = True) -> None:
        """The random-attention ablation (thesis 10.4): every NFM block reads random slots (``null=False``:
        the null slot keeps its score 0)."""
        if self.nfm is None:
            raise ValueError("set_random_attention needs an NFM model")
        self.nfm.set_random_attention(enabled, null=null)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        if self.nfm is not None:
            self.nfm.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """timm parameter groups (layer-wise LR decay): the stem, then one group per body module (its NFM
        block and shared key/value projection, of every pass, with it); the norm and head go last."""
        if self.nfm is not None:
            return dict(stem=r"^nfm\.passes\.\d+\.0\.", blocks=[(r"^nfm\.passes\.\d+\.(\d+)\.", None),
                                                           (r"^nfm\.attn\.\d+_(\d+)\.", None),
                                                           (r"^nfm\.kv\.\d+_(\d+)\.", None)])
        return dict(stem=rf"^{self.body_names[0]}\.",
                    blocks=[(rf"^{n}\.", (i,)) for i, n in enumerate(self.body_names[1:], 1)])

    # -- timm API ------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        check_head_args(num_classes, self.in_chans)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _run_body(self, x: torch.Tensor, last: Optional[int] = None) -> List[torch.Tensor]:
        """Outputs of the body modules ``0..last`` (of the last pass for NFM models)."""
        n = len(self.body_names)
        last = n - 1 if last is None else last
        if self.nfm is not None:
            trace = self.nfm.run(x, stop_after=last)
            return trace.memory[-(last + 1):]
        outs = []
        for name in self.body_names[:last + 1]:
            m = getattr(self, name)
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint_seq(m, x) if isinstance(m, nn.Sequential) else torch.utils.checkpoint.checkpoint(
                    m, x, use_reentrant=False)
            else:
                x = m(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.nfm is not None:
            return self.norm(self.nfm(x))
        return self.norm(self._run_body(x)[-1])

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's intermediate-feature API over the body modules (``feature_info`` order; for NFM models
        the outputs of the last pass). ``norm`` applies the final norm to the last module's output."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        n = len(self.body_names)
        take, max_index = feature_take_indices(n, indices)
        outs = self._run_body(x, last=max_index if (stop_early or intermediates_only) else None)
        inter = [self.norm(outs[i]) if (norm and i == n - 1) else outs[i] for i in take]
        if intermediates_only:
            return inter
        return self.norm(outs[-1]), inter

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the body modules after the last wanted index (plain models), the norm and the head.

        NFM models keep their body (later passes attend to every module of earlier passes)."""
        n = len(self.body_names)
        take, max_index = feature_take_indices(n, indices)
        if self.nfm is None:
            for name in self.body_names[max_index + 1:]:
                setattr(self, name, nn.Identity())
            self.body_names = self.body_names[:max_index + 1]
            self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm or max_index < n - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)
        x = F.dropout(x, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else x
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


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


_BLOCKS = {"basic": PreActBlock, "bottleneck": PreActBottleneck}


class PreActResNet(StagedNet):
    """CIFAR pre-activation ResNet: ``conv1`` (3x3, stride 1) -> ``layer1..layerS`` -> BN-ReLU -> pool -> fc.

    Args:
        layers: blocks per stage (``(2, 2, 2, 2)`` for 18, ``(3, 4, 6, 3)`` for 34/50, ``(4, 4, 4)`` WRN-28).
        widths: ``planes`` per stage (``(64, 128, 256, 512)``; WRN-28-k ``(16k, 32k, 64k)``).
        block: ``"basic"`` or ``"bottleneck"``.
        stem_width: channels of ``conv1`` (64; WRN 16).
        block_drop: dropout inside the blocks (WRN's dropout; 0 by default).
        nfm: ``None`` or :class:`zoo.NFM` options; NFM blocks go before each stage (``attend = 1..S``).

    Shapes: ``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``; ``forward_features`` ``(B, C, H/8, W/8)``.
    """

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
                 block: str = "basic", stem_width: int = 64, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, block_drop: float = 0.0, nfm: Optional[Dict[str, Any]] = None) -> None:
        check_head_args(num_classes, in_chans)
        if block not in _BLOCKS:
            raise ValueError(f"block={block!r} is not supported; allowed values: {', '.join(map(repr, _BLOCKS))}")
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers and widths need one entry per stage, got {list(layers)} and {list(widths)}")
        blk = _BLOCKS[block]
        body = [("conv1", nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False), stem_width, 1)]
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
                         in_planes, drop_rate=drop_rate, nfm=nfm)
        self.fc = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()


def _init_convs(module: nn.Module) -> None:
    for c in module.modules():
        if isinstance(c, nn.Conv2d):
            nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")


def init_weights(module: nn.Module) -> None:
    """The PreActResNet initialisation of one module (PyTorch defaults, Kaiming-normal convs): what
    ``nfm_pass_init="independent"`` applies to the modules of passes 2 and later."""
    reset_parameters(module)
    _init_convs(module)


def split_nfm_kwargs(kwargs: Dict[str, Any], nfm: bool, **defaults: Any) -> Dict[str, Any]:
    """Move the NFM options out of ``kwargs`` into ``kwargs["nfm"]`` (:data:`NFM_RENAMED` and
    :data:`NFM_KEYS`), on top of the variant's ``defaults``."""
    opts = {k: kwargs.pop(k) for k in NFM_KEYS if k in kwargs}
    opts.update({NFM_RENAMED[k]: kwargs.pop(k) for k in list(NFM_RENAMED) if k in kwargs})
    if not nfm:
        if opts:
            raise ValueError(f"NFM options {sorted(opts)} given to a plain backbone; use its nfm_* version")
        return kwargs
    kwargs["nfm"] = {**dict(passes=2, d_k=16, d_v=16, num_heads=4, top_k=5), **defaults, **opts}
    return kwargs


def _cfg(**kwargs) -> Dict[str, Any]:
    return {"url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (4, 4), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
            "first_conv": "conv1", "classifier": "fc", "license": "mit", **kwargs}


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


def _create(variant: str, pretrained: bool = False, **kwargs) -> PreActResNet:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights; use pretrained=False")
    return build_model_with_cfg(PreActResNet, variant, pretrained, feature_cfg=dict(feature_cls="getter"),
                                kwargs_filter=("img_size",), **kwargs)


def _resnet(variant: str, nfm: bool, kwargs: Dict[str, Any], **arch: Any) -> PreActResNet:
    kwargs = split_nfm_kwargs(dict(kwargs), nfm)
    return _create(variant, **{**arch, **kwargs})


def _wrn(variant: str, nfm: bool, kwargs: Dict[str, Any], depth: int, k: int) -> PreActResNet:
    n = (depth - 4) // 6
    return _resnet(variant, nfm, kwargs, layers=(n,) * 3, widths=(16 * k, 32 * k, 64 * k), stem_width=16)


@register_model
def preactresnet18(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreActResNet-18 for 32x32 inputs (the Manifold Mixup / ICT / NFM papers' backbone)."""
    return _resnet("preactresnet18", False, kwargs, layers=(2, 2, 2, 2))


@register_model
def preactresnet34(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreActResNet-34 for 32x32 inputs."""
    return _resnet("preactresnet34", False, kwargs, layers=(3, 4, 6, 3))


@register_model
def preactresnet50(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreActResNet-50 (bottleneck blocks) for 32x32 inputs."""
    return _resnet("preactresnet50", False, kwargs, layers=(3, 4, 6, 3), block="bottleneck")


@register_model
def wrn28_2(pretrained: bool = False, **kwargs) -> PreActResNet:
    """WRN-28-2 (1.5 M parameters; the usual semi-supervised CIFAR backbone)."""
    return _wrn("wrn28_2", False, kwargs, 28, 2)


@register_model
def wrn28_10(pretrained: bool = False, **kwargs) -> PreActResNet:
    """WRN-28-10 (36.5 M parameters)."""
    return _wrn("wrn28_10", False, kwargs, 28, 10)


@register_model
def nfm_preactresnet18(pretrained: bool = False, **kwargs) -> PreActResNet:
    """NFM PreActResNet-18: 2 passes, NFM before each stage (8 blocks), d_k = d_v = 16, 4 heads, top-k 5."""
    return _resnet("nfm_preactresnet18", True, kwargs, layers=(2, 2, 2, 2))


@register_model
def nfm_preactresnet34(pretrained: bool = False, **kwargs) -> PreActResNet:
    """NFM PreActResNet-34 (thesis Table 2 / Table 9 backbone)."""
    return _resnet("nfm_preactresnet34", True, kwargs, layers=(3, 4, 6, 3))


@register_model
def nfm_preactresnet50(pretrained: bool = False, **kwargs) -> PreActResNet:
    """NFM PreActResNet-50 (bottleneck)."""
    return _resnet("nfm_preactresnet50", True, kwargs, layers=(3, 4, 6, 3), block="bottleneck")


@register_model
def nfm_wrn28_2(pretrained: bool = False, **kwargs) -> PreActResNet:
    """NFM WRN-28-2: 2 passes, NFM before each of the 3 stages."""
    return _wrn("nfm_wrn28_2", True, kwargs, 28, 2)


@register_model
def nfm_wrn28_10(pretrained: bool = False, **kwargs) -> PreActResNet:
    """NFM WRN-28-10."""
    return _wrn("nfm_wrn28_10", True, kwargs, 28, 10)
