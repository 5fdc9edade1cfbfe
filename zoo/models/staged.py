"""The shared skeleton of the zoo's image models (:class:`StagedNet`) and the one model-building path
(:func:`build_zoo_model`).

:class:`StagedNet` (the NFM wiring, thesis ch. 10, Algorithm 2) is a list of named body modules run in order
(plain) or as a multi-pass :class:`zoo.NFM` network, a final norm and a head. It implements the timm model API
(``feature_info``, ``forward_features``, ``forward_head``, ``forward_intermediates``,
``prune_intermediate_layers``, ``reset_classifier``, ``set_grad_checkpointing``), is TorchScript-able and
FX-traceable as a plain network (the NFM runner is an FX leaf; see ``docs/index.md``, "timm contract").

:func:`build_zoo_model` is timm's ``build_model_with_cfg`` with the zoo's conventions: no published weights
(``pretrained=True`` is refused in one line), ``features_only`` through timm's ``FeatureGetterNet`` over
``forward_intermediates`` with every ``feature_info`` level by default.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union, cast

import torch
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, register_notrace_module
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from ..layers.nfm import NFM, NFMTrace

__all__ = ["StagedNet", "build_zoo_model", "check_head_args", "check_pool", "split_nfm_kwargs", "NFM_KEYS",
           "NFM_RENAMED"]

# The NFM runner keeps a per-forward key/value cache and data-dependent top-k reads: FX treats it as one leaf.
register_notrace_module(NFM)

NFM_KEYS = ("d_k", "d_v", "num_heads", "top_k", "hidden_dim", "batch_norm", "scale", "topk_rule", "out_layers", "pad")
NFM_RENAMED = {"nfm_passes": "passes", "nfm_share": "share_modules", "nfm_share_kv": "share_kv", "nfm_attend": "attend",
               "nfm_pass_init": "pass_init", "nfm_compile_blocks": "compile_blocks"}


def check_head_args(num_classes: Any, in_chans: Any) -> None:
    """One-line errors for a bad ``num_classes`` (an int >= 0; 0: no classifier) or ``in_chans`` (>= 1)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier head), got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")


def check_pool(num_classes: int, global_pool: Optional[str], allowed: Sequence[str]) -> None:
    """One-line errors for a bad ``global_pool`` (``""``: no pooling, only without a classifier)."""
    if global_pool is None:
        return
    if global_pool not in allowed:
        raise ValueError(f"global_pool={global_pool!r} is not supported; allowed values: "
                         f"{', '.join(map(repr, allowed))}")
    if global_pool == "" and num_classes > 0:
        raise ValueError("global_pool='' (no pooling) needs num_classes=0 (no classifier)")


ModelT = TypeVar("ModelT", bound=nn.Module)


def build_zoo_model(cls: Type[ModelT], variant: str, pretrained: bool = False, **kwargs: Any) -> ModelT:
    """The zoo's one building path: timm's ``build_model_with_cfg`` for ``variant``'s default cfg.

    ``pretrained=True`` raises (the zoo publishes no weights). ``features_only=True`` wraps the model in timm's
    ``FeatureGetterNet`` (over ``forward_intermediates``), every ``feature_info`` level unless ``out_indices``
    is given. Typed as returning ``cls`` (timm's ``build_model_with_cfg`` convention), the wrapper included.
    """
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights (the zoo publishes none); use pretrained=False")
    return build_model_with_cfg(cls, variant, pretrained, feature_cfg=dict(feature_cls="getter", out_indices=None),
                                **kwargs)


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


_POOLS = ("avg", "fast", "max", "avgmax", "catavgmax", "")


