"""Input Mixup and Manifold Mixup on any network through :class:`zoo.taps.LayerTaps` (thesis ch. 4).

Manifold Mixup (thesis eq. 4.1): draw once per step a layer ``k`` uniformly from the eligible set ``S``,
``lambda ~ Beta(alpha, alpha)`` and one permutation ``pi`` of the batch; run the network to layer ``k``,
replace its output ``g_k(x)`` by ``Mix_lambda(g_k(x), g_k(x)[pi]) = lambda g_k(x) + (1 - lambda) g_k(x)[pi]``,
continue to the logits ``f(x)`` and train on the mixed target ``lambda y + (1 - lambda) y[pi]``::

    L = E_{(x,y),(x',y'),lambda,k}  l( f_k(Mix_lambda(g_k(x), g_k(x'))), Mix_lambda(y, y') )

Layer ``0`` is the input, so ``S = {0}`` is Input Mixup (Zhang et al., 2018). Gradients flow through the
layers before ``k`` (nothing is detached). Paper defaults: ``alpha = 2.0`` and ``S = {input, stage 1,
stage 2}`` for Manifold Mixup, ``alpha = 1.0`` for Input Mixup. The loss ``l`` is soft-target
cross-entropy (``"soft_ce"``) or, as in the official code, binary cross-entropy on the softmax (``"bce"``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..taps import INPUT, LayerTaps, map_tensors, stage_layers
from .base import Method, register_method

__all__ = ["ManifoldMixup", "InputMixup", "mix", "sample_lambda", "mixed_targets", "soft_target_cross_entropy",
           "bce_on_softmax", "MIXUP_LOSSES"]


def mix(h: Tensor, lam: float, perm: Tensor) -> Tensor:
    """``Mix_lambda(h, h[perm]) = lam * h + (1 - lam) * h[perm]`` along the batch dim 0.

    Args:
        h: ``(B, ...)`` activations; perm: ``(B,)`` permutation of ``range(B)``.
    """
    if h.shape[0] != perm.shape[0]:
        raise ValueError(f"cannot mix a batch of {h.shape[0]} with a permutation of {perm.shape[0]}")
    return lam * h + (1.0 - lam) * h[perm.to(h.device)]


def sample_lambda(alpha: float) -> float:
    """``lambda ~ Beta(alpha, alpha)`` from the global torch RNG (seeded by ``seed_everything``);
    ``alpha <= 0`` gives ``1.0`` (no mixing), as in the official code."""
    if alpha <= 0:
        return 1.0
    g = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float64))   # Beta = G1 / (G1 + G2)
    return float(g[0] / g.sum())


def mixed_targets(y: Tensor, num_classes: int, lam: float, perm: Tensor) -> Tensor:
    """``lam * onehot(y) + (1 - lam) * onehot(y[perm])``: ``(B,)`` int labels -> ``(B, num_classes)``."""
    one = F.one_hot(y, num_classes).float()
    return mix(one, lam, perm)


def soft_target_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``-mean_b sum_c target[b, c] log softmax(logits)[b, c]``; ``logits, target``: ``(B, C)``."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def bce_on_softmax(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy between ``softmax(logits)`` and the soft target, mean over ``B x C`` entries
    (the official Manifold Mixup code: ``BCELoss()(softmax(output), reweighted_target)``)."""
    p = F.softmax(logits.float(), dim=-1).clamp(1e-7, 1 - 1e-7)
    return F.binary_cross_entropy(p, target)


MIXUP_LOSSES = {"soft_ce": soft_target_cross_entropy, "bce": bce_on_softmax}


