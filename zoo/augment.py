"""Batched, seeded image noise models and augmentations shared by the invariance family (IRL, DAI, ...).

Every function takes images ``x`` ``(B, C, H, W)`` in ``[0, 1]`` and an optional ``torch.Generator``
(CPU; the per-image parameters are drawn on the CPU and moved to ``x.device``, so a seeded generator gives
the same images on any device). Each image gets its own random parameters; nothing loops over images.

Noise models of the IRL paper (``irl_invariant_representation_learning.txt``, sec. 3, "Image
classification"), following the MXNet augmenters its footnote 2 points to:

* **in-domain** (:func:`in_domain_noise`): brightness and contrast jitter, scales uniform in
  ``[-0.5, 0.5]``, then AlexNet PCA lighting noise of scale 0.1;
* **out-of-domain** (:func:`out_of_domain_noise`): hue and saturation jitter, scales uniform in
  ``[-0.5, 0.5]``; on images with other than 3 channels the grayscale analogue, a tone-curve (gamma)
  jitter ``x ** 2^(2u)``, ``u ~ U[-0.5, 0.5]`` (hue and saturation do not exist there; like them it is
  a non-linear change of intensities that brightness/contrast, being affine, never produce);
* **adversarial**: FGSM on the fly, :func:`zoo.robustness.fgsm_attack` (needs the model, so it lives in
  :mod:`zoo.methods.irl`).

The data-augmentation-invariance paper's scheme (``data_augmentation_invariance.txt``, appendix A, the
"heavier" scheme of its code): affine transformations (rotation, translation, shear, zoom), contrast
``x' = c (x - mean x) + mean x`` and brightness ``x' = x + d``, each parameter from a normal distribution
centred in its range with std a quarter of the range, truncated to the range (:func:`dai_augment`). For the
invariance score the paper uses "exactly the same transformations, but instead of randomly sampling for the
parameter ranges [...], we halve the range and sample from one of the extreme values" (appendix A): every
parameter is the centre of its range plus or minus a quarter of the range, each with probability 1/2
(:func:`halved_extremes`; noise model ``"dai_eval"``, the default of the ``"invariance"`` evaluation).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .robustness import affine, gaussian_noise

__all__ = ["uniform", "truncated_normal", "halved_extremes", "brightness_jitter", "contrast_jitter", "pca_lighting",
           "saturation_jitter", "hue_jitter", "gamma_jitter", "in_domain_noise", "out_of_domain_noise",
           "random_affine", "dai_augment", "dai_eval_augment", "NOISE_MODELS", "get_noise", "IMAGENET_EIGVAL", "IMAGENET_EIGVEC",
           "LUMA", "NoiseRNG"]

NoiseFn = Callable[..., Tensor]

LUMA = (0.299, 0.587, 0.114)                      # ITU-R 601 luma weights (MXNet's gray coefficients)
# AlexNet PCA lighting: eigenvalues / eigenvectors of ImageNet RGB pixel covariance (0-255 scale, as in
# MXNet's LightingAug and fb.resnet.torch); divided by 255 for images in [0, 1].
IMAGENET_EIGVAL = (55.46, 4.794, 1.148)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.321), (0.211, -0.523, 0.311))


# ---------------------------------------------------------------------------------------------------------
# random parameters
# ---------------------------------------------------------------------------------------------------------
def uniform(n: int, lo: float, hi: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(n,)`` float32 draws from ``U[lo, hi]`` on the CPU."""
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def truncated_normal(n: int, lo: float, hi: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(n,)`` draws from ``N((lo + hi) / 2, ((hi - lo) / 4)^2)`` truncated to ``[lo, hi]`` (the DAI paper's
    ``N(a, b)``, its Table 2), by inverse-CDF sampling (exact, no rejection loop)."""
    if hi < lo:
        raise ValueError(f"need lo <= hi, got [{lo}, {hi}]")
    if hi == lo:
        return torch.full((n,), float(lo))
    # the range is +-2 std around the mean: sample the standard normal truncated to [-2, 2]
    normal = torch.distributions.Normal(0.0, 1.0)
    c_lo, c_hi = normal.cdf(torch.tensor(-2.0)), normal.cdf(torch.tensor(2.0))
    u = c_lo + (c_hi - c_lo) * torch.rand(n, generator=generator, dtype=torch.float64).float()
    z = normal.icdf(u.clamp(1e-6, 1 - 1e-6)).clamp(-2.0, 2.0)
    return (lo + hi) / 2 + z * (hi - lo) / 4


def halved_extremes(n: int, lo: float, hi: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(n,)`` draws from the two ends of ``[lo, hi]`` halved around its centre: ``(lo + hi) / 2 +- (hi - lo)
    / 4``, each end with probability 1/2 (the DAI paper's test-time sampling, appendix A)."""
    if hi < lo:
        raise ValueError(f"need lo <= hi, got [{lo}, {hi}]")
    sign = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
    return (lo + hi) / 2 + sign * (hi - lo) / 4


def _per_image(v: Tensor, x: Tensor) -> Tensor:
    """``(B,)`` parameters -> ``(B, 1, 1, 1)`` on ``x``'s device and dtype."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))


def _check(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")


def _luma(x: Tensor) -> Tensor:
    """Per-pixel gray level ``(B, 1, H, W)``: luma weights for 3 channels, else the channel mean."""
    if x.shape[1] == 3:
        w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def _clip(x: Tensor, clip: Optional[tuple]) -> Tensor:
    return x if clip is None else x.clamp(*clip)


# ---------------------------------------------------------------------------------------------------------
# photometric jitters (IRL noise models)
# ---------------------------------------------------------------------------------------------------------
def brightness_jitter(x: Tensor, scale: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """``x * (1 + u)``, ``u ~ U[-scale, scale]`` per image (MXNet ``BrightnessJitterAug``)."""
    _check(x)
    return x * _per_image(1 + uniform(len(x), -scale, scale, generator), x)


def contrast_jitter(x: Tensor, scale: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """``a x + (1 - a) mean(gray(x))``, ``a = 1 + u``, ``u ~ U[-scale, scale]`` per image (MXNet
    ``ContrastJitterAug``: blend with the image's mean gray level)."""
    _check(x)
    a = _per_image(1 + uniform(len(x), -scale, scale, generator), x)
    return a * x + (1 - a) * _luma(x).mean((2, 3), keepdim=True)


def pca_lighting(x: Tensor, std: float = 0.1, eigval: Optional[Sequence[float]] = None,
                 eigvec: Optional[Sequence[Sequence[float]]] = None,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """AlexNet PCA lighting noise (Krizhevsky et al., 2012): ``x + V (a * lambda)`` per image with
    ``a ~ N(0, std^2 I)``: every pixel shifts along the principal colour axes ``V`` of the data.

    Args:
        eigval, eigvec: ``(C,)`` and ``(C, C)`` (eigenvectors as columns) for images in ``[0, 1]``;
            default: ImageNet's for 3 channels; for other channel counts the grayscale analogue, the top
            ImageNet component (the luminance axis) applied equally to every channel.
    """
    _check(x)
    B, C = x.shape[:2]
    if eigval is None:
        if C == 3:
            eigval = [v / 255.0 for v in IMAGENET_EIGVAL]
            eigvec = IMAGENET_EIGVEC
        else:
            eigval = [IMAGENET_EIGVAL[0] / 255.0]
            eigvec = [[1.0] for _ in range(C)]
    val = torch.as_tensor(eigval, dtype=torch.float32)
    vec = torch.as_tensor(eigvec, dtype=torch.float32)
    if vec.shape != (C, len(val)):
        raise ValueError(f"eigvec must be ({C}, {len(val)}), got {tuple(vec.shape)}")
    a = torch.randn(B, len(val), generator=generator) * std                     # (B, P)
    shift = (a * val) @ vec.T                                                   # (B, C)
    return x + shift.to(x).view(B, C, 1, 1)


def saturation_jitter(x: Tensor, scale: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """``a x + (1 - a) gray(x)`` per pixel, ``a = 1 + u``, ``u ~ U[-scale, scale]`` (MXNet
    ``SaturationJitterAug``); needs 3 channels."""
    _check(x)
    if x.shape[1] != 3:
        raise ValueError(f"saturation jitter needs RGB images, got {x.shape[1]} channels")
    a = _per_image(1 + uniform(len(x), -scale, scale, generator), x)
    return a * x + (1 - a) * _luma(x)


def hue_jitter(x: Tensor, scale: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """Rotate the chroma plane of YIQ by ``pi u``, ``u ~ U[-scale, scale]`` per image (MXNet
    ``HueJitterAug``); luma ``Y`` is unchanged. Needs 3 channels."""
    _check(x)
    if x.shape[1] != 3:
        raise ValueError(f"hue jitter needs RGB images, got {x.shape[1]} channels")
    ang = uniform(len(x), -scale, scale, generator) * math.pi
    c, s = ang.cos(), ang.sin()
    rot = torch.zeros(len(x), 3, 3)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    yiq = torch.tensor(_YIQ, dtype=torch.float64)
    t = (torch.linalg.inv(yiq) @ rot.double() @ yiq).float()                  # (B, 3, 3): rgb -> rgb
    return torch.einsum("bij,bjhw->bihw", t.to(x), x)


def gamma_jitter(x: Tensor, scale: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """Tone-curve jitter ``x ** g``, ``g = 2 ** (2u)``, ``u ~ U[-scale, scale]`` per image (``scale = 0.5``:
    ``g`` in ``[0.5, 2]``): the grayscale analogue of hue/saturation jitter used as out-of-domain noise."""
    _check(x)
    g = _per_image(2.0 ** (2 * uniform(len(x), -scale, scale, generator)), x)
    return x.clamp_min(0) ** g


def in_domain_noise(x: Tensor, generator: Optional[torch.Generator] = None, brightness: float = 0.5,
                    contrast: float = 0.5, pca_std: float = 0.1, clip: Optional[tuple] = (0.0, 1.0)) -> Tensor:
    """IRL in-domain noise: brightness then contrast jitter (scales ``U[-0.5, 0.5]``), then PCA lighting
    noise of scale 0.1 (IRL paper, sec. 3)."""
    x = brightness_jitter(x, brightness, generator)
    x = contrast_jitter(x, contrast, generator)
    return _clip(pca_lighting(x, pca_std, generator=generator), clip)


def out_of_domain_noise(x: Tensor, generator: Optional[torch.Generator] = None, hue: float = 0.5,
                        saturation: float = 0.5, clip: Optional[tuple] = (0.0, 1.0)) -> Tensor:
    """IRL out-of-domain noise: hue then saturation jitter (scales ``U[-0.5, 0.5]``) on RGB images; on
    other images its grayscale analogue :func:`gamma_jitter` with scale ``max(hue, saturation)``."""
    _check(x)
    if x.shape[1] == 3:
        x = saturation_jitter(hue_jitter(x, hue, generator), saturation, generator)
    else:
        x = gamma_jitter(x, max(hue, saturation), generator)
    return _clip(x, clip)


# ---------------------------------------------------------------------------------------------------------
# geometric + DAI scheme
# ---------------------------------------------------------------------------------------------------------
def random_affine(x: Tensor, rotation: float = 22.5, shift: float = 0.1, shear: float = 8.59, zoom: float = 0.15,
                  flip: float = 0.0, generator: Optional[torch.Generator] = None,
                  sampler: Callable[..., Tensor] = truncated_normal) -> Tensor:
    """Random affine warp per image through :func:`zoo.robustness.affine` (zero fill outside).

    Args:
        rotation: degrees, angle in ``[-rotation, rotation]``. shift: fraction of the side, per axis.
        shear: degrees. zoom: coordinate scale in ``[1 - zoom, 1 + zoom]`` (``< 1`` zooms in).
        flip: probability of a horizontal flip. sampler: ``sampler(n, lo, hi, generator)`` for the
            ranges (default the DAI paper's truncated normal; :func:`uniform` also works).
    """
    _check(x)
    B = len(x)
    a = sampler(B, -rotation, rotation, generator).double() * math.pi / 180
    sh = sampler(B, -shear, shear, generator).double() * math.pi / 180
    s = sampler(B, 1 - zoom, 1 + zoom, generator).double()
    tx = sampler(B, -shift, shift, generator).double() * 2                       # normalised coords span 2
    ty = sampler(B, -shift, shift, generator).double() * 2
    fl = torch.where(torch.rand(B, generator=generator) < flip, -1.0, 1.0).double()
    rot = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], -2)
    shm = torch.zeros(B, 2, 2, dtype=torch.float64)
    shm[:, 0, 0], shm[:, 0, 1], shm[:, 1, 1] = 1.0, sh.tan(), 1.0
    lin = rot @ shm * s.view(B, 1, 1)
    lin[:, :, 0] = lin[:, :, 0] * fl.view(B, 1)                                 # flip: mirror the x coordinate
    theta = torch.cat([lin, torch.stack([tx, ty], -1).unsqueeze(-1)], -1)       # (B, 2, 3)
    return affine(x, theta)


def dai_augment(x: Tensor, generator: Optional[torch.Generator] = None, rotation: float = 22.5, shift: float = 0.1,
                shear: float = 8.59, zoom: float = 0.15, flip: float = 0.0,
                contrast: Tuple[float, float] = (0.5, 1.5), brightness: float = 0.25,
                clip: Optional[tuple] = (0.0, 1.0), sampler: Callable[..., Tensor] = truncated_normal) -> Tensor:
    """The DAI paper's augmentation (appendix A; ranges of its code's "heavier" CIFAR scheme): random
    affine warp, then contrast ``c (x - mean x) + mean x``, ``c ~ N(0.5, 1.5)``, then brightness
    ``x + d``, ``d ~ N(-0.25, 0.25)`` (``N(a, b)``: truncated normal on ``[a, b]``). ``flip`` is the
    probability of a horizontal flip (0 here: digits are not mirror-invariant). ``sampler(n, lo, hi,
    generator)`` draws every ranged parameter (default the truncated normal of training;
    :func:`halved_extremes` for the invariance score, :func:`dai_eval_augment`)."""
    x = random_affine(x, rotation, shift, shear, zoom, flip, generator, sampler)
    c = _per_image(sampler(len(x), contrast[0], contrast[1], generator), x)
    m = x.mean((1, 2, 3), keepdim=True)
    x = c * (x - m) + m
    x = x + _per_image(sampler(len(x), -brightness, brightness, generator), x)
    return _clip(x, clip)


def dai_eval_augment(x: Tensor, generator: Optional[torch.Generator] = None, **kwargs) -> Tensor:
    """The DAI paper's transformation ``G`` for the invariance score (appendix A): :func:`dai_augment` with
    every range halved and one of its two ends drawn (:func:`halved_extremes`); takes the options of
    :func:`dai_augment` (the *training* ranges, which it halves)."""
    return dai_augment(x, generator, sampler=halved_extremes, **kwargs)


def _gaussian(x: Tensor, generator: Optional[torch.Generator] = None, std: float = 0.3,
              clip: Optional[tuple] = (0.0, 1.0)) -> Tensor:
    return gaussian_noise(x, std, generator, clip)


NOISE_MODELS: Dict[str, NoiseFn] = {"in_domain": in_domain_noise, "out_of_domain": out_of_domain_noise,
                                    "dai": dai_augment, "dai_eval": dai_eval_augment, "gaussian": _gaussian}
"""Noise models by name: ``fn(x, generator, **kwargs) -> x~``."""


def get_noise(noise: Union[str, NoiseFn], **kwargs) -> Callable[[Tensor, Optional[torch.Generator]], Tensor]:
    """``fn(x, generator)`` for a registered noise name (with its keyword options) or a callable."""
    if callable(noise):
        return (lambda x, g: noise(x, g, **kwargs)) if kwargs else noise
    if noise not in NOISE_MODELS:
        raise ValueError(f"unknown noise {noise!r}; choose one of {sorted(NOISE_MODELS)} or pass a callable")
    fn = NOISE_MODELS[noise]
    return lambda x, g: fn(x, g, **kwargs)


class NoiseRNG:
    """A CPU ``torch.Generator`` for a method's noise draws, with ``state_dict`` so checkpoints resume it.

    ``seed=None`` draws the seed from the global torch RNG (so ``seed_everything`` fixes it)."""

    def __init__(self, seed: Optional[int] = None) -> None:
        if seed is None:
            seed = int(torch.randint(2 ** 62, ()))
        self.generator = torch.Generator().manual_seed(int(seed))

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"].cpu() if torch.is_tensor(state["state"]) else state["state"])
