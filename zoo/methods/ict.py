"""Interpolation Consistency Training (thesis ch. 6, Algorithm 1, eq. 6.1) on any classifier.

Per step, with labeled ``(x, y)`` and unlabeled ``u``::

    L    = L_S + w(t) * L_US
    L_S  = lam_s CE(f_theta(Mix_lam_s(x, x[pi_s])), y) + (1 - lam_s) CE(.., y[pi_s])   (mixup on the labeled
           batch, "in all our experiments", sec. 6.3.3; ``mixup_labeled=False``: CE(f_theta(x), y))
    L_US = MSE( softmax f_theta(Mix_lam(u, u[pi])),  Mix_lam(softmax f_theta'(u), softmax f_theta'(u[pi])) )
    lam ~ Beta(alpha, alpha),   w(t) = w_max * exp(-5 (1 - t / T_r)^2) for t < T_r, else w_max,
    T_r = rampup_fraction * total_steps  (a quarter of training)

The consistency target mixes the teacher's *predictions* (eq. 6.1, Algorithm 1: ``y^_m = Mix_lam(y^_j, y^_k)``
with ``y^ = f_theta'(u)`` the predicted class distribution), ``target_mix="probs"``. The authors' code
mixes the teacher's *logits* and applies the softmax afterwards, ``softmax(Mix_lam(z'_j, z'_k))``:
``target_mix="logits"`` (a different target: the softmax of a mix is not the mix of the softmaxes).

After each optimizer step the mean teacher follows ``theta' <- a theta' + (1 - a) theta`` with
``a = ema_decay`` (0.999), or ``a = min(1 - 1 / (t + 1), ema_decay)`` with ``ema_warmup`` (the mean-teacher
code, which lets the teacher leave its random initialisation quickly). The teacher gets no gradient.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Method, register_method
from .mixup import mix, sample_lambda

__all__ = ["ICT", "sigmoid_rampup", "ema_update", "TARGET_MIXES"]

TARGET_MIXES = ("probs", "logits")


def sigmoid_rampup(step: int, rampup_steps: int) -> float:
    """``exp(-5 (1 - t / T_r)^2)`` for ``t < T_r``, else ``1`` (Tarvainen & Valpola's sigmoid schedule)."""
    if rampup_steps <= 0:
        return 1.0
    t = min(max(float(step), 0.0), float(rampup_steps)) / rampup_steps
    return math.exp(-5.0 * (1.0 - t) ** 2)


def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``theta' <- decay * theta' + (1 - decay) * theta`` for every parameter (no gradient); buffers of the
    teacher are left to its own forwards (BatchNorm running statistics of the teacher's batches)."""
    with torch.no_grad():
        for pt, ps in zip(teacher.parameters(), student.parameters()):
            pt.mul_(decay).add_(ps.detach(), alpha=1.0 - decay)


@register_method("ict")
class ICT(Method):
    """ICT (thesis Algorithm 1). Batches need ``"x"``, ``"y"`` and unlabeled ``"x_u"``.

    Args:
        alpha: ``lambda ~ Beta(alpha, alpha)`` for the unlabeled mix (paper searched 0.1 .. 1.0).
        w_max: maximum consistency weight (paper searched 1 .. 100).
        ema_decay: mean-teacher decay (paper: 0.999).
        ema_warmup: use ``min(1 - 1/(t+1), ema_decay)`` (mean-teacher code) instead of ``ema_decay``.
        rampup_fraction: ``w(t)`` reaches ``w_max`` after this fraction of ``total_steps`` (paper: 0.25).
        rampup_steps: explicit ramp length (overrides ``rampup_fraction``).
        mixup_labeled: input mixup on the labeled batch (default ``True``: every run of the paper, sec.
            6.3.3); ``False``: plain cross-entropy on the labeled batch (Algorithm 1 as printed).
        mixup_alpha: ``Beta`` parameter of the labeled mix (the authors' runs: 1.0).
        target_mix: ``"probs"`` (eq. 6.1: mix the teacher's softmax outputs) or ``"logits"`` (the authors'
            code: mix the teacher's logits, then softmax).
        eval_teacher: :meth:`eval_model` returns the mean teacher (else the student).
    """

    needs_unlabeled = True

    def __init__(self, alpha: float = 1.0, w_max: float = 10.0, ema_decay: float = 0.999, ema_warmup: bool = True,
                 rampup_fraction: float = 0.25, rampup_steps: Optional[int] = None, mixup_labeled: bool = True,
                 mixup_alpha: float = 1.0, target_mix: str = "probs", eval_teacher: bool = True) -> None:
        if alpha < 0 or mixup_alpha < 0:
            raise ValueError(f"alpha and mixup_alpha must be >= 0, got {alpha}, {mixup_alpha}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if w_max < 0:
            raise ValueError(f"w_max must be >= 0, got {w_max}")
        if not 0.0 <= rampup_fraction <= 1.0:
            raise ValueError(f"rampup_fraction must be in [0, 1], got {rampup_fraction}")
        if rampup_steps is not None and int(rampup_steps) < 0:
            raise ValueError(f"rampup_steps must be >= 0 or None, got {rampup_steps}")
        if target_mix not in TARGET_MIXES:
            raise ValueError(f"target_mix must be one of {TARGET_MIXES}, got {target_mix!r}")
        super().__init__()
        self.hparams = dict(alpha=alpha, w_max=w_max, ema_decay=ema_decay, ema_warmup=ema_warmup,
                            rampup_fraction=rampup_fraction, rampup_steps=rampup_steps,
                            mixup_labeled=mixup_labeled, mixup_alpha=mixup_alpha, target_mix=target_mix,
                            eval_teacher=eval_teacher)
        self.alpha, self.w_max, self.ema_decay, self.ema_warmup = alpha, w_max, ema_decay, ema_warmup
        self.rampup_fraction = rampup_fraction
        self.rampup_steps: Optional[int] = None if rampup_steps is None else int(rampup_steps)
        self.mixup_labeled, self.mixup_alpha, self.eval_teacher = mixup_labeled, mixup_alpha, eval_teacher
        self.target_mix = target_mix
        self.teacher: Optional[nn.Module] = None
        self.student: Optional[nn.Module] = None

    def weight(self, step: int) -> float:
        """``w(t) = w_max * sigmoid_rampup(t, T_r)``."""
        if self.rampup_steps is None:
            raise ValueError("ict needs the run length for its ramp-up: call setup(model, total_steps=N) "
                             "or pass rampup_steps")
        return self.w_max * sigmoid_rampup(step, self.rampup_steps)

    def decay(self, step: int) -> float:
        """The EMA coefficient used after optimizer step ``step`` (1-based, as ``fit`` callbacks get it)."""
        return min(1.0 - 1.0 / (step + 1), self.ema_decay) if self.ema_warmup else self.ema_decay

    def setup(self, model: nn.Module, total_steps: Optional[int] = None) -> None:
        """Resolve the ramp length ``T_r`` (``rampup_steps``, or ``rampup_fraction * total_steps``) and build
        the mean teacher: a copy of ``model`` without hooks, with gradients off."""
        super().setup(model, total_steps)
        if self.hparams["rampup_steps"] is None:
            if total_steps is None:
                raise ValueError("ict needs the run length for its ramp-up: call setup(model, total_steps=N) "
                                 "or pass rampup_steps")
            self.rampup_steps = int(round(self.rampup_fraction * total_steps))
        teacher = copy.deepcopy(model)
        for m in teacher.modules():                    # hooks (e.g. taps) belong to the student only
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        teacher.requires_grad_(False)
        self.teacher, self.student = teacher, model

    def update_teacher(self, step: int, model: nn.Module) -> None:
        """The ``fit`` callback: EMA step of the teacher towards ``model``."""
        if self.teacher is None:
            raise ValueError("ICT.setup(model) must be called before training")
        if next(self.teacher.parameters()).device != next(model.parameters()).device:
            self.teacher.to(next(model.parameters()).device)
        ema_update(self.teacher, model, self.decay(step))

    def supervised_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``L_S``: mixup cross-entropy on the labeled batch (``mixup_labeled``), else plain cross-entropy."""
        if not self.mixup_labeled:
            return F.cross_entropy(model(x), y)
        lam, perm = sample_lambda(self.mixup_alpha), torch.randperm(x.shape[0], device=x.device)
        logits = model(mix(x, lam, perm)).float()
        return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])

    def consistency_target(self, teacher_logits: Tensor, lam: float, perm: Tensor) -> Tensor:
        """The mixed pseudo-label: ``Mix_lam(softmax z', softmax z'[pi])`` (``"probs"``, eq. 6.1) or
        ``softmax(Mix_lam(z', z'[pi]))`` (``"logits"``, the authors' code); ``(U, C)``."""
        z = teacher_logits.float()
        if self.target_mix == "logits":
            return F.softmax(mix(z, lam, perm), dim=-1)
        return mix(F.softmax(z, dim=-1), lam, perm)

    def loss(self, model: nn.Module, batch: dict, step: int) -> Tuple[Tensor, Dict[str, float]]:
        if self.teacher is None:
            raise ValueError("ICT.setup(model) must be called before loss()")
        if "x_u" not in batch:
            raise ValueError("ICT batches need unlabeled images under 'x_u'")
        x, y, u = batch["x"], batch["y"], batch["x_u"]
        if next(self.teacher.parameters()).device != u.device:
            self.teacher.to(u.device)
        loss_s = self.supervised_loss(model, x, y)
        with torch.no_grad():
            self.teacher.train(model.training)
            z_teacher = self.teacher(u)
        lam, perm = sample_lambda(self.alpha), torch.randperm(u.shape[0], device=u.device)
        p_student = F.softmax(model(mix(u, lam, perm)).float(), dim=-1)
        loss_us = F.mse_loss(p_student, self.consistency_target(z_teacher, lam, perm))
        w = self.weight(step)
        loss = loss_s + w * loss_us
        return loss, {"loss_s": float(loss_s.detach()), "loss_us": float(loss_us.detach()), "w": w}

    def callbacks(self) -> tuple:
        return (self.update_teacher,)

    def extra_state(self) -> dict:
        return {"ict_teacher": self.teacher} if self.teacher is not None else {}

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.teacher if (self.eval_teacher and self.teacher is not None) else model