@register_method("manifold_mixup")
class ManifoldMixup(Method):
    """Manifold Mixup (thesis ch. 4, eq. 4.1) on any ``nn.Module`` through layer taps.

    Args:
        alpha: ``lambda ~ Beta(alpha, alpha)`` (paper: 2.0).
        layers: the eligible set ``S``: names or indices into :func:`zoo.taps.default_layers`
            (``0`` = the input); default: the input and the first two feature stages,
            ``["input"] + zoo.taps.stage_layers(model)[:2]`` (stem outputs are not stages).
        loss: ``"soft_ce"`` (soft-target cross-entropy) or ``"bce"`` (BCE on the softmax, official code).

    The mix drawn in :meth:`loss` stays set until the optimizer step's callback clears it, so a forward
    re-run during backward (activation checkpointing) mixes with the same ``(k, lambda, pi)``.
    """

    default_alpha = 2.0
    default_layers: Optional[Tuple[Union[int, str], ...]] = None      # None: input + first two stages

    def __init__(self, alpha: Optional[float] = None, layers: Optional[Sequence[Union[int, str]]] = None,
                 loss: str = "soft_ce") -> None:
        alpha = self.default_alpha if alpha is None else float(alpha)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if loss not in MIXUP_LOSSES:
            raise ValueError(f"loss must be one of {sorted(MIXUP_LOSSES)}, got {loss!r}")
        if layers is None:
            layers = self.default_layers
        elif isinstance(layers, (int, str)):
            layers = (layers,)
        layers = None if layers is None else tuple(layers)
        if layers is not None and not layers:
            raise ValueError("layers must name at least one layer (0 = the input)")
        super().__init__()
        self.hparams = {"alpha": alpha, "layers": None if layers is None else list(layers), "loss": loss}
        self.alpha, self.layer_refs, self.loss_name = alpha, layers, loss
        self.taps: Optional[LayerTaps] = None
        self.layers: list = []

    def setup(self, model: nn.Module, total_steps: Optional[int] = None) -> None:
        """Attach (capture-free) taps on the eligible layers of ``model``."""
        super().setup(model, total_steps)
        if self.taps is not None:
            self.taps.remove()
        refs = self.layer_refs
        if refs is None:                                     # the paper's S = {input, stage 1, stage 2}
            refs = (INPUT,) + tuple(stage_layers(model)[:2])
        self.taps = LayerTaps(model, refs, capture=False).attach()
        self.layers = list(self.taps.layers)

    def sample(self, batch_size: int, device: torch.device) -> Tuple[int, float, Tensor]:
        """Draw ``(k, lambda, pi)`` for one step: a layer index into :attr:`layers`, the mixing weight, a
        permutation of the batch."""
        k = int(torch.randint(len(self.layers), ()))
        lam = sample_lambda(self.alpha)
        perm = torch.randperm(batch_size, device=device)
        return k, lam, perm

    def set_mix(self, k: int, lam: float, perm: Tensor) -> None:
        """Mix the output of ``layers[k]`` with ``(lam, perm)`` in every forward until :meth:`end_step`."""
        if self.taps is None:
            raise ValueError(f"{type(self).__name__}.setup(model) must be called before set_mix()")
        self.taps.clear_modifier()
        self.taps.set_modifier(self.layers[k], lambda h: map_tensors(lambda t: mix(t, lam, perm), h))

    def end_step(self, *_) -> None:
        """Stop mixing (the ``fit`` callback after each optimizer step; also call it after manual use)."""
        if self.taps is not None:
            self.taps.clear_modifier()

    def loss(self, model: nn.Module, batch: dict, step: int) -> Tuple[Tensor, Dict[str, float]]:
        if self.taps is None or self.taps.model is not model:
            raise ValueError(f"{type(self).__name__}.setup(model) must be called with this model before loss()")
        x, y = batch["x"], batch["y"]
        k, lam, perm = self.sample(x.shape[0], x.device)
        self.set_mix(k, lam, perm)
        logits = model(x)
        if self.loss_name == "soft_ce":          # = soft_target_cross_entropy(logits, mixed target), cheaper
            logits = logits.float()
            loss = lam * F.cross_entropy(logits, y) + (1.0 - lam) * F.cross_entropy(logits, y[perm])
        else:
            loss = bce_on_softmax(logits, mixed_targets(y, logits.shape[-1], lam, perm))
        return loss, {"lam": lam, "layer": float(k)}

    def callbacks(self) -> tuple:
        return (self.end_step,)

    def remove(self) -> None:
        """Detach the taps from the model."""
        if self.taps is not None:
            self.taps.remove()
            self.taps = None


@register_method("input_mixup")
class InputMixup(ManifoldMixup):
    """Input Mixup (Zhang et al., 2018; thesis ch. 4): Manifold Mixup with ``S = {input}``, ``alpha = 1.0``."""

    default_alpha = 1.0
    default_layers = (0,)
