"""Lipschitz-continuity training (``lipschitz_continuity_robustness.txt``, sec. 5, eq. 3-5) on any classifier.

Per training image ``x`` a Gaussian-perturbed copy (eq. 3) and the finite-difference estimate of the local
Lipschitz constant of the network ``f`` (eq. 4)::

    x~    = x + delta,               delta ~ N(0, sigma^2 I)                                   (3)
    L_hat = ||f(x~) - f(x)||_2 / ||x~ - x||_2                                                (4)
    L     = L_task(f(x), y) + L_lip,  L_lip = beta * mean_batch max(0, L_hat - K)              (5)

``K`` plays the role of the Lipschitz constant the network should stay below, ``beta`` weighs the term;
``beta = 0`` is the paper's "standard training". ``f`` is the logits (default) or the softmax output. The
clean and noisy images go through the network as one concatenated batch (BatchNorm normalises both with the
same statistics, so ``f(x~) - f(x)`` reflects only the input change). The batch mean of ``L_hat`` is
reported in the training metrics as ``lip`` (``lip_max``: its maximum, ``lip_pen``: ``L_lip``).

:func:`lipschitz_estimate` computes eq. 4 for any model and inputs; the ``lipschitz`` evaluation of
:mod:`zoo.robustness` reports its test-set mean (column ``lipschitz``, ``sigma`` from
``ctx.opt("lipschitz", "sigma", 0.1)``) for any trained classifier.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import NoiseRNG
from ..robustness import EvalContext, register_evaluation
from .base import Method, register_method

__all__ = ["Lipschitz", "finite_difference_lipschitz", "lipschitz_estimate", "OUTPUTS"]

OUTPUTS = ("logits", "probs")


def _output(logits: Tensor, output: str) -> Tensor:
    return logits.softmax(-1) if output == "probs" else logits


def finite_difference_lipschitz(f_x: Tensor, f_xt: Tensor, x: Tensor, xt: Tensor, eps: float = 1e-12) -> Tensor:
    """Eq. 4 per sample: ``||f(x~) - f(x)||_2 / ||x~ - x||_2``.

    Args:
        f_x, f_xt: ``(N, ...)`` network outputs at ``x`` and ``x~`` (flattened per sample).
        x, xt: ``(N, ...)`` the inputs.

    Returns:
        ``(N,)`` estimates (differentiable in ``f_x`` and ``f_xt``).
    """
    if f_x.shape != f_xt.shape or x.shape != xt.shape or f_x.shape[0] != x.shape[0]:
        raise ValueError(f"shapes must pair up: f(x) {tuple(f_x.shape)}, f(x~) {tuple(f_xt.shape)}, "
                         f"x {tuple(x.shape)}, x~ {tuple(xt.shape)}")
    num = (f_xt - f_x).flatten(1).norm(dim=1)
    den = (xt - x).flatten(1).norm(dim=1).clamp_min(eps)
    return num / den


def gaussian_perturb(x: Tensor, sigma: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Eq. 3: ``x + N(0, sigma^2 I)`` (noise drawn on the CPU ``generator``, so runs are reproducible)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x + sigma * noise.to(x.device)


def lipschitz_estimate(model: nn.Module, x: Tensor, sigma: float = 0.1, output: str = "logits",
                       generator: Optional[torch.Generator] = None, batch_size: int = 500) -> Tensor:
    """Eq. 3-4 for a model (in its current train/eval mode, no gradient): ``(N,)`` finite-difference
    estimates at ``x``."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            xt = gaussian_perturb(xb, sigma, generator)
            out.append(finite_difference_lipschitz(_output(model(xb), output), _output(model(xt), output),
                                                   xb, xt).cpu())
    return torch.cat(out)


@register_method("lipschitz")
class Lipschitz(Method):
    """Lipschitz-continuity training (eq. 3-5) on any ``nn.Module`` classifier. Batches: ``{"x", "y"}``.

    Args:
        sigma: std of the Gaussian input perturbation of eq. 3 (the paper sweeps 0.01-0.1; inputs in [0, 1]).
        beta: weight of ``L_lip`` (eq. 5); ``0`` is standard training (the estimate is still reported).
        K: the Lipschitz-constant hyperparameter of eq. 5: estimates below ``K`` are not penalised.
        output: ``"logits"`` or ``"probs"`` (softmax): the ``f`` whose slope is bounded.
        clip: clamp ``x~`` to ``[0, 1]`` (the estimate then uses the actual ``x~ - x``); the paper does not.
        seed: seeds the noise generator (``None``: drawn from the global torch RNG at ``setup``).
    """

    def __init__(self, sigma: float = 0.1, beta: float = 1.0, K: float = 1.0, output: str = "logits",
                 clip: bool = False, seed: Optional[int] = None) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if beta < 0 or K < 0:
            raise ValueError(f"beta and K must be >= 0, got beta={beta}, K={K}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        super().__init__()
        self.hparams = dict(sigma=sigma, beta=beta, K=K, output=output, clip=clip, seed=seed)
        self.sigma, self.beta, self.K, self.output, self.clip, self.seed = (
            float(sigma), float(beta), float(K), output, bool(clip), seed)
        self.rng: Optional[NoiseRNG] = None

    def setup(self, model: nn.Module, total_steps: Optional[int] = None) -> None:
        """Seed the noise generator."""
        super().setup(model, total_steps)
        self.rng = NoiseRNG(self.seed)

    def extra_state(self) -> dict:
        return {"lipschitz_rng": self.rng} if self.rng is not None else {}

    def perturb(self, x: Tensor) -> Tensor:
        """Eq. 3 with this method's ``sigma``, generator and clipping."""
        if self.rng is None:
            self.rng = NoiseRNG(self.seed)
        xt = gaussian_perturb(x, self.sigma, self.rng.generator)
        return xt.clamp(0.0, 1.0) if self.clip else xt

    def loss(self, model: nn.Module, batch: dict, step: int) -> Tuple[Tensor, Dict[str, float]]:
        x, y = batch["x"], batch["y"]
        n = x.shape[0]
        with torch.no_grad():
            xt = self.perturb(x)
        logits = model(torch.cat([x, xt]))                              # one batch: [clean (N); noisy (N)]
        clean = logits[:n]
        task = F.cross_entropy(clean, y)
        lip = finite_difference_lipschitz(_output(clean, self.output), _output(logits[n:], self.output), x, xt)
        pen = self.beta * F.relu(lip - self.K).mean()                   # eq. 5
        metrics = {"acc": float((clean.argmax(-1) == y).float().mean()), "task": float(task.detach()),
                   "lip": float(lip.detach().mean()), "lip_max": float(lip.detach().max()),
                   "lip_pen": float(pen.detach())}
        return task + pen, metrics


def eval_lipschitz(model: nn.Module, x: Tensor, y: Tensor, ctx: EvalContext) -> Dict[str, float]:
    """Mean finite-difference Lipschitz estimate (eq. 4, logits) on the test images, ``sigma`` = 0.1 default."""
    sigma = float(ctx.opt("lipschitz", "sigma", 0.1))
    est = lipschitz_estimate(model, x.to(ctx.device), sigma, ctx.opt("lipschitz", "output", "logits"),
                             ctx.generator(61), ctx.batch_size)
    return {"lipschitz": float(est.mean())}


register_evaluation("lipschitz")(eval_lipschitz)
