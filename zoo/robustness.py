"""Robustness evaluations for any trained classifier, one table and one set of curves.

Built-in evaluations (each a registered function, see :func:`register_evaluation`):

* ``clean``: accuracy, test NLL and expected calibration error (mixup paper Table 1; Guo et al. 2017
  ``ECE = sum_b |B_b|/n * |acc(B_b) - conf(B_b)|`` over equal-width confidence bins).
* ``fgsm``: accuracy on white-box FGSM examples ``x + eps * sign(grad_x CE(f(x), y))`` clipped to the
  input range, for each ``eps`` (thesis Table 7).
* ``noise``: accuracy under additive Gaussian noise ``x + N(0, std^2)`` of growing ``std`` (Lipschitz paper).
* ``deform``: novel deformations of the mixup paper's Table 4 (thesis ch. 4): random rotation
  ``U(-d, d)``, random shear ``U(-d, d)``, zoom in (60 %, 80 % rescale) and out (120 %, 140 %).
* ``occlusion``: one random ``16 x 16`` zero box per image, centre uniform, clipped at borders (Cutout /
  NFM 10.4.4).

Results are flat ``{column: float}`` dicts. A column ``"group/value"`` (``"fgsm/0.1"``) is a point of a
curve: :func:`plot_curves` draws one panel per group. Other issues add columns without editing this file::

    @register_evaluation("invariance")
    def invariance(model, x, y, ctx):           # ctx: EvalContext (device, batch_size, seed, options)
        return {"invariance": ...}

All random corruptions use a generator seeded by ``ctx.seed``: every model sees the same test images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EvalContext", "register_evaluation", "list_evaluations", "evaluate_robustness", "predict",
           "expected_calibration_error", "fgsm_attack", "gaussian_noise", "rotate", "shear", "zoom", "occlude",
           "affine", "robustness_table", "plot_curves", "DEFAULT_EVALUATIONS"]

EvalFn = Callable[[nn.Module, Tensor, Tensor, "EvalContext"], Dict[str, float]]
_EVALUATIONS: Dict[str, EvalFn] = {}
DEFAULT_EVALUATIONS = ("clean", "fgsm", "noise", "deform", "occlusion")


@dataclass
class EvalContext:
    """What every evaluation gets besides ``(model, x, y)``.

    Attributes:
        device: where to run the model. batch_size: evaluation chunk size. seed: seeds the corruptions.
        clip: the valid input range ``(lo, hi)`` (images in ``[0, 1]`` by default; ``None``: no clipping).
        options: per-evaluation settings, e.g. ``{"fgsm": {"eps": [0.1]}}`` or anything an added
            evaluation reads (``ctx.opt("invariance", "layers", None)``).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 500
    seed: int = 0
    clip: Optional[tuple] = (0.0, 1.0)
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def opt(self, evaluation: str, key: str, default: Any) -> Any:
        return self.options.get(evaluation, {}).get(key, default)

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded by ``seed`` and ``salt`` (one stream per evaluation)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    def clamp(self, x: Tensor) -> Tensor:
        return x if self.clip is None else x.clamp(*self.clip)


def register_evaluation(name: str) -> Callable[[EvalFn], EvalFn]:
    """Decorator: register ``fn(model, x, y, ctx) -> {column: float}`` as evaluation ``name``."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"evaluation name must be a non-empty string without '/', got {name!r}")

    def deco(fn: EvalFn) -> EvalFn:
        if name in _EVALUATIONS and _EVALUATIONS[name] is not fn:
            raise ValueError(f"evaluation {name!r} is already registered by {_EVALUATIONS[name].__module__}")
        _EVALUATIONS[name] = fn
        return fn
    return deco


def list_evaluations() -> List[str]:
    """Registered evaluations: the built-ins first, then added ones in registration order."""
    return list(DEFAULT_EVALUATIONS) + [n for n in _EVALUATIONS if n not in DEFAULT_EVALUATIONS]


# ---------------------------------------------------------------------------------------------------------
# primitives
# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 500, device: Optional[torch.device] = None) -> Tensor:
    """Logits ``(N, C)`` (float32, on CPU) of ``model`` in eval mode on ``x`` ``(N, ...)``, in chunks."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out)


