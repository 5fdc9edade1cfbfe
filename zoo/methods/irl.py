"""Invariant Representation Learning (IRL; ``irl_invariant_representation_learning.txt``, eq. 1-2) on any
classifier through :class:`zoo.taps.LayerTaps`.

Per labeled sample ``(x, y)`` with ``K`` noisy copies ``x~^(k) ~ nu_x`` (eq. 1-2)::

    L_IRL  = alpha L(x, y) + beta L_noise(x, y) + gamma L_dist(x)
    L_noise = (1/K) sum_k L(x~^(k), y)
    L_dist  = (1/K) sum_k sum_l gamma_l d(a_l, a~_l^(k)),     d(u, v) = ||u - v||^2 - lambda u.v / (|u| |v|)

``a_l`` are the activations of layer ``l`` (a tapped module, or ``"logits"``: the model output) for the
original, ``a~_l^(k)`` for the ``k``-th noisy copy; ``L`` is cross-entropy. The original and its copies go
through the network in one concatenated batch ("IRL batching", sec. 2, eq. 4), so BatchNorm sees them
together. Special cases: ``(1, 0, 0)`` is plain training, ``(0, 1, 0)`` data augmentation,
``(0.5, 0.5, 0)`` IRL batching; the paper's runs use ``(0.5, 0.5, 1)``, ``K = 1`` and ``gamma_l = 1`` on the
last 4 blocks and the logits. Semi-supervised IRL (sec. 3, "Semi-supervision"): unlabeled samples get only
the distance term, ``(alpha, beta, gamma) = (0, 0, gamma)``.

Noise models ``nu_x`` (sec. 3): ``"in_domain"`` (brightness/contrast jitter + PCA noise),
``"out_of_domain"`` (hue/saturation jitter, or its grayscale analogue), ``"adversarial"`` (FGSM on the fly
against the current model, :func:`zoo.robustness.fgsm_attack`; unlabeled samples are attacked with the
model's own predictions as labels), plus ``"gaussian"``, ``"dai"`` or any ``fn(x, generator)``
(:mod:`zoo.augment`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import NoiseRNG, get_noise
from ..robustness import fgsm_attack
from ..taps import LayerTaps, stage_layers
from .base import Method, register_method

__all__ = ["IRL", "irl_distance", "IRL_PRESETS", "LOGITS", "TapsNoiseMethod", "first_tensor"]

LOGITS = "logits"
IRL_PRESETS: Dict[str, Tuple[float, float, float]] = {
    "irl": (0.5, 0.5, 1.0),             # IRL loss (Table 1, "IRL loss")
    "irl_batching": (0.5, 0.5, 0.0),    # originals and noisy copies presented together, no distance
    "standard": (1.0, 0.0, 0.0),        # regular training
    "augment": (0.0, 1.0, 0.0),         # data augmentation
}


def first_tensor(value: Any) -> Tensor:
    """The activation tensor of a layer output: the tensor itself, or the first tensor nested in a tuple /
    list / dict (e.g. ``(output, state)`` of a recurrent block)."""
    if torch.is_tensor(value):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for v in items:
        try:
            return first_tensor(v)
        except ValueError:
            continue
    raise ValueError(f"layer output holds no tensor: {type(value).__name__}")


def irl_distance(u: Tensor, v: Tensor, lam: float = 1.0, reduction: str = "sum") -> Tensor:
    """Per-sample ``d(u, v) = ||u - v||^2 - lam * cos(u, v)`` (IRL paper, sec. 1).

    Args:
        u, v: ``(N, ...)`` activations (flattened per sample).
        reduction: ``"sum"`` (``d`` as printed) or ``"mean"`` (``d / D``, divided by the feature count
            ``D``: comparable across layers of different sizes, with the paper's balance of the two terms,
            since both are divided; squared L2 dominates the cosine in trained networks).

    Returns:
        ``(N,)`` distances.
    """
    if u.shape != v.shape:
        raise ValueError(f"u and v must have the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    u, v = u.flatten(1).float(), v.flatten(1).float()
    d = (u - v).pow(2).sum(1)
    if lam != 0:
        d = d - lam * F.cosine_similarity(u, v, dim=1, eps=1e-8)
    return d / u.shape[1] if reduction == "mean" else d


class TapsNoiseMethod(Method):
    """Base of IRL and DAI: capturing :class:`LayerTaps` (``self.taps``) and a seeded noise generator
    (``self.rng``, a :class:`zoo.augment.NoiseRNG` saved in checkpoints under :attr:`rng_key`)."""

    rng_key = "noise_rng"
    taps: Optional[LayerTaps] = None
    rng: Optional[NoiseRNG] = None

    def remove(self) -> None:
        """Detach the taps from the model."""
        if self.taps is not None:
            self.taps.remove()
            self.taps = None

    def extra_state(self) -> dict:
        return {self.rng_key: self.rng} if self.rng is not None else {}


@register_method("irl")
class IRL(TapsNoiseMethod):
    """IRL (eq. 1-2) on any ``nn.Module``. Batches: ``{"x", "y"}`` (+ ``"x_u"`` when ``semi_supervised``).

    Args:
        alpha, beta, gamma: weights of the clean loss, the noisy loss and the distance term; ``None`` takes
            the value of ``preset``.
        preset: ``"irl"`` (0.5, 0.5, 1), ``"irl_batching"`` (0.5, 0.5, 0), ``"standard"`` (1, 0, 0),
            ``"augment"`` (0, 1, 0).
        K: noisy copies per sample.
        layers: layers ``l`` of ``L_dist``: names / :func:`zoo.taps.default_layers` indices and ``"logits"``
            (the model output); default the paper's "last 4 blocks and the logits",
            ``stage_layers(model)[-4:] + ["logits"]``.
        layer_weights: ``gamma_l``: one float for every layer or one per layer (paper: 1).
        lam: ``lambda``, weight of the negative cosine similarity in ``d``.
        dist_reduction: ``"mean"`` (default: ``d(u, v) / D``, the paper's distance per feature: both terms
            divided by the layer's feature count ``D``, so squared L2 still outweighs the cosine term as in
            the paper) or ``"sum"`` (``d`` as printed). With ``"sum"`` a hidden layer of thousands of
            features outweighs the cross-entropy by orders of magnitude and ``gamma = 1`` collapses the
            representation of our small networks (accuracy at chance on the digits), hence the per-feature
            default; see docs/irl.md.
        noise: ``"in_domain"``, ``"out_of_domain"``, ``"adversarial"``, ``"gaussian"``, ``"dai"`` or a callable
            ``fn(x, generator) -> x~``. noise_kwargs: options of the noise model (e.g. ``{"std": 0.3}``).
        eps: FGSM step for ``noise="adversarial"`` (inputs in ``[0, 1]``).
        semi_supervised: batches carry unlabeled ``"x_u"``, which get only ``gamma L_dist``.
        seed: seeds the noise generator (``None``: drawn from the global torch RNG at ``setup``).
    """

    rng_key = "irl_rng"

    def __init__(self, alpha: Optional[float] = None, beta: Optional[float] = None, gamma: Optional[float] = None,
                 preset: str = "irl", K: int = 1, layers: Optional[Sequence[Union[int, str]]] = None,
                 layer_weights: Union[float, Sequence[float]] = 1.0, lam: float = 1.0, dist_reduction: str = "mean",
                 noise: Any = "in_domain", noise_kwargs: Optional[dict] = None, eps: float = 0.1,
                 semi_supervised: bool = False, seed: Optional[int] = None) -> None:
        if preset not in IRL_PRESETS:
            raise ValueError(f"preset must be one of {sorted(IRL_PRESETS)}, got {preset!r}")
        a0, b0, g0 = IRL_PRESETS[preset]
        alpha, beta, gamma = (a0 if alpha is None else float(alpha), b0 if beta is None else float(beta),
                              g0 if gamma is None else float(gamma))
        if min(alpha, beta, gamma) < 0 or alpha + beta + gamma == 0:
            raise ValueError(f"alpha, beta, gamma must be >= 0 and not all 0, got {(alpha, beta, gamma)}")
        if int(K) < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        if dist_reduction not in ("sum", "mean"):
            raise ValueError(f"dist_reduction must be 'sum' or 'mean', got {dist_reduction!r}")
        if semi_supervised and gamma == 0:
            raise ValueError("semi-supervised IRL trains unlabeled data with gamma * L_dist only: gamma must be > 0")
        if isinstance(layers, (int, str)):
            layers = [layers]
        if layers is not None and not layers:
            raise ValueError("layers must name at least one layer")
        super().__init__()
        self.noise_kwargs = dict(noise_kwargs or {})
        self.adversarial = noise == "adversarial"
        self.noise_fn = None if self.adversarial else get_noise(noise, **self.noise_kwargs)
        self.hparams = dict(alpha=alpha, beta=beta, gamma=gamma, preset=preset, K=int(K),
                            layers=None if layers is None else list(layers),
                            layer_weights=layer_weights if isinstance(layer_weights, (int, float)) else list(layer_weights),
                            lam=lam, dist_reduction=dist_reduction,
                            noise=noise if isinstance(noise, str) else getattr(noise, "__name__", "callable"),
                            noise_kwargs=self.noise_kwargs, eps=eps, semi_supervised=semi_supervised, seed=seed)
        self.alpha, self.beta, self.gamma, self.K = alpha, beta, gamma, int(K)
        self.layer_refs = None if layers is None else list(layers)
        self.layer_weights_arg = layer_weights
        self.lam, self.dist_reduction, self.eps, self.seed = float(lam), dist_reduction, float(eps), seed
        self.needs_unlabeled = bool(semi_supervised)
        self.rng: Optional[NoiseRNG] = None
        self.taps: Optional[LayerTaps] = None
        self.layers: List[str] = []
        self.weights: Dict[str, float] = {}

    # -- setup ------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, total_steps: Optional[int] = None) -> None:
        """Resolve the layers and ``gamma_l``, attach capturing taps (when ``gamma > 0``), seed the noise."""
        super().setup(model, total_steps)
        self.remove()
        self.rng = NoiseRNG(self.seed)
        refs = self.layer_refs
        if refs is None:
            refs = [*stage_layers(model)[-4:], LOGITS]
        hidden = [r for r in refs if r != LOGITS]
        self.taps = LayerTaps(model, hidden, capture=True) if hidden else None
        self.layers = (list(self.taps.layers) if self.taps else []) + ([LOGITS] if LOGITS in refs else [])
        w = self.layer_weights_arg
        ws = [float(w)] * len(self.layers) if isinstance(w, (int, float)) else [float(v) for v in w]
        if len(ws) != len(self.layers):
            raise ValueError(f"layer_weights has {len(ws)} entries for {len(self.layers)} layers {self.layers}")
        self.weights = dict(zip(self.layers, ws))
        if self.taps is not None and self.gamma > 0:
            self.taps.attach()

    # -- noise ------------------------------------------------------------------------------------------
    def noisy_copies(self, model: nn.Module, x: Tensor, y: Optional[Tensor]) -> Tensor:
        """``(K * N, ...)``: ``K`` noisy copies of ``x`` ``(N, ...)``, copy-major (``[x~^(1); ...; x~^(K)]``).

        ``y``: labels for the adversarial noise (``None``: the model's predictions)."""
        if self.adversarial:
            if y is None:
                with torch.no_grad():
                    was = model.training
                    model.eval()
                    y = model(x).argmax(-1)
                    model.train(was)
            adv = fgsm_attack(model, x, y, self.eps)                 # deterministic: K identical copies
            return adv.repeat(self.K, *([1] * (x.dim() - 1)))
        if self.rng is None:
            raise ValueError(f"{type(self).__name__}.setup(model) must be called before noisy_copies()")
        assert self.noise_fn is not None                             # set whenever the noise is not adversarial
        with torch.no_grad():
            return self.noise_fn(x.repeat(self.K, *([1] * (x.dim() - 1))), self.rng.generator)

    # -- loss -------------------------------------------------------------------------------------------
    def layer_distances(self, acts: Dict[str, Tensor], n_clean: int) -> Tuple[Tensor, Dict[str, float]]:
        """``(N,)`` per-sample ``(1/K) sum_k sum_l gamma_l d(a_l, a~_l^(k))`` from activations of the batch
        ``[clean (N); copy 1 (N); ...; copy K (N)]``, and each layer's mean distance."""
        total: Union[Tensor, float] = 0.0
        per_layer: Dict[str, float] = {}
        for name in self.layers:
            a = acts[name]
            clean = a[:n_clean]
            noisy = a[n_clean:].reshape(self.K, n_clean, *a.shape[1:])
            d = irl_distance(clean.repeat(self.K, *([1] * (a.dim() - 1))), noisy.flatten(0, 1),
                             self.lam, self.dist_reduction).view(self.K, n_clean).mean(0)
            per_layer[name] = float(d.detach().mean())
            total = total + self.weights[name] * d
        assert isinstance(total, Tensor)                             # self.layers is never empty
        return total, per_layer

    def loss(self, model: nn.Module, batch: dict, step: int) -> Tuple[Tensor, Dict[str, float]]:
        if self.rng is None:
            raise ValueError("IRL.setup(model) must be called before loss()")
        if self.gamma > 0 and self.taps is not None and self.taps.model is not model:
            raise ValueError("IRL.setup(model) was called with a different model")
        x, y = batch["x"], batch["y"]
        u = batch.get("x_u") if self.needs_unlabeled else None
        if self.needs_unlabeled and u is None:
            raise ValueError("semi-supervised IRL batches need unlabeled images under 'x_u'")
        B = x.shape[0]
        clean = x if u is None else torch.cat([x, u])
        N = clean.shape[0]
        need_clean = self.alpha > 0 or self.gamma > 0
        need_noisy = self.beta > 0 or self.gamma > 0
        parts = []
        if need_clean:
            parts.append(clean)
        if need_noisy:                                # labeled copies attacked with labels, unlabeled without
            if self.adversarial and u is not None:
                noisy_x, noisy_u = self.noisy_copies(model, x, y), self.noisy_copies(model, u, None)
                noisy = torch.cat([noisy_x.view(self.K, B, *x.shape[1:]),
                                   noisy_u.view(self.K, len(u), *u.shape[1:])], 1).flatten(0, 1)
            else:
                noisy = self.noisy_copies(model, clean, y)
            parts.append(noisy)
        if self.taps is not None:
            self.taps.clear()
        logits = model(torch.cat(parts) if len(parts) > 1 else parts[0])
        logits = logits.float()
        metrics: Dict[str, float] = {}
        loss = logits.new_zeros(())
        off = 0
        if need_clean:
            lc = F.cross_entropy(logits[:B], y)
            metrics["ce"] = float(lc.detach())
            metrics["acc"] = float((logits[:B].argmax(-1) == y).float().mean())
            loss = loss + self.alpha * lc
            off = N
        if need_noisy:
            ln = logits[off:].view(self.K, N, -1)[:, :B].flatten(0, 1)
            lnoise = F.cross_entropy(ln, y.repeat(self.K))
            metrics["ce_noise"] = float(lnoise.detach())
            loss = loss + self.beta * lnoise
        if self.gamma > 0:
            taps = self.taps
            acts = {n: first_tensor(taps.activations[n]) for n in taps.layers} if taps else {}
            acts[LOGITS] = logits
            d, per_layer = self.layer_distances(acts, N)
            ld = d[:B].mean()
            loss = loss + self.gamma * ld
            metrics["dist"] = float(ld.detach())
            metrics.update({f"dist_{name}": v for name, v in per_layer.items()})
            if u is not None:
                lu = d[B:].mean()
                loss = loss + self.gamma * lu
                metrics["dist_u"] = float(lu.detach())
        if self.taps is not None:
            self.taps.clear()
        return loss, metrics
