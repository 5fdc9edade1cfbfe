"""Sequence models: token or vector input -> recurrent core (RIM, LSTM, GRU) -> per-step head.

The copying, adding and sequential-MNIST harnesses pick any of these by registry name; the RIM models
follow thesis ch. 8 (copying: 6 units, ``k_A = 4``, total hidden 600, embedding input), the LSTM/GRU
models are the baselines of thesis Table 1.

Registered the timm way, so ``timm.create_model("rim_lstm_seq", num_tokens=10, num_classes=10)`` and
``zoo.create_model(...)`` both build them. timm's model API holds on token input: ``forward_features``
``(B, T, D)``, ``forward_head`` (per step; ``pre_logits``), ``forward_intermediates`` over ``feature_info``
(the embedding and the core's output, ``NLC``), ``reset_classifier``, ``set_grad_checkpointing``.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Union

import torch
from timm.models import generate_default_cfgs, register_model, register_notrace_module
from timm.models._features import feature_take_indices
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.utils.checkpoint import checkpoint

from ..layers.rim import RIM, RIMCell, RIMOptions
from .staged import build_zoo_model, check_pool

__all__ = ["SequenceModel"]

# The RIM's loop over time steps and its data-dependent top-k competition: one FX leaf (timm's convention).
register_notrace_module(RIM)

_CORES = ("rim", "lstm", "gru")
# every keyword zoo.RIM takes beyond nn.LSTM's: RIM's own, RIMCell's and RIMOptions' fields
_RIM_KEYWORDS = frozenset(
    {n for n in inspect.signature(RIM.__init__).parameters if n not in ("self", "cell_kwargs")}
    | {n for n in inspect.signature(RIMCell.__init__).parameters if n not in ("self", "option_kwargs")}
    | set(RIMOptions.__dataclass_fields__)) - set(inspect.signature(nn.LSTM.__init__).parameters) - {
    "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size"}


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


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
        compile: run the RIM's time step through ``torch.compile`` (see :class:`zoo.RIMCell`); ``nn.LSTM`` and
            ``nn.GRU`` cores already run a whole sequence as one fused ATen call, so it changes nothing for them.
        core_kwargs: extra arguments of :class:`zoo.RIM` (``num_units``, ``k_active``, ``cell``, ...).

    Shapes:
        x: ``(B, T)`` token ids, or ``(B, T, input_size)`` (``(T, B, ...)`` if not ``batch_first``).
        returns: logits ``(B, T, num_classes)``; ``forward_features`` returns ``(B, T, hidden_size)``;
        :meth:`forward_core` also returns the core's state (and the RIM step info).
    """

    def __init__(self, num_classes: int = 10, num_tokens: Optional[int] = None, input_size: Optional[int] = None,
                 embed_dim: int = 600, core: str = "rim", hidden_size: int = 600, num_layers: int = 1,
                 batch_first: bool = True, dropout: float = 0.0, drop_rate: float = 0.0, compile: bool = False,
                 **core_kwargs: Any) -> None:
        super().__init__()
        if (num_tokens is None) == (input_size is None):
            raise ValueError("give exactly one of num_tokens (token input) or input_size (vector input), got "
                             f"num_tokens={num_tokens!r}, input_size={input_size!r}")
        if core not in _CORES:
            raise ValueError(f"core={core!r} is not supported; allowed values: {', '.join(map(repr, _CORES))}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: no head, the core's features), got {num_classes!r}")
        for name, value in (("num_tokens", num_tokens), ("input_size", input_size)):
            if value is not None:
                _positive_int(name, value)
        _positive_int("embed_dim", embed_dim)
        _positive_int("hidden_size", hidden_size)
        if core != "rim" and core_kwargs:
            unknown = sorted(k for k in core_kwargs if k not in _RIM_KEYWORDS)
            if unknown:
                raise TypeError(f"SequenceModel(core={core!r}) got an unexpected keyword argument {unknown[0]!r}")
            raise ValueError(f"core={core!r} takes no RIM options, got {sorted(core_kwargs)}")
        if core == "rim":
            core_kwargs["compile"] = compile
        self.num_classes, self.num_tokens, self.input_size = num_classes, num_tokens, input_size
        self.hidden_size, self.batch_first, self.core_type = hidden_size, batch_first, core
        self.num_features = self.head_hidden_size = hidden_size
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=embed_dim, reduction=1, module="encoder"),
                             dict(num_chs=hidden_size, reduction=1, module="core")]
        self.encoder: Union[nn.Embedding, nn.Linear]
        if num_tokens:
            self.encoder = nn.Embedding(num_tokens, embed_dim)
        else:
            assert input_size is not None                # exactly one of the two is given (checked above)
            self.encoder = nn.Linear(input_size, embed_dim)
        rnn_cls = {"rim": RIM, "lstm": nn.LSTM, "gru": nn.GRU}[core]
        self.core = rnn_cls(embed_dim, hidden_size, num_layers, batch_first=batch_first, dropout=dropout,
                            **core_kwargs)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new per-step head (``num_classes=0``: none, the model returns the features). ``global_pool``:
        ``None`` or ``""`` (a sequence model's head is per step, it never pools over time)."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: no head), got {num_classes!r}")
        check_pool(0, global_pool, ("",))
        self.num_classes = num_classes
        self.head = nn.Linear(self.hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the core's activations in the backward pass (training memory for time)."""
        self.grad_checkpointing = enable

    def forward_core(self, x: torch.Tensor, state=None, return_info: bool = False):
        """Encoder and core. Returns ``(features, state)`` (and the RIM step info when asked). An empty
        sequence (``T = 0``) gives empty features and the initial state for every core (``nn.LSTM`` and
        ``nn.GRU`` themselves refuse it)."""
        return self._core(self.encoder(x), state, return_info)

    def _core(self, emb: torch.Tensor, state=None, return_info: bool = False):
        # (a traced graph drops the empty-sequence branch: the traced model refuses T = 0 as nn.LSTM does)
        if self.core_type != "rim" and not is_fx_symbolic_tracing() and emb.shape[1 if self.batch_first else 0] == 0:
            return self._empty_sequence(emb, state)
        kwargs: Dict[str, Any] = dict(return_info=True) if return_info else {}
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.core, emb, state, use_reentrant=False, **kwargs)
        return self.core(emb, state, **kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` tokens (or ``(B, T, input_size)``) -> features ``(B, T, hidden_size)`` (timm's contract;
        the state and the RIM step info: :meth:`forward_core`)."""
        return self.forward_core(x)[0]

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NLC",
                              intermediates_only: bool = False):
        """timm's intermediate-feature API over ``feature_info``: the embedding ``(B, T, embed_dim)`` and the
        core's output ``(B, T, hidden_size)``. Returns ``(features, levels)`` (``levels`` alone if
        ``intermediates_only``)."""
        if output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NLC' (sequence models), got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        emb = self.encoder(x)
        if intermediates_only and max_index == 0:
            return [emb]
        features = self._core(emb)[0]
        levels = [[emb, features][i] for i in take]
        return levels if intermediates_only else (features, levels)

    def _empty_sequence(self, emb: torch.Tensor, state):
        batch = emb.shape[0 if self.batch_first else 1]
        features = emb.new_zeros(*emb.shape[:2], self.hidden_size)
        if state is None:
            z = emb.new_zeros(self.core.num_layers, batch, self.hidden_size)
            state = (z, z) if self.core_type == "lstm" else z
        return features, state

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Per step: ``(B, T, hidden_size)`` -> ``(B, T, num_classes)`` (``pre_logits``: after dropout)."""
        features = self.head_drop(features)
        return features if pre_logits else self.head(features)

    def forward(self, x: torch.Tensor, state=None) -> torch.Tensor:
        features, _ = self.forward_core(x, state)
        return self.forward_head(features)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {"url": "", "num_classes": 10, "input_size": None, "license": "mit",
            "paper_ids": "arXiv:1909.10893", "paper_name": "Recurrent Independent Mechanisms",
            "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({
    "rim_lstm_seq.untrained": _cfg(description="RIMs, LSTM units: 6 units, k_A=4, hidden 600 (thesis Table 1)"),
    "rim_gru_seq.untrained": _cfg(description="RIMs, GRU units: 6 units, k_A=4, hidden 600"),
    "rim_lstm_seq_official.untrained": _cfg(description="RIMs with the official code's numerics"),
    "rim_lstm_seq_small.untrained": _cfg(description="RIMs, 6 units of 32, k_A=4 (fast CPU demos and tests)"),
    "rim_gru_seq_small.untrained": _cfg(description="RIMs, 6 GRU units of 64, k_A=4, gated residual (copying demo)"),
    "lstm_seq.untrained": _cfg(description="nn.LSTM baseline, hidden 600 (thesis Table 1)"),
    "gru_seq.untrained": _cfg(description="nn.GRU baseline, hidden 600"),
    "lstm_seq_small.untrained": _cfg(description="nn.LSTM baseline, hidden 192 (fast CPU demos and tests)"),
})


def model_family(name: str) -> str:
    """``"rim"`` for the registered RIM sequence models (``rim_*``), ``"baseline"`` for the LSTM / GRU ones: the
    key of the harnesses' per-family defaults (``tasks.copying.DEFAULT_LR``, ``tasks.seq_mnist.DEFAULT_LR``)."""
    return "rim" if name.startswith("rim_") else "baseline"


def _create(variant: str, pretrained: bool = False, **kwargs) -> SequenceModel:
    if kwargs.get("num_tokens") is None and kwargs.get("input_size") is None:
        kwargs["num_tokens"] = 10  # the copying task's alphabet: blank, 8 symbols, marker
    return build_zoo_model(SequenceModel, variant, pretrained, kwargs_filter=("in_chans", "img_size"), **kwargs)


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
    """RIMs with GRU units: 6 units of 100, ``k_A = 4``, the official code's gated communication residual.

    Each GRU unit carries its state before communication as its memory (``gru_memory="pre_comm"``, returned
    as ``c``), so the residual does not accumulate in a unit from step to step; and the residual is gated
    (``comm_residual="gated"``: ``|update| <= 1``, so ``|h| <= 2``), so it does not compound from unit to unit
    through inactive units' kept states either. With the linear residual this model diverged on the
    copying task at lr 3e-3 (``|h|`` 8 -> 1.2e3 at step 750) where ``nn.GRU`` of hidden 600 learned the copy;
    see ``docs/rims.md``.
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
def rim_gru_seq_small(pretrained: bool = False, **kwargs) -> SequenceModel:
    """:func:`rim_gru_seq` at CPU size, the copying demo's RIM: 6 GRU units of 64 (hidden 384), ``k_A = 4``,
    embedding 64, the gated communication residual. Stable on every seed of the copying sweep where LSTM units
    spiked (``docs/copying.md``)."""
    return _create("rim_gru_seq_small", pretrained,
                   **_rim_defaults(kwargs, cell="gru", comm_residual="gated", hidden_size=384, embed_dim=64))


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
