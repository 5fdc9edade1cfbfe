"""Data augmentation invariance (DAI; ``data_augmentation_invariance.txt``, eq. 1-4) on any classifier, and
the per-layer invariance score (eq. 2) as the harness evaluation ``"invariance"``.

With ``f^(l)(x)`` in ``R^D`` the activations of layer ``l`` (eq. 1)::

    d^(l)(x_i, x_j) = (1/D) ||f^(l)(x_i) - f^(l)(x_j)||^2                                  (mean square difference)

Invariance score of a transformation ``G`` on a set of ``N`` images (eq. 2; 1 when ``f(G(x_i)) = f(x_i)``)::

    S_i^(l) = 1 - d^(l)(x_i, G(x_i)) / [ (1/N^2) sum_{j,k} d^(l)(x_j, x_k) ]

Training: each batch ``B`` holds ``M`` augmentations of each seed image, ``S_k`` the augmentations of seed
``k`` (eq. 3-4)::

    L_inv^(l) = [ sum_k (1/|S_k|^2) sum_{i,j in S_k} d^(l)(x_i, x_j) ] / [ (1/|B|^2) sum_{i,j in B} d^(l)(x_i, x_j) ]
    L = (1 - alpha) L_obj + sum_l alpha^(l) L_inv^(l),   sum_l alpha^(l) = alpha = 0.1,  alpha^(L) = 10 alpha^(1)

with ``alpha^(l)`` growing exponentially with depth. The paper states that ``L_inv`` does not depend on the
batch size nor on ``M``; that holds for the *mean* over seeds ``k`` in the numerator, our default
(``seed_reduction="mean"``); ``"sum"`` is eq. 3 as printed (it grows with the number of seeds).

Both sums of pairwise distances use the identity ``sum_{i,j in S} ||a_i - a_j||^2 = 2 |S| sum_{i in S}
||a_i - mean_S a||^2``, computed for every group at once with a reshape (the method's copy-major batches) or
a one-hot group matrix (any seed ids); the batch term is that within-seed sum plus
``sum_k |S_k| ||mean_k - mean_B||^2``. Matrix operations, no loop over samples or pairs; ``O(|B| D)``
instead of the ``O(|B|^2 D)`` distance matrix.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..augment import NoiseRNG, get_noise
from ..robustness import EvalContext, register_evaluation
from ..taps import LayerTaps, stage_layers
from .base import register_method
from .irl import TapsNoiseMethod, first_tensor

__all__ = ["DAI", "dai_invariance_loss", "exponential_layer_weights", "invariance_scores", "eval_invariance"]


def dai_invariance_loss(a: Tensor, groups: Union[Tensor, int], seed_reduction: str = "mean") -> Tensor:
    """``L_inv^(l)`` (eq. 3) of one layer.

    Args:
        a: ``(B, ...)`` activations of the batch (flattened per sample).
        groups: ``(B,)`` integer seed id of each sample (samples with equal ids form ``S_k``), or an int
            ``M``: the batch is ``M`` copy-major blocks ``[aug 1 of every seed; ...; aug M of every seed]``
            (what :class:`DAI` builds; a reshape replaces the one-hot group matrix).
        seed_reduction: ``"mean"`` over seeds (batch-size independent) or ``"sum"`` (eq. 3 as printed).

    Returns:
        scalar loss.
    """
    if seed_reduction not in ("mean", "sum"):
        raise ValueError(f"seed_reduction must be 'mean' or 'sum', got {seed_reduction!r}")
    a = a.flatten(1).float()
    # (1/|S_k|^2) sum_{i,j in S_k} ||a_i - a_j||^2 = (2/|S_k|) sum_{i in S_k} ||a_i - mean_{S_k}||^2, and the
    # batch's sum of squares around its mean = within-seed part + sum_k |S_k| ||mean_{S_k} - mean_B||^2
    if isinstance(groups, int):
        if groups < 1 or a.shape[0] % groups:
            raise ValueError(f"a batch of {a.shape[0]} is not {groups} equal blocks of augmentations")
        blocks = rearrange(a, "(m k) d -> m k d", m=groups)                    # (M, K, D)
        means = blocks.mean(0)                                                  # (K, D)
        within = (blocks - means).pow(2).sum(-1).sum(0)                         # (K,)
        counts = torch.full_like(within, float(groups))                        # (K,) |S_k| = M
    else:
        if a.shape[0] != groups.shape[0]:
            raise ValueError(f"{a.shape[0]} activations but {groups.shape[0]} group ids")
        _, idx = torch.unique(groups, return_inverse=True)
        onehot = F.one_hot(idx, -1).to(a.dtype)                              # (B, K)
        counts = onehot.sum(0)                                              # (K,) |S_k|
        means = (onehot.T @ a) / counts[:, None]                            # (K, D)
        within = onehot.T @ (a - means[idx]).pow(2).sum(1)                  # (K,)
    per_seed = 2 * within / counts                                          # (K,)
    num = per_seed.mean() if seed_reduction == "mean" else per_seed.sum()
    grand = (counts @ means) / counts.sum()                                 # (D,) batch mean
    between = (counts * (means - grand).pow(2).sum(-1)).sum()
    den = 2 * (within.sum() + between) / counts.sum()                       # (1/|B|^2) sum_{i,j in B} ...
    return num / den.clamp_min(1e-12)                                        # the 1/D of d^(l) cancels


def exponential_layer_weights(n: int, alpha: float = 0.1, ratio: float = 10.0) -> List[float]:
    """``alpha^(l) = c r^(l-1)``, ``l = 1..n``, with ``alpha^(n) = ratio * alpha^(1)`` and ``sum = alpha``."""
    if n < 1:
        raise ValueError(f"need at least one layer, got {n}")
    r = ratio ** (1.0 / (n - 1)) if n > 1 else 1.0
    raw = [r ** i for i in range(n)]
    return [alpha * v / sum(raw) for v in raw]


@register_method("dai")
class DAI(TapsNoiseMethod):
    """Data augmentation invariance (eq. 3-4) on any ``nn.Module``.

    Batches ``{"x", "y"}`` of seed images are expanded in the step to ``M`` augmentations of each seed
    (in-batch augmentation; ``M * B`` images, copy-major). A batch that already holds the augmentations
    passes their seed ids as ``"group"`` ``(B,)`` and is used as given.

    Args:
        alpha: total invariance weight ``sum_l alpha^(l)`` (paper 0.1); ``0`` is in-batch augmentation only.
        M: augmentations per seed image.
        layers: where ``L_inv`` is computed (names / :func:`zoo.taps.default_layers` indices); default the
            output of every feature stage, ``stage_layers(model)`` (paper: every conv ReLU of All-CNN, every
            residual block of WRN, every dense block of DenseNet).
        layer_weights: explicit ``alpha^(l)``; default exponential, last ``= ratio *`` first, summing to alpha.
        ratio: ``alpha^(L) / alpha^(1)`` (paper 10).
        seed_reduction: ``"mean"`` or ``"sum"`` over seeds in the numerator of eq. 3 (see the module doc).
        augment: noise model name or ``fn(x, generator)`` (default ``"dai"``: the paper's affine + contrast +
            brightness, :func:`zoo.augment.dai_augment`); augment_kwargs: its options.
        keep_batch_size: use only the first ``B // M`` seeds so a step sees ``B`` images, as in the paper.
        seed: seeds the augmentation generator (``None``: from the global torch RNG at ``setup``).
    """

    rng_key = "dai_rng"

    def __init__(self, alpha: float = 0.1, M: int = 2, layers: Optional[Sequence[Union[int, str]]] = None,
                 layer_weights: Optional[Sequence[float]] = None, ratio: float = 10.0, seed_reduction: str = "mean",
                 augment: Any = "dai", augment_kwargs: Optional[dict] = None, keep_batch_size: bool = False,
                 seed: Optional[int] = None) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if int(M) < 1:
            raise ValueError(f"M must be >= 1, got {M}")
        if ratio <= 0:
            raise ValueError(f"ratio must be > 0, got {ratio}")
        if seed_reduction not in ("mean", "sum"):
            raise ValueError(f"seed_reduction must be 'mean' or 'sum', got {seed_reduction!r}")
        if isinstance(layers, (int, str)):
            layers = [layers]
        super().__init__()
        self.augment_kwargs = dict(augment_kwargs or {})
        self.augment_fn = get_noise(augment, **self.augment_kwargs)
        self.hparams = dict(alpha=alpha, M=int(M), layers=None if layers is None else list(layers),
                            layer_weights=None if layer_weights is None else list(layer_weights), ratio=ratio,
                            seed_reduction=seed_reduction,
                            augment=augment if isinstance(augment, str) else getattr(augment, "__name__", "callable"),
                            augment_kwargs=self.augment_kwargs, keep_batch_size=keep_batch_size, seed=seed)
        self.alpha, self.M, self.ratio, self.seed_reduction = float(alpha), int(M), float(ratio), seed_reduction
        self.layer_refs = None if layers is None else list(layers)
        self.layer_weights_arg = None if layer_weights is None else [float(w) for w in layer_weights]
        self.keep_batch_size, self.seed = keep_batch_size, seed
        self.rng: Optional[NoiseRNG] = None
        self.taps: Optional[LayerTaps] = None
        self.layers: List[str] = []
        self.weights: List[float] = []

    def setup(self, model: nn.Module, total_steps: Optional[int] = None) -> None:
        """Resolve the layers and ``alpha^(l)``, attach capturing taps (when ``alpha > 0``), seed the noise."""
        super().setup(model, total_steps)
        self.remove()
        self.rng = NoiseRNG(self.seed)
        refs = self.layer_refs if self.layer_refs is not None else stage_layers(model)
        self.taps = LayerTaps(model, refs, capture=True)
        self.layers = list(self.taps.layers)
        if self.layer_weights_arg is not None:
            if len(self.layer_weights_arg) != len(self.layers):
                raise ValueError(f"layer_weights has {len(self.layer_weights_arg)} entries for {self.layers}")
            self.weights = list(self.layer_weights_arg)
        else:
            self.weights = exponential_layer_weights(len(self.layers), self.alpha, self.ratio)
        if self.alpha > 0:
            self.taps.attach()

    def augment_batch(self, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``M`` augmentations of each seed: ``(M * B, ...)`` images, labels and seed ids, copy-major."""
        if self.keep_batch_size:
            n = max(x.shape[0] // self.M, 1)
            x, y = x[:n], y[:n]
        if self.rng is None:
            raise ValueError("DAI.setup(model) must be called before augment_batch()")
        B = x.shape[0]
        with torch.no_grad():
            xa = self.augment_fn(x.repeat(self.M, *([1] * (x.dim() - 1))), self.rng.generator)
        groups = torch.arange(B, device=x.device).repeat(self.M)
        return xa, y.repeat(self.M), groups

    def loss(self, model: nn.Module, batch: dict, step: int) -> Tuple[Tensor, Dict[str, float]]:
        taps = self.taps
        if self.rng is None or taps is None:                         # never set up, or removed since
            raise ValueError("DAI.setup(model) must be called before loss()")
        if self.alpha > 0 and taps.model is not model:
            raise ValueError("DAI.setup(model) was called with a different model")
        if "group" in batch:
            x, y, groups = batch["x"], batch["y"], batch["group"]
        else:
            x, y, _ = self.augment_batch(batch["x"], batch["y"])
            groups = self.M                                          # copy-major blocks: reshape, no one-hot
        taps.clear()
        logits = model(x).float()
        l_obj = F.cross_entropy(logits, y)
        metrics = {"ce": float(l_obj.detach()), "acc": float((logits.argmax(-1) == y).float().mean())}
        if self.alpha == 0:
            return l_obj, metrics
        loss = (1 - self.alpha) * l_obj
        for name, w in zip(self.layers, self.weights):
            li = dai_invariance_loss(first_tensor(taps.activations[name]), groups, self.seed_reduction)
            loss = loss + w * li
            metrics[f"inv_{name}"] = float(li.detach())
        taps.clear()
        return loss, metrics


# ---------------------------------------------------------------------------------------------------------
# invariance score (eq. 2)
# ---------------------------------------------------------------------------------------------------------
def invariance_scores(model: nn.Module, x: Tensor, transform: Callable[[Tensor], Tensor],
                      layers: Optional[Sequence[Union[int, str]]] = None, logits: bool = True,
                      batch_size: int = 500, device: Optional[torch.device] = None) -> Dict[str, Tensor]:
    """Per-sample invariance scores ``S_i^(l)`` (eq. 2) of ``model`` (in eval mode, no gradient) on images ``x``.

    Args:
        transform: ``G``: images ``(n, ...)`` -> transformed images (called per chunk; seed it yourself).
        layers: names / :func:`zoo.taps.default_layers` indices (default: all default layers, the input
            first). logits: also score the model output, as the last entry ``"logits"``.

    Returns:
        ``{layer: (N,) scores}`` in depth order. The denominator ``(1/N^2) sum_{j,k} d(x_j, x_k)`` is
        ``2 (mean_j ||a_j||^2 - ||mean_j a_j||^2) / D``, accumulated in float64 over chunks.
    """
    device = device or next(model.parameters()).device
    names = list(LayerTaps(model, layers).layers)
    was = model.training
    model.eval()
    sums: Dict[str, Tensor] = {}
    sqnorm: Dict[str, float] = {}
    dists: Dict[str, List[Tensor]] = {}
    dims: Dict[str, int] = {}
    try:
        with torch.no_grad(), LayerTaps(model, names, detach=True) as taps:
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(device)
                out = model(xb)
                clean = {n: first_tensor(taps.activations[n]).flatten(1).double() for n in names}
                if logits:
                    clean["logits"] = out.flatten(1).double()
                out_t = model(transform(xb))
                moved = {n: first_tensor(taps.activations[n]).flatten(1).double() for n in names}
                if logits:
                    moved["logits"] = out_t.flatten(1).double()
                for n, a in clean.items():
                    sums[n] = sums.get(n, 0) + a.sum(0)
                    sqnorm[n] = sqnorm.get(n, 0.0) + float(a.pow(2).sum())
                    dims[n] = a.shape[1]
                    dists.setdefault(n, []).append((a - moved[n]).pow(2).mean(1).cpu())
    finally:
        model.train(was)
    N = len(x)
    out_scores = {}
    for n in sums:
        mean = sums[n] / N
        den = 2 * (sqnorm[n] / N - float(mean.pow(2).sum())) / dims[n]
        out_scores[n] = (1 - torch.cat(dists[n]) / max(den, 1e-30)).float()
    return out_scores


def eval_invariance(model: nn.Module, x: Tensor, y: Tensor, ctx: EvalContext) -> Dict[str, float]:
    """Mean invariance score (eq. 2) per layer: columns ``inv/0`` (the input) ... ``inv/n`` (the logits), in
    the order of ``default_layers(model) + ["logits"]``.

    Options (``ctx.options["invariance"]``): ``layers`` (default all default layers), ``noise`` (the
    transformation ``G``; default ``"dai_eval"``, the paper's protocol: the DAI augmentation with every
    range halved and one of its two ends drawn, appendix A; ``"dai"`` scores the training augmentation
    distribution instead) and ``noise_kwargs``."""
    layers = ctx.opt("invariance", "layers", None)
    fn = get_noise(ctx.opt("invariance", "noise", "dai_eval"), **ctx.opt("invariance", "noise_kwargs", {}))
    g = ctx.generator(6)
    scores = invariance_scores(model, x, lambda xb: fn(xb, g).to(xb), layers, True, ctx.batch_size, ctx.device)
    return {f"inv/{i}": float(s.mean()) for i, s in enumerate(scores.values())}


register_evaluation("invariance")(eval_invariance)