def expected_calibration_error(probs: Tensor, y: Tensor, n_bins: int = 15) -> float:
    """``ECE = sum_b (|B_b| / n) |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width bins of the top-class
    confidence (Guo et al., 2017). ``probs``: ``(N, C)`` probabilities; ``y``: ``(N,)`` labels."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, pred = probs.max(-1)
    correct = (pred == y).float()
    bins = (conf * n_bins).ceil().clamp(1, n_bins).long() - 1             # (0, 1/n] -> bin 0, ...
    acc_sum = torch.zeros(n_bins).index_add_(0, bins, correct)
    conf_sum = torch.zeros(n_bins).index_add_(0, bins, conf.float())
    return float((acc_sum - conf_sum).abs().sum() / max(len(y), 1))


def fgsm_attack(model: nn.Module, x: Tensor, y: Tensor, eps: float, clip: Optional[tuple] = (0.0, 1.0)) -> Tensor:
    """White-box FGSM (Goodfellow et al., 2015): ``x + eps * sign(grad_x CE(f(x), y))``, clipped.

    The model runs in eval mode; its parameters get no gradient."""
    was = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y)
        (grad,) = torch.autograd.grad(loss, x)
    model.train(was)
    adv = x.detach() + eps * grad.sign()
    return adv if clip is None else adv.clamp(*clip)


def gaussian_noise(x: Tensor, std: float, generator: Optional[torch.Generator] = None,
                   clip: Optional[tuple] = (0.0, 1.0)) -> Tensor:
    """``x + N(0, std^2)`` elementwise, clipped to ``clip``."""
    noisy = x + std * torch.randn(x.shape, generator=generator).to(x)
    return noisy if clip is None else noisy.clamp(*clip)


def affine(x: Tensor, theta: Tensor) -> Tensor:
    """Warp images ``x`` ``(B, C, H, W)`` by ``theta`` ``(B, 2, 3)``: output pixel ``p`` (normalised
    coordinates in ``[-1, 1]``) takes the bilinear input value at ``theta @ [p, 1]``; outside is 0."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _uniform(n: int, bound: float, generator: Optional[torch.Generator]) -> Tensor:
    return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def rotate(x: Tensor, degrees: float | Tensor) -> Tensor:
    """Rotate each image by ``degrees`` (a float, or ``(B,)`` per image) about its centre."""
    a = torch.as_tensor(degrees, dtype=torch.float64).expand(x.shape[0]) * math.pi / 180
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    return affine(x, theta)


def shear(x: Tensor, degrees: float | Tensor) -> Tensor:
    """Horizontal shear by angle ``degrees`` (``x' = x + tan(angle) y``), a float or ``(B,)``."""
    t = torch.tan(torch.as_tensor(degrees, dtype=torch.float64).expand(x.shape[0]) * math.pi / 180)
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 1] = 1.0, t, 1.0
    return affine(x, theta)


def zoom(x: Tensor, rescale: float) -> Tensor:
    """Rescale about the centre: ``rescale < 1`` zooms in (the central ``rescale`` fraction fills the image),
    ``rescale > 1`` zooms out (the image shrinks by ``1 / rescale``, zero border); mixup Table 4's %."""
    if rescale <= 0:
        raise ValueError(f"rescale must be > 0, got {rescale}")
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = rescale
    return affine(x, theta)


