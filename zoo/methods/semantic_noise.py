"""Semantic noise modeling (``semantic_noise_modeling.txt``, sec. 2, eq. 6-9) for the encoder / classifier /
tied-decoder networks of :mod:`zoo.models.snm` (``snm_mnist_convnet``, ``snm_mnist_mlp``, or any model with
``encode``, ``classify``, ``decode_x``, ``decode_z``).

With ``z = f1(x)``, ``y = f2(z)``, ``x_R = g1'(z)``, ``z_R = g2'(y)`` (eq. 5)::

    base (eq. 6):     lambda1 (L2(x, x_R) + L2(z, z_R)) + NLL(y, t)
    perturbed (eq. 8): base + lambda2 NLL(y', t),    y' = f2(z'),  z' = z + z_e                     (7)
    random:           z_e ~ noise on z
    semantic (eq. 9): z_e = g2'(y + y_e) - g2'(y),   y_e ~ noise on the logits y

``L2(a, b) = ||a - b||^2`` per example (``rec_reduction="mean"``: per element). The noise follows sec. 4.2:
the base vector (``z`` for random, ``y`` for semantic perturbation) is min-max scaled to ``[0, 1]`` per
example, zero-mean Gaussian noise of std ``sigma = 0.2`` is added, and the result is scaled back, i.e. the
additive noise is ``sigma * (max - min) * N(0, I)``. Paper settings (MNIST): ``lambda1 = 0.03``,
``lambda2 = 1``. Its claim is for small training sets (10-2k examples per class):
``python -m tasks.classify --model snm_mnist_convnet --method erm snm_base snm_random semantic_noise
--labels-per-class 20``.

Registered methods: ``semantic_noise`` (semantic perturbation, "proposed-3"), ``snm_random`` (random
perturbation, "proposed-2"), ``snm_base`` (eq. 6, "proposed-1").
"""
from __future__ import annotations

from typing import Dict, Optional, Protocol, Tuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import NoiseRNG
from .base import Method, register_method

__all__ = ["SemanticNoise", "SNMRandom", "SNMBase", "minmax_noise", "l2_loss", "PERTURBATIONS", "SNM_API"]

PERTURBATIONS = ("none", "random", "semantic")
SNM_API = ("encode", "classify", "decode_x", "decode_z")


class _SNMModel(Protocol):
    """The encoder / classifier / tied-decoder API (:data:`SNM_API`) that :meth:`SemanticNoise.setup` checks."""

    def encode(self, x: Tensor) -> Tensor: ...

    def classify(self, z: Tensor) -> Tensor: ...

    def decode_x(self, z: Tensor) -> Tensor: ...

    def decode_z(self, y: Tensor) -> Tensor: ...


