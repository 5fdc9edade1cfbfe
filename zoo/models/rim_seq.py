"""Sequence models: token or vector input -> recurrent core (RIM, LSTM, GRU) -> per-step head.

The copying, adding and sequential-MNIST harnesses pick any of these by registry name; the RIM models
follow thesis ch. 8 (copying: 6 units, ``k_A = 4``, total hidden 600, embedding input), the LSTM/GRU
models are the baselines of thesis Table 1.

Registered the timm way, so ``timm.create_model("rim_lstm_seq", num_tokens=10, num_classes=10)`` and
``zoo.create_model(...)`` both build them.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers.rim import RIM

__all__ = ["SequenceModel"]

_CORES = ("rim", "lstm", "gru")


class SequenceModel(nn.Module):
    """Input encoder -> recurrent core -> linear head applied at every step.

    Args:
        num_classes: outputs per step (0: the head is an identity and the core's output is returned).
        num_tokens: vocabulary size for token input (an ``nn.Embedding``); else give ``input_size``.
        input_size: feature size of vector input (a linear encoder of width ``embed_dim``).
        embed_dim: encoder width, the core's input size.
        core: ``"rim"``, ``"lstm"`` or ``"gru"``.
        hidden_size, num_layers, batch_first, dropout: as for ``nn.LSTM``.
        drop_rate: dropout before the head.
        core_kwargs: extra arguments of :class:`zoo.RIM` (``num_units``, ``k_active``, ``cell``, ...).

    Shapes:
        x: ``(B, T)`` token ids, or ``(B, T, input_size)`` (``(T, B, ...)`` if not ``batch_first``).
        returns: logits ``(B, T, num_classes)``; ``forward_features`` returns ``(B, T, hidden_size)``.
    """

    def __init__(self, num_classes: int = 10, num_tokens: Optional[int] = None, input_size: Optional[int] = None,
                 embed_dim: int = 600, core: str = "rim", hidden_size: int = 600, num_layers: int = 1,
                 batch_first: bool = True, dropout: float = 0.0, drop_rate: float = 0.0,
                 **core_kwargs: Any) -> None:
        super().__init__()
        if (num_tokens is None) == (input_size is None):
            raise ValueError("give exactly one of num_tokens (token input) or input_size (vector input), got "
                             f"num_tokens={num_tokens!r}, input_size={input_size!r}")
        if core not in _CORES:
            raise ValueError(f"core={core!r} is not supported; allowed values: {', '.join(map(repr, _CORES))}")
        if core != "rim" and core_kwargs:
            raise ValueError(f"core={core!r} takes no RIM options, got {sorted(core_kwargs)}")
        self.num_classes, self.num_tokens, self.input_size = num_classes, num_tokens, input_size
        self.hidden_size, self.batch_first, self.core_type = hidden_size, batch_first, core
        self.num_features = hidden_size
        self.encoder = nn.Embedding(num_tokens, embed_dim) if num_tokens else nn.Linear(input_size, embed_dim)
        rnn_cls = {"rim": RIM, "lstm": nn.LSTM, "gru": nn.GRU}[core]
        self.core = rnn_cls(embed_dim, hidden_size, num_layers, batch_first=batch_first, dropout=dropout,
                            **core_kwargs)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor, state=None, return_info: bool = False):
        """Encoder and core. Returns ``(features, state)`` (and the RIM step info when asked)."""
        res = self.core(self.encoder(x), state, return_info=True) if return_info else self.core(self.encoder(x), state)
        return res

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(features))

    def forward(self, x: torch.Tensor, state=None) -> torch.Tensor:
        features, _ = self.forward_features(x, state)
        return self.forward_head(features)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {"url": "", "num_classes": 10, "input_size": None, "license": "mit",
            "paper_ids": "arXiv:1909.10893", "paper_name": "Recurrent Independent Mechanisms",
            "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({
    "rim_lstm_seq.untrained": _cfg(description="RIMs, LSTM units: 6 units, k_A=4, hidden 600 (thesis Table 1)"),
    "rim_gru_seq.untrained": _cfg(description="RIMs, GRU units: 6 units, k_A=4, hidden 600, gated communication"),
    "rim_lstm_seq_official.untrained": _cfg(description="RIMs with the official code's numerics"),
    "rim_lstm_seq_small.untrained": _cfg(description="RIMs, 6 units of 32, k_A=4 (fast CPU demos and tests)"),
    "lstm_seq.untrained": _cfg(description="nn.LSTM baseline, hidden 600 (thesis Table 1)"),
    "gru_seq.untrained": _cfg(description="nn.GRU baseline, hidden 600"),
    "lstm_seq_small.untrained": _cfg(description="nn.LSTM baseline, hidden 192 (fast CPU demos and tests)"),
})


def _create(variant: str, pretrained: bool = False, **kwargs) -> SequenceModel:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights; use pretrained=False")
    if kwargs.get("num_tokens") is None and kwargs.get("input_size") is None:
        kwargs["num_tokens"] = 10  # the copying task's alphabet: blank, 8 symbols, marker
    return build_model_with_cfg(SequenceModel, variant, pretrained, kwargs_filter=("in_chans", "img_size"), **kwargs)


def _rim_defaults(kwargs: Dict[str, Any], **overrides: Any) -> Dict[str, Any]:
    """Paper defaults (thesis ch. 8), then the variant's overrides, then the caller's kwargs."""
    return {**dict(core="rim", hidden_size=600, embed_dim=600, num_units=6, k_active=4, cell="lstm"),
            **overrides, **kwargs}


@register_model
def rim_lstm_seq(pretrained: bool = False, **kwargs) -> SequenceModel:
    """RIMs with LSTM units, thesis Table 1 copying/seq-MNIST setting: 6 units of 100, ``k_A = 4``."""
    return _create("rim_lstm_seq", pretrained, **_rim_defaults(kwargs))


@register_model
def rim_gru_seq(pretrained: bool = False, **kwargs) -> SequenceModel:
    """RIMs with GRU units: 6 units of 100, ``k_A = 4``, gated communication residual.

    A GRU unit carries its previous state through the update gate (``z * h``), so the paper's plain
    residual ``h + softmax(.)V`` accumulates step after step; it diverged on the copying task (loss 1e5
    by step 300 at lr 3e-3). The gated residual ``sigmoid(.) * tanh(.)`` (official code) bounds each
    step's update; pass ``comm_residual="plain"`` for the paper's form.
    """
    return _create("rim_gru_seq", pretrained, **_rim_defaults(kwargs, cell="gru", comm_residual="gated"))


@register_model
def rim_lstm_seq_official(pretrained: bool = False, **kwargs) -> SequenceModel:
    """RIMs with the official code's numerics (``RIMCell.official``): gated communication, candidate
    exposure, 400-wide reads, dropout 0.1."""
    return _create("rim_lstm_seq_official", pretrained, **_rim_defaults(kwargs, official=True))


@register_model
def rim_lstm_seq_small(pretrained: bool = False, **kwargs) -> SequenceModel:
    """A small RIM (6 units of 32, ``k_A = 4``, embedding 64) for fast CPU runs and tests."""
    return _create("rim_lstm_seq_small", pretrained, **_rim_defaults(kwargs, hidden_size=192, embed_dim=64))


@register_model
def lstm_seq(pretrained: bool = False, **kwargs) -> SequenceModel:
    """``nn.LSTM`` baseline with hidden 600 (thesis Table 1)."""
    return _create("lstm_seq", pretrained, **{**dict(core="lstm", hidden_size=600, embed_dim=600), **kwargs})


@register_model
def gru_seq(pretrained: bool = False, **kwargs) -> SequenceModel:
    """``nn.GRU`` baseline with hidden 600."""
    return _create("gru_seq", pretrained, **{**dict(core="gru", hidden_size=600, embed_dim=600), **kwargs})


@register_model
def lstm_seq_small(pretrained: bool = False, **kwargs) -> SequenceModel:
    """A small ``nn.LSTM`` baseline (hidden 192, embedding 64), the size of ``rim_lstm_seq_small``."""
    return _create("lstm_seq_small", pretrained, **{**dict(core="lstm", hidden_size=192, embed_dim=64), **kwargs})