def occlude(x: Tensor, size: int = 16, generator: Optional[torch.Generator] = None, value: float = 0.0) -> Tensor:
    """One ``size x size`` box of ``value`` per image, centre uniform over the image, clipped at the border
    (Cutout, DeVries & Taylor 2017)."""
    B, _, H, W = x.shape
    cy = torch.randint(H, (B,), generator=generator)
    cx = torch.randint(W, (B,), generator=generator)
    rows, cols = torch.arange(H), torch.arange(W)
    lo_y, lo_x = cy - size // 2, cx - size // 2
    in_y = (rows[None] >= lo_y[:, None]) & (rows[None] < lo_y[:, None] + size)      # (B, H)
    in_x = (cols[None] >= lo_x[:, None]) & (cols[None] < lo_x[:, None] + size)      # (B, W)
    box = (in_y[:, :, None] & in_x[:, None, :])[:, None].to(x.device)                # (B, 1, H, W)
    return torch.where(box, torch.as_tensor(value, dtype=x.dtype, device=x.device), x)


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, ctx: EvalContext) -> float:
    return float((predict(model, x, ctx.batch_size, ctx.device).argmax(-1) == y).float().mean())


# ---------------------------------------------------------------------------------------------------------
# registered evaluations
# ---------------------------------------------------------------------------------------------------------
@register_evaluation("clean")
def eval_clean(model: nn.Module, x: Tensor, y: Tensor, ctx: EvalContext) -> Dict[str, float]:
    logits = predict(model, x, ctx.batch_size, ctx.device)
    probs = logits.softmax(-1)
    return {"acc": float((logits.argmax(-1) == y).float().mean()), "nll": float(F.cross_entropy(logits, y)),
            "ece": expected_calibration_error(probs, y, ctx.opt("clean", "bins", 15))}


@register_evaluation("fgsm")
def eval_fgsm(model: nn.Module, x: Tensor, y: Tensor, ctx: EvalContext) -> Dict[str, float]:
    out = {}
    for eps in ctx.opt("fgsm", "eps", [0.05, 0.1, 0.2, 0.3]):
        correct = 0
        for i in range(0, len(x), ctx.batch_size):
            xb, yb = x[i:i + ctx.batch_size].to(ctx.device), y[i:i + ctx.batch_size].to(ctx.device)
            adv = fgsm_attack(model, xb, yb, eps, ctx.clip)
            with torch.no_grad():
                correct += int((model(adv).argmax(-1) == yb).sum())
        out[f"fgsm/{eps:g}"] = correct / len(x)
    return out


@register_evaluation("noise")
def eval_noise(model: nn.Module, x: Tensor, y: Tensor, ctx: EvalContext) -> Dict[str, float]:
    g = ctx.generator(1)
    return {f"noise/{s:g}": _accuracy(model, gaussian_noise(x, s, g, ctx.clip), y, ctx)
            for s in ctx.opt("noise", "std", [0.1, 0.2, 0.3, 0.5, 0.8])}


@register_evaluation("deform")
def eval_deform(model: nn.Module, x: Tensor, y: Tensor, ctx: EvalContext) -> Dict[str, float]:
    g = ctx.generator(2)
    out = {}
    for d in ctx.opt("deform", "rotation", [20.0, 40.0]):
        out[f"rot/{d:g}"] = _accuracy(model, rotate(x, _uniform(len(x), d, g)), y, ctx)
    for d in ctx.opt("deform", "shear", [28.6, 57.3]):
        out[f"shear/{d:g}"] = _accuracy(model, shear(x, _uniform(len(x), d, g)), y, ctx)
    for r in ctx.opt("deform", "zoom", [0.6, 0.8, 1.2, 1.4]):
        out[f"zoom/{r:g}"] = _accuracy(model, zoom(x, r), y, ctx)
    return out


@register_evaluation("occlusion")
def eval_occlusion(model: nn.Module, x: Tensor, y: Tensor, ctx: EvalContext) -> Dict[str, float]:
    size = ctx.opt("occlusion", "size", 16)
    return {f"occl{size}": _accuracy(model, occlude(x, size, ctx.generator(3)), y, ctx)}