def minmax_noise(v: Tensor, sigma: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Additive noise of sec. 4.2 for base vectors ``v`` ``(N, D)``: Gaussian noise of std ``sigma`` added to
    ``v`` min-max scaled to ``[0, 1]`` per row, scaled back: ``sigma * (max_v - min_v) * N(0, I)`` (no grad)."""
    v = v.detach().flatten(1)
    span = v.max(1, keepdim=True).values - v.min(1, keepdim=True).values
    eps = torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device)
    return sigma * span * eps


def l2_loss(a: Tensor, b: Tensor, reduction: str = "sum") -> Tensor:
    """Batch mean of ``||a - b||^2`` per example (``"sum"``) or of the per-element squared error (``"mean"``)."""
    sq = (a - b).pow(2).flatten(1)
    return (sq.sum(1) if reduction == "sum" else sq.mean(1)).mean()


@register_method("semantic_noise")
class SemanticNoise(Method):
    """Joint supervised + reconstruction training with latent perturbation (eq. 6-9). Batches: ``{"x", "y"}``.

    Args:
        perturb: ``"semantic"`` (eq. 9), ``"random"`` (noise directly on ``z``) or ``"none"`` (eq. 6).
        lambda1: weight of the reconstruction losses of ``x`` and ``z`` (paper: 0.03 MNIST, 0.01 CIFAR-10).
        lambda2: weight of the perturbed NLL of eq. 8 (paper: 1).
        sigma: std of the Gaussian noise on the min-max-scaled base vector (paper: 0.2).
        rec_reduction: ``"sum"`` (``||.||^2`` per example) or ``"mean"`` (per element).
        detach_noise: treat ``z_e`` as a sampled constant (no gradient through ``g2'(y + y_e) - g2'(y)``).
        seed: seeds the noise generator (``None``: drawn from the global torch RNG at ``setup``).
    """

    default_perturb = "semantic"

    def __init__(self, perturb: Optional[str] = None, lambda1: float = 0.03, lambda2: float = 1.0,
                 sigma: float = 0.2, rec_reduction: str = "sum", detach_noise: bool = True,
                 seed: Optional[int] = None) -> None:
        perturb = self.default_perturb if perturb is None else perturb
        if perturb not in PERTURBATIONS:
            raise ValueError(f"perturb must be one of {PERTURBATIONS}, got {perturb!r}")
        if lambda1 < 0 or lambda2 < 0 or sigma < 0:
            raise ValueError(f"lambda1, lambda2, sigma must be >= 0, got {lambda1}, {lambda2}, {sigma}")
        if rec_reduction not in ("sum", "mean"):
            raise ValueError(f"rec_reduction must be 'sum' or 'mean', got {rec_reduction!r}")
        super().__init__()
        self.hparams = dict(perturb=perturb, lambda1=lambda1, lambda2=lambda2, sigma=sigma,
                            rec_reduction=rec_reduction, detach_noise=detach_noise, seed=seed)
        self.perturb, self.lambda1, self.lambda2, self.sigma = perturb, float(lambda1), float(lambda2), float(sigma)
        self.rec_reduction, self.detach_noise, self.seed = rec_reduction, bool(detach_noise), seed
        self.rng: Optional[NoiseRNG] = None

    def setup(self, model: nn.Module, total_steps: Optional[int] = None) -> None:
        """Check that ``model`` has the encoder / classifier / tied-decoder API; seed the noise generator."""
        super().setup(model, total_steps)
        missing = [a for a in SNM_API if not callable(getattr(model, a, None))]
        if missing:
            raise ValueError(f"{self.name} needs an encoder / classifier / tied-decoder model with "
                             f"{', '.join(SNM_API)} (missing {', '.join(missing)}): use snm_mnist_convnet or "
                             f"snm_mnist_mlp (zoo.models.snm), got {type(model).__name__}")
        self.rng = NoiseRNG(self.seed)

    def extra_state(self) -> dict:
        return {"snm_rng": self.rng} if self.rng is not None else {}

    def latent_noise(self, model: nn.Module, z: Tensor, y: Tensor) -> Tensor:
        """``z_e`` ``(N, D)``: random (noise on ``z``) or semantic (eq. 9, noise on ``y`` decoded by ``g2'``)."""
        if self.rng is None:
            self.rng = NoiseRNG(self.seed)
        g = self.rng.generator
        net = cast(_SNMModel, model)                                                  # API checked in setup
        if self.perturb == "random":
            return minmax_noise(z, self.sigma, g).view_as(z)
        y_e = minmax_noise(y, self.sigma, g).view_as(y)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_noise):
            y_in = y.detach() if self.detach_noise else y
            z_e = net.decode_z(y_in + y_e) - net.decode_z(y_in)                      # eq. 9
        return z_e

    def loss(self, model: nn.Module, batch: dict, step: int) -> Tuple[Tensor, Dict[str, float]]:
        x, t = batch["x"], batch["y"]
        net = cast(_SNMModel, model)                                                  # API checked in setup
        z = net.encode(x)
        y = net.classify(z)
        x_r, z_r = net.decode_x(z), net.decode_z(y)                                   # eq. 5
        nll = F.cross_entropy(y, t)
        rec_x, rec_z = l2_loss(x_r, x, self.rec_reduction), l2_loss(z_r, z, self.rec_reduction)
        loss = self.lambda1 * (rec_x + rec_z) + nll                                   # eq. 6
        metrics = {"acc": float((y.argmax(-1) == t).float().mean()), "nll": float(nll.detach()),
                   "rec_x": float(rec_x.detach()), "rec_z": float(rec_z.detach())}
        if self.perturb != "none" and self.lambda2 > 0:
            z_e = self.latent_noise(model, z, y)
            y_p = net.classify(z + z_e)                                               # eq. 7
            nll_p = F.cross_entropy(y_p, t)
            loss = loss + self.lambda2 * nll_p                                        # eq. 8
            metrics.update(nll_perturbed=float(nll_p.detach()),
                           z_e=float(z_e.detach().flatten(1).norm(dim=1).mean()),
                           acc_perturbed=float((y_p.argmax(-1) == t).float().mean()))
        return loss, metrics


@register_method("snm_random")
class SNMRandom(SemanticNoise):
    """Eq. 8 with random latent perturbation (``perturb="random"``; the paper's "proposed-perturb (random)")."""

    default_perturb = "random"


@register_method("snm_base")
class SNMBase(SemanticNoise):
    """Eq. 6: the joint base model without perturbation (``perturb="none"``; the paper's "proposed-base")."""

    default_perturb = "none"