class StagedNet(nn.Module):
    """Body modules run in order (or as an NFM network) -> final norm -> head.

    Args:
        body: ``(name, module, out_channels, reduction)`` per body module; the first is the stem.
        in_chans, num_classes, drop_rate: as in timm.
        final_norm: applied after the body (``forward_features`` output), e.g. the pre-activation BN-ReLU.
        num_features: channels of ``forward_features``.
        nfm: ``None`` (the plain backbone) or the :class:`zoo.NFM` options (``passes``, ``attend``,
            ``share_modules``, ``d_k``, ...). With NFM the body modules live at ``nfm.passes.{p}.{i}``.
        global_pool: the head's pooling (timm's ``ClassifierHead``: ``"avg"``, ``""`` for none, ...);
            ``None``: the subclass builds its own head (``forward_head``, ``reset_classifier``).

    Plain modules keep their names (``conv1``, ``layer1``, ...); ``feature_info`` names the last pass's
    modules for NFM models, so ``model.get_submodule(info["module"])`` resolves in both cases.
    """

    def __init__(self, body: Sequence[Tuple[str, nn.Module, int, int]], in_chans: int, num_classes: int,
                 final_norm: nn.Module, num_features: int, drop_rate: float = 0.0,
                 nfm: Optional[Dict[str, Any]] = None, global_pool: Optional[str] = "avg") -> None:
        super().__init__()
        check_head_args(num_classes, in_chans)
        if global_pool is not None:
            check_pool(num_classes, global_pool, _POOLS)
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
        if global_pool is not None:
            self.head = ClassifierHead(num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    # -- body --------------------------------------------------------------------------------------
    def body_modules(self) -> List[nn.Module]:
        """The body modules of the plain network (of pass 1 for NFM models)."""
        if self.nfm is None:
            return [self.get_submodule(n) for n in self.body_names]
        return list(cast(nn.ModuleList, self.nfm.passes[0]))

    def load_backbone(self, backbone: "StagedNet") -> None:
        """Copy a plain backbone's weights (body, final norm, head) into this NFM model (every pass)."""
        if self.nfm is None:
            raise ValueError("load_backbone is for NFM models; use load_state_dict for plain ones")
        self.nfm.load_backbone(backbone.body_modules())
        self.norm.load_state_dict(backbone.norm.state_dict())
        self.get_classifier().load_state_dict(backbone.get_classifier().state_dict())

    @torch.jit.ignore
    def nfm_trace(self, x: torch.Tensor, passes: Optional[int] = None) -> NFMTrace:
        """Run the NFM body and return the memory and the attention maps of every block."""
        if self.nfm is None:
            raise ValueError("nfm_trace needs an NFM model (an nfm_* entrypoint)")
        return self.nfm.run(x, passes=passes, return_attention=True)

    @torch.jit.ignore
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
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier (``num_classes=0``: none) and, if given, a new pooling (``""``: none)."""
        check_head_args(num_classes, self.in_chans)
        check_pool(num_classes, self.head.global_pool.pool_type if global_pool is None else global_pool, _POOLS)
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def _run_body(self, x: torch.Tensor, last: int = -1) -> List[torch.Tensor]:
        """Outputs of the body modules ``0..last`` (all for ``-1``; of the last pass for NFM models)."""
        n = len(self.body_names)
        last = n - 1 if last < 0 else last
        if self.nfm is not None:
            return self.nfm.run(x, stop_after=last).memory[-(last + 1):]
        outs: List[torch.Tensor] = []
        for name, m in self.named_children():           # registration order = body order (TorchScript-able)
            if name in self.body_names and len(outs) <= last:
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

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's intermediate-feature API over the body modules (``feature_info`` order; for NFM models
        the outputs of the last pass). ``norm`` applies the final norm to the last module's output."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        n = len(self.body_names)
        take, max_index = feature_take_indices(n, indices)
        outs = self._run_body(x, last=max_index if (stop_early or intermediates_only) else -1)
        inter = [self.norm(outs[i]) if (norm and i == n - 1) else outs[i] for i in take]
        if intermediates_only:
            return inter
        return self.norm(outs[-1]), inter

    @torch.jit.ignore
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
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