def evaluate_robustness(model: nn.Module, x: Tensor, y: Tensor, evaluations: Optional[Iterable[str]] = None,
                        ctx: Optional[EvalContext] = None, **ctx_kwargs: Any) -> Dict[str, float]:
    """Run ``evaluations`` (default: every registered one) and merge their columns.

    Args:
        x, y: test images ``(N, C, H, W)`` and labels ``(N,)``.
        ctx: an :class:`EvalContext`, or its fields as keyword arguments.
    """
    ctx = ctx or EvalContext(**ctx_kwargs)
    names = list_evaluations() if evaluations is None else list(evaluations)
    unknown = [n for n in names if n not in _EVALUATIONS]
    if unknown:
        raise ValueError(f"unknown evaluations {unknown}; registered: {list_evaluations()}")
    was = model.training
    model.eval()
    out: Dict[str, float] = {}
    try:
        for n in names:
            out.update(_EVALUATIONS[n](model, x, y, ctx))
    finally:
        model.train(was)
    return out


# ---------------------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------------------
def robustness_table(results: Mapping[str, Mapping[str, float]], columns: Optional[Sequence[str]] = None,
                     label: str = "model", digits: int = 3,
                     stds: Optional[Mapping[str, Mapping[str, float]]] = None) -> str:
    """One markdown table: a row per entry of ``results`` (``{row label: {column: value}}``); with ``stds``
    (the same layout, e.g. the spread over seeds) a cell reads ``mean ± std``."""
    from .engine import markdown_table

    if columns is None:
        columns = []
        for r in results.values():
            columns += [c for c in r if c not in columns]
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731

    def cell(name: str, c: str) -> str:
        if c not in results[name]:
            return "-"
        std = (stds or {}).get(name, {}).get(c)
        return fmt(results[name][c]) + (f" ± {std:.{digits}f}" if std is not None else "")

    rows = [[name] + [cell(name, c) for c in columns] for name in results]
    return markdown_table([label] + list(columns), rows)


def curve_groups(columns: Iterable[str]) -> Dict[str, List[tuple]]:
    """``{"fgsm": [(0.05, "fgsm/0.05"), ...], ...}`` for columns named ``group/number``."""
    groups: Dict[str, List[tuple]] = {}
    for c in columns:
        if "/" in c:
            g, v = c.rsplit("/", 1)
            try:
                groups.setdefault(g, []).append((float(v), c))
            except ValueError:
                continue
    return {g: sorted(v) for g, v in groups.items()}


def plot_curves(results: Mapping[str, Mapping[str, float]], path: Path, title: str = "") -> Optional[Path]:
    """One panel per curve group (accuracy vs epsilon / std / degrees / rescale; invariance score per layer),
    one line per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols: List[str] = []
    for r in results.values():
        cols += [c for c in r if c not in cols]
    groups = curve_groups(cols)
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.0), squeeze=False)
    xlabels = {"fgsm": "FGSM epsilon", "noise": "noise std", "rot": "rotation range (deg)",
               "shear": "shear range (deg)", "zoom": "rescale", "inv": "layer (input first)"}
    ylabels = {"inv": "invariance score (eq. 2)"}
    for ax, (g, pts) in zip(axes[0], groups.items()):
        for i, (name, r) in enumerate(results.items()):
            xs = [v for v, c in pts if c in r]
            base = [r["acc"]] if "acc" in r and g in ("fgsm", "noise", "rot", "shear") else []
            x0 = [0.0] if base else []
            ax.plot(x0 + xs, base + [r[c] for v, c in pts if c in r], marker="o", color=f"C{i}", label=name)
        ax.set_xlabel(xlabels.get(g, g))
        ax.set_ylabel(ylabels.get(g, "accuracy"))
        if g not in ylabels:
            ax.set_ylim(0, 1.02)
        ax.set_title(g)
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
