"""Neural Function Modules (thesis ch. 10, Algorithm 2): sparse top-down attention over earlier layers.

Three pieces:

* rescaling helpers (thesis 10.3.2.2, "automatic type conversion"): :func:`space_to_depth`,
  :func:`depth_to_space`, :func:`upsample_nearest`, :func:`rescale` and :func:`slot_mask`, which bring any
  layer ``(B, C, *S_src)`` onto a query grid ``S_q`` as ``(B, C, slots, *S_q)``. A larger source is cut into
  windows whose positions all stay selectable (space-to-depth, nothing is averaged away); a smaller one is
  upsampled nearest (one slot). Works for 2-D maps, 1-D sequences and vectors ``(B, C)``.
* :class:`NFMAttention`, the block that runs before a module: multi-head top-k attention from the current
  hidden state over every stored layer (plus a null slot), ``h + gamma * sigma(BN(A W_o1)) W_o2``.
* :class:`NFM`, the multi-pass runner: runs any list of modules ``passes`` times, storing every module's
  output in a memory that later modules (and later passes) attend over. By default each stored layer is
  projected to keys/values once and every reader uses that projection, and each layer's keys/values are
  rescaled once per query grid within a forward (a cache), so a layer read by several blocks of the same
  resolution costs one projection and one rescaling.

Shapes use ``B`` batch, ``C`` channels, ``S`` spatial shape (``()``, ``(L,)`` or ``(H, W)``),
``N = prod(S_q)`` query positions, ``L`` attention slots per query position (null slot first).
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "space_to_depth", "depth_to_space", "upsample_nearest", "rescale", "slot_mask", "slots_for",
    "NFMAttention", "NFM", "NFMTrace", "NFMAttentionInfo",
    "PAD_MODES", "TOPK_RULES", "OUT_LAYERS", "SCALES", "PASS_INITS",
]

Size = Tuple[int, ...]

PAD_MODES = ("mask", "replicate")
"""Non-divisible larger sources: ``"mask"`` pads windows with masked slots (score ``-inf``, value 0), so every
source position is exactly one slot; ``"replicate"`` repeats the edge positions (duplicated slots)."""
TOPK_RULES = ("topk_softmax", "reference")
"""``"topk_softmax"``: softmax over the ``k`` largest scores (exactly ``k`` nonzero weights). ``"reference"``:
the authors' code (sparse attention of Ke et al. 2018): softmax over all slots, minus the ``(k+1)``-th largest
probability, clamped at 0 and renormalised; all slots kept when there are at most ``k + 1``."""
OUT_LAYERS = ("linear", "conv3x3")
"""``"linear"``: ``W_o1``, ``W_o2`` are 1x1 maps (width ``heads * d_v`` by default). ``"conv3x3"``: the
authors' code: two 3x3 convolutions, the hidden width the query's channels (2-D queries only)."""
SCALES = ("inv_d_k", "inv_sqrt_d_k")
"""Named score scales: ``1 / d_k`` (thesis text) and ``1 / sqrt(d_k)`` (the authors' code, the Transformer)."""
PASS_INITS = ("copy", "independent")
"""Pass ``k > 1`` module weights start as copies of pass 1 (``"copy"``) or freshly initialised (the code)."""


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}")
    return value


# ----------------------------------------------------------------------------------------------------
# Rescaling (thesis 10.3.2.2)
# ----------------------------------------------------------------------------------------------------
def _as_tuple(v: Union[int, Sequence[int]], nd: int, name: str) -> Size:
    t = (int(v),) * nd if isinstance(v, int) else tuple(int(i) for i in v)
    if len(t) != nd or any(i < 1 for i in t):
        raise ValueError(f"{name} must be a positive int or {nd} positive ints, got {v!r}")
    return t


def space_to_depth(x: torch.Tensor, factor: Union[int, Sequence[int]]) -> torch.Tensor:
    """Cut every ``f_1 x ... x f_d`` window into ``prod(f)`` slots (a pure permutation of the values).

    Shapes: ``(B, C, *S)`` -> ``(B, C, prod(f), *S // f)``; window offsets are in row-major order, so slot
    ``r * f_2 + c`` of output position ``(i, j)`` is input position ``(i f_1 + r, j f_2 + c)``.

    Raises:
        ValueError: a spatial size not divisible by its factor.
    """
    nd = x.dim() - 2
    f = _as_tuple(factor, nd, "factor")
    if any(s % k for s, k in zip(x.shape[2:], f)):
        raise ValueError(f"space_to_depth: spatial size {tuple(x.shape[2:])} is not divisible by factor {f}")
    return _fold_windows(x, f)


def depth_to_space(x: torch.Tensor, factor: Union[int, Sequence[int]]) -> torch.Tensor:
    """Inverse of :func:`space_to_depth`: ``(B, C, prod(f), *S)`` -> ``(B, C, *S * f)``."""
    nd = x.dim() - 3
    f = _as_tuple(factor, nd, "factor")
    if x.shape[2] != math.prod(f):
        raise ValueError(f"depth_to_space: got {x.shape[2]} slots, factor {f} needs {math.prod(f)}")
    grid = x.shape[3:]
    x = x.reshape(x.shape[0], x.shape[1], *f, *grid)
    # (B, C, f_1..f_d, n_1..n_d) -> (B, C, n_1, f_1, ..., n_d, f_d)
    perm = [0, 1] + [p for d in range(nd) for p in (2 + nd + d, 2 + d)]
    return x.permute(perm).reshape(x.shape[0], x.shape[1], *(n * k for n, k in zip(grid, f)))


def upsample_nearest(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour upsampling: output index ``q`` reads input index ``floor(q * S_src / S_q)``.

    Shapes: ``(B, C, *S_src)`` -> ``(B, C, *size)`` (``S_src <= size`` per dimension).
    """
    size = _as_tuple(size, x.dim() - 2, "size")
    if any(n_src > n_q for n_src, n_q in zip(x.shape[2:], size)):
        raise ValueError(f"upsample_nearest: source size {tuple(x.shape[2:])} is larger than {size}")
    return _nearest_resize(x, size)


@functools.lru_cache(maxsize=None)
def _interpolate_is_exact(n_src: int, n_q: int, nd: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``F.interpolate(mode="nearest")`` over ``nd`` spatial dims of a ``dtype`` tensor on ``device``
    maps ``n_src`` to ``n_q`` positions with the index ``floor(q n_src / n_q)`` for every output ``q``.

    It computes ``floor(q * (n_src / n_q))`` in floating point, and which precision depends on the kernel:
    float64 tensors get the exact index for every pair up to 400 on CPU in 1-D and 3-D, but the 2-D kernel
    (and every float32, bfloat16 or float16 tensor) misses it at 1,541 of those pairs (28 -> 46 reads input
    13 at output 23, not 14). So the probe is the same call: ``nd`` spatial dims, float64 for float64 tensors,
    else float32 (exact integers up to 2^24), once per pair."""
    probe = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.arange(n_src, dtype=probe, device=device).view(1, 1, *[1] * (nd - 1), n_src)
    got = F.interpolate(x, size=[1] * (nd - 1) + [n_q], mode="nearest").view(-1).long()
    return torch.equal(got, _nearest_index(n_src, n_q, device))


def _nearest_resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest upsampling ``(B, C, *S_src)`` -> ``(B, C, *size)``, ``S_src <= size``, output ``q`` reads input
    ``floor(q S_src / S_q)``: one ``F.interpolate`` for 1-3 spatial dims (several times faster on CPU, forward
    and backward, than ``index_select`` along the inner dims: docs/nfm.md), ``index_select`` per dim otherwise."""
    dims = [d for d, (n_src, n_q) in enumerate(zip(x.shape[2:], size)) if n_src != n_q]
    if not dims:
        return x
    if (1 <= len(size) <= 3 and x.numel() > 0 and x.is_floating_point()
            and all(_interpolate_is_exact(x.shape[2 + d], size[d], len(size), x.device, x.dtype) for d in dims)):
        return F.interpolate(x, size=tuple(size), mode="nearest")
    for d in dims:
        x = x.index_select(2 + d, _nearest_index(x.shape[2 + d], size[d], x.device))
    return x


def _nearest_index(n_src: int, n_q: int, device) -> torch.Tensor:
    return torch.div(torch.arange(n_q, device=device) * n_src, n_q, rounding_mode="floor")


def slots_for(src: Sequence[int], query: Sequence[int]) -> Size:
    """Window factor per dimension: ``ceil(S_src / S_q)`` where the source is larger, else 1."""
    return tuple(-(-s // q) if s > q else 1 for s, q in zip(src, query))


def _fold_windows(x: torch.Tensor, f: Size) -> torch.Tensor:
    """``(B, C, *(size * f))`` -> ``(B, C, prod(f), *size)``, window offsets row-major."""
    nd = len(f)
    b, c = x.shape[:2]
    size = tuple(n // k for n, k in zip(x.shape[2:], f))
    if all(k == 1 for k in f):
        return x.reshape(b, c, 1, *size)
    x = x.reshape(b, c, *[v for n, k in zip(size, f) for v in (n, k)])
    perm = [0, 1] + [2 + 2 * d + 1 for d in range(nd)] + [2 + 2 * d for d in range(nd)]
    return x.permute(perm).reshape(b, c, math.prod(f), *size)


def _grid_sizes(src: Size, query: Size) -> Tuple[Size, Size, Size]:
    """Source and query spatial shapes with the same number of dims (a vector is promoted to singleton
    dims; a vector query sees a map as one position), and the window factor per dim."""
    q = tuple(query)
    nd_s, nd_q = len(src), len(q)
    if nd_s != nd_q:
        if nd_s == 0:
            src = (1,) * nd_q
        elif nd_q == 0:
            q = (1,) * nd_s
        else:
            raise ValueError(f"cannot rescale a {nd_s}-d layer of spatial size {tuple(src)} onto a {nd_q}-d query "
                             f"grid {q}; mix 1-d and 2-d layers through a vector layer or reshape them first")
    return tuple(src), q, slots_for(src, q)


def _grids(src: torch.Tensor, query_size: Sequence[int]) -> Tuple[torch.Tensor, Size, Size]:
    """Bring source and query to the same number of spatial dims (vectors are promoted)."""
    s, q, f = _grid_sizes(tuple(src.shape[2:]), tuple(query_size))
    return src.reshape(*src.shape[:2], *s), q, f


def _pad_dim(x: torch.Tensor, dim: int, size: int, pad: str) -> torch.Tensor:
    """Pad dim ``dim`` up to ``size`` by repeating its last entry (``"replicate"``) or with zeros (``"mask"``;
    the block masks those slots). One ``cat``: an ``index_select`` of the whole map is several times slower."""
    n = x.shape[dim]
    if n >= size:
        return x
    shape = (*x.shape[:dim], size - n, *x.shape[dim + 1:])
    fill = x.narrow(dim, n - 1, 1).expand(shape) if pad == "replicate" else x.new_zeros(shape)
    return torch.cat([x, fill], dim=dim)


def _window_view(x: torch.Tensor, q: Size, f: Size, pad: str) -> torch.Tensor:
    """``(B, C, *S_src)`` -> ``(B, C, q_1 * f_1, ..., q_d * f_d)`` (identity, nearest upsampling by index for
    non-integer ratios, or padding a non-divisible larger source up to a multiple of the window)."""
    x = _nearest_resize(x, [max(n_src, n_q) for n_src, n_q in zip(x.shape[2:], q)])   # smaller dims up
    for d, (n_src, n_q, k) in enumerate(zip(x.shape[2:], q, f)):
        if n_src != n_q * k:
            x = _pad_dim(x, 2 + d, n_q * k, pad)                        # a larger dim, not whole windows
    return x


def _padded(src: Size, q: Size, f: Size) -> bool:
    return any(s > n and s != n * k for s, n, k in zip(src, q, f))


def _slot_mask(src: Size, q: Size, f: Size, device=None) -> torch.Tensor:
    """``(prod(f), *q)`` bool, True where window slot ``r`` of query position ``i`` is a real source position
    (``i f + r < S_src`` in every larger dimension)."""
    nd = len(q)
    m = torch.ones([1] * (2 * nd), dtype=torch.bool, device=device)
    for d, (s, n, k) in enumerate(zip(src, q, f)):
        if s > n:
            shape = [1] * (2 * nd)
            shape[d], shape[nd + d] = k, n
            pos = torch.arange(n, device=device)[None, :] * k + torch.arange(k, device=device)[:, None]
            m = m & (pos < s).view(shape)
    return m.expand(*f, *q).reshape(math.prod(f), *q)


def slot_mask(src_size: Sequence[int], query_size: Sequence[int]) -> torch.Tensor:
    """Which slots of :func:`rescale` hold a real source position: ``(slots, *query_size)`` bool.

    All True unless a larger source is not a whole number of windows; then the positions that masked
    padding adds (zeros in :func:`rescale`'s output) are False, and the block gives them the score ``-inf``.
    """
    src, q, f = _grid_sizes(tuple(src_size), tuple(query_size))
    return _slot_mask(src, q, f).reshape(math.prod(f), *query_size)


class _RepeatUpsample(torch.autograd.Function):
    """Nearest upsampling by whole factors ``u`` of 1-3 spatial dims: ``repeat_interleave`` forward, sum
    pooling over each ``u`` window backward (2.5-3x faster forward+backward on CPU than a broadcast copy,
    whose backward is a strided reduction; docs/nfm.md). The backward is made
    of differentiable ops, so double backward works."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, u: Size) -> torch.Tensor:
        ctx.u = u
        for d, k in enumerate(u):
            if k > 1:
                x = x.repeat_interleave(k, dim=2 + d)
        return x

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return _sum_pool(g, ctx.u), None


def _sum_pool(g: torch.Tensor, u: Size) -> torch.Tensor:
    """Sum over non-overlapping ``u`` windows: ``(B, C, *(S * u))`` -> ``(B, C, *S)``."""
    if len(u) == 2:
        return F.avg_pool2d(g, u, divisor_override=1)
    if len(u) == 3:
        return F.avg_pool3d(g, u, divisor_override=1)
    b, c, n = g.shape
    return g.reshape(b, c, n // u[0], u[0]).sum(-1)


def _upsample_int(x: torch.Tensor, u: Size) -> torch.Tensor:
    """Nearest upsampling by whole factors: ``(B, C, *S)`` -> ``(B, C, *(S * u))``, output ``i`` reads input
    ``i // u``: :class:`_RepeatUpsample` for 1-3 dims, else (and for an empty tensor) one broadcast copy."""
    b, c = x.shape[:2]
    if 1 <= len(u) <= 3 and x.numel() > 0:
        return _RepeatUpsample.apply(x, tuple(u))
    size = tuple(n * k for n, k in zip(x.shape[2:], u))
    view = [v for n in x.shape[2:] for v in (n, 1)]
    full = [v for n, k in zip(x.shape[2:], u) for v in (n, k)]
    return x.reshape(b, c, *view).expand(b, c, *full).reshape(b, c, *size)


def _on_grid(x: torch.Tensor, size: Sequence[int], broadcast: bool = False,
             pad: str = "mask") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`rescale` without the final reshape: ``(B, C, *S_src)`` or ``(B, C)`` -> ``(B, C, slots, *S_q)``,
    and the ``(slots, *S_q)`` mask of real slots when masked padding was added (else ``None``).

    With ``broadcast=True`` a source of a single position is left ``(B, C, 1, 1, ...)``, for broadcasting.
    """
    x, q, f = _grids(x, size)
    src = tuple(x.shape[2:])
    grid_q = tuple(n_q if n_s >= n_q or n_q % n_s else n_s for n_s, n_q in zip(src, q))
    x = _window_view(x, grid_q, f, pad)                                 # non-integer upsampling, padding
    u = tuple(n_q // n for n, n_q in zip(grid_q, q))                     # whole upsampling factors
    if any(k > 1 for k in u) and not (broadcast and all(n == 1 for n in x.shape[2:])):
        x = _upsample_int(x, u)
    mask = _slot_mask(src, q, f, x.device) if pad == "mask" and _padded(src, q, f) else None
    return _fold_windows(x, f), mask


def rescale(x: torch.Tensor, size: Sequence[int], pad: str = "mask") -> torch.Tensor:
    """Bring a layer onto the query grid ``size`` as slots (thesis 10.3.2.2).

    Per spatial dimension: equal sizes are kept; a smaller source is upsampled nearest (1 slot); a larger
    source is cut into windows of ``f = ceil(S_src / S_q)`` positions by space-to-depth, every position of
    a window becoming its own slot. A non-divisible larger source is first padded to ``S_q * f``: with zeros
    that :func:`slot_mask` marks as padding (``pad="mask"``) or by repeating its edge (``"replicate"``).
    A vector ``(B, C)`` is a map with singleton spatial dims; a vector query grid ``size = ()`` sees the
    whole source as ``prod(S_src)`` slots.

    Shapes: ``(B, C, *S_src)`` or ``(B, C)`` -> ``(B, C, slots, *size)`` with ``slots = prod(f)``.
    """
    _choice("pad", pad, PAD_MODES)
    out, _ = _on_grid(x, size, pad=pad)
    return out.reshape(*out.shape[:3], *size)


# ----------------------------------------------------------------------------------------------------
# The NFM block
# ----------------------------------------------------------------------------------------------------
def _pointwise_wb(weight: torch.Tensor, bias: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution with ``weight (C_out, C_in)`` and ``bias`` on ``(B, C_in, N)`` -> ``(B, C_out, N)``.

    A batched GEMM over many positions (about 2x faster than ``conv1d`` forward+backward on CPU at
    ``N = 1024``), ``conv1d`` over few (where the per-sample GEMMs are too small to pay off)."""
    if x.shape[-1] < 64:
        return F.conv1d(x, weight.unsqueeze(-1), bias)
    w = weight.expand(x.shape[0], -1, -1)
    return torch.bmm(w, x) if bias is None else torch.baddbmm(bias[:, None], w, x)


def _project_source(lin: nn.Linear, src: torch.Tensor, n_k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A layer's keys and values at its own resolution: ``(B, C, *S)`` -> keys ``(B, n_k, *S)`` and values
    ``(B, lin.out_features - n_k, *S)`` (rows ``[0, n_k)`` of ``lin`` make the keys, the rest the values).

    Two GEMMs on row slices of the weight rather than one GEMM split afterwards: the split's backward
    concatenates the key and value gradients into a fresh buffer, a full extra copy of the projection."""
    b, c = src.shape[:2]
    x = src.reshape(b, c, math.prod(src.shape[2:]))
    w, bias = lin.weight, lin.bias
    k, v = (_pointwise_wb(w[rows], None if bias is None else bias[rows], x).reshape(b, rows.stop - rows.start,
                                                                                     *src.shape[2:])
            for rows in (slice(0, n_k), slice(n_k, w.shape[0])))
    return k, v


class _Plan(NamedTuple):
    """One source on the query grid: keys ``(B, h, d_k, N)`` for one slot per query position,
    ``(B, h, d_k, 1)`` for a single-position source (broadcast), ``(B, h, d_k, slots, N)`` for windows;
    values likewise with ``d_v``; ``padding (slots, N)`` True at masked padding slots (else ``None``)."""
    k: torch.Tensor
    v: torch.Tensor
    slots: int
    padding: Optional[torch.Tensor]


def _make_plan(k: torch.Tensor, v: torch.Tensor, q_size: Size, nh: int, dk: int, dv: int, pad: str) -> _Plan:
    """Projected keys ``(B, h d_k, *S_src)`` and values onto the query grid (see :class:`_Plan`).

    Only the ``h (d_k + d_v)`` projected channels are rescaled, never the source's own channels (a 1x1
    projection commutes with the rescaling; tested): a larger source is one space-to-depth copy of its keys
    and one of its values, a smaller one one broadcast copy each, a same-size one a view."""
    kk, mask = _on_grid(k, q_size, broadcast=True, pad=pad)
    vv, _ = _on_grid(v, q_size, broadcast=True, pad=pad)
    b, slots = kk.shape[0], kk.shape[2]
    n = math.prod(kk.shape[3:])
    if slots == 1:
        return _Plan(kk.reshape(b, nh, dk, n), vv.reshape(b, nh, dv, n), 1, None)
    padding = None if mask is None else ~mask.reshape(slots, n)
    return _Plan(kk.reshape(b, nh, dk, slots, n), vv.reshape(b, nh, dv, slots, n), slots, padding)


def _resolve_scale(scale: Union[None, float, str], d_k: int) -> float:
    if scale is None or scale == "inv_d_k":
        return 1.0 / d_k
    if scale == "inv_sqrt_d_k":
        return d_k ** -0.5
    if isinstance(scale, str):
        raise ValueError(f"scale={scale!r} is not supported; use a positive float or one of {', '.join(map(repr, SCALES))}")
    value = float(scale)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be a positive finite float, got {scale!r}")
    return value


class NFMAttention(nn.Module):
    """The NFM attention block (thesis 10.3.2.1, Algorithm 2 line 9, with the null slot of "Default
    Computation").

    For every query position of ``h`` (the input ``h^(i-1)`` of module ``i``) and head:
    ``Q = h W_q``; source layer ``j`` gives keys ``K_j = M_j W_k^j`` and values ``V_j = M_j W_v^j`` (so layers
    of any channel count mix), rescaled onto the query grid (:func:`rescale`); all slots are concatenated
    after a null slot (key 0, value 0). Then

        ``A = top-k-softmax(Q K^T * scale) V``  (thesis: ``scale = 1 / d_k``; only the ``k`` largest scores
        per query and head keep weight, chosen by index so ties never keep more than ``k``),
        ``h_1 = sigma(BN(A W_o1)) W_o2``, ``h_2 = h + gamma * h_1`` with ``gamma`` learned, initialised 0.

    Args:
        query_dim: channels of ``h``.
        source_dims: channels of each source layer, in the order they are passed to ``forward``.
        d_k, d_v: key/query and value size per head (thesis: 16-32).
        num_heads: attention heads (thesis: 4).
        top_k: slots kept per query and head (thesis: 4-5); ``None`` keeps every slot.
        hidden_dim: width of ``W_o1`` (default ``num_heads * d_v``; the query's channels with ``conv3x3``).
        batch_norm: the BN before ``sigma`` (the thesis uses it for the classifiers).
        scale: score scale: ``None`` or ``"inv_d_k"`` (``1 / d_k``, the thesis), ``"inv_sqrt_d_k"`` (the
            authors' code and the Transformer), or a positive float.
        gamma_init: initial ``gamma`` (0: the block starts as the identity).
        project_sources: ``True``: the block owns ``W_k^j, W_v^j`` for each source (the per-pair
            parametrization). ``False``: the caller passes sources already projected to
            ``num_heads * (d_k + d_v)`` channels (keys first, then values), as :class:`NFM` does with one
            projection per stored layer.
        topk_rule: :data:`TOPK_RULES` (``"topk_softmax"``: the thesis text; ``"reference"``: the code's).
        out_layers: :data:`OUT_LAYERS` (``"linear"`` 1x1 maps; ``"conv3x3"`` the code's 3x3 convolutions).
        pad: :data:`PAD_MODES`, for larger sources that are not a whole number of windows.

    Attributes:
        random_attention: the ablation of thesis 10.4 (96.5 % -> 88.5 %): when set, the scores are replaced
            by standard Gaussian noise (then the same top-k rule), so the block reads random slots. Set it
            at test time on a trained model (``NFM.set_random_attention(True)``).
        random_null: with ``random_attention``, the null slot's score is random too (default; the thesis
            draws "the attention values" at random). ``False`` keeps it at 0, its value without the ablation.
        compile_blocks: run the attention through ``torch.compile`` (compiled on first use; Inductor caches
            the compiled code on disk, so later processes with the same shapes skip most of the compile).

    Shapes:
        h: ``(B, query_dim, *S_q)`` (``S_q`` may be ``()``), sources[j]: ``(B, source_dims[j], *S_j)``.
        returns ``h_2`` like ``h``, and with ``return_weights`` the weights ``(B, num_heads, N, L)`` and the
        slot count per source (slot 0 is the null slot; source ``j`` owns the next ``slots[j]`` slots).
    """

    def __init__(self, query_dim: int, source_dims: Sequence[int], d_k: int = 16, d_v: int = 16,
                 num_heads: int = 4, top_k: Optional[int] = 5, hidden_dim: Optional[int] = None,
                 batch_norm: bool = True, scale: Union[None, float, str] = None, gamma_init: float = 0.0,
                 project_sources: bool = True, topk_rule: str = "topk_softmax", out_layers: str = "linear",
                 pad: str = "mask") -> None:
        super().__init__()
        for name, v in (("query_dim", query_dim), ("d_k", d_k), ("d_v", d_v), ("num_heads", num_heads)):
            if int(v) < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not source_dims or any(int(c) < 1 for c in source_dims):
            raise ValueError(f"source_dims must be a non-empty list of positive channel counts, got {source_dims!r}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be a positive int or None (keep all), got {top_k!r}")
        if hidden_dim is not None and int(hidden_dim) < 1:
            raise ValueError(f"hidden_dim must be a positive int or None, got {hidden_dim!r}")
        self.topk_rule = _choice("topk_rule", topk_rule, TOPK_RULES)
        self.out_layers = _choice("out_layers", out_layers, OUT_LAYERS)
        self.pad = _choice("pad", pad, PAD_MODES)
        self.query_dim, self.source_dims = int(query_dim), tuple(int(c) for c in source_dims)
        self.d_k, self.d_v, self.num_heads = int(d_k), int(d_v), int(num_heads)
        self.top_k = None if top_k is None else int(top_k)
        self.scale = _resolve_scale(scale, self.d_k)
        self.q = nn.Linear(query_dim, num_heads * d_k)
        # one projection per source, keys (rows [0, h d_k)) and values (rows [h d_k, h (d_k + d_v))) in one
        # matrix so each source is projected once
        self.project_sources = project_sources
        self.kv = (nn.ModuleList(nn.Linear(c, num_heads * (d_k + d_v)) for c in self.source_dims)
                   if project_sources else None)
        if out_layers == "linear":
            hidden_dim = hidden_dim or num_heads * d_v
            self.out1: Union[nn.Linear, nn.Conv2d] = nn.Linear(num_heads * d_v, hidden_dim, bias=not batch_norm)
            self.norm: nn.Module = nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity()
            self.out2: Union[nn.Linear, nn.Conv2d] = nn.Linear(hidden_dim, query_dim)
        else:
            hidden_dim = hidden_dim or query_dim
            self.out1 = nn.Conv2d(num_heads * d_v, hidden_dim, 3, padding=1, bias=not batch_norm)
            self.norm = nn.BatchNorm2d(hidden_dim) if batch_norm else nn.Identity()
            self.out2 = nn.Conv2d(hidden_dim, query_dim, 3, padding=1)
        self.hidden_dim = hidden_dim
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))
        self.random_attention = False
        self.random_null = True
        self.compile_blocks = False
        self._compiled: Optional[Callable] = None

    def extra_repr(self) -> str:
        return (f"query_dim={self.query_dim}, sources={len(self.source_dims)}, d_k={self.d_k}, d_v={self.d_v}, "
                f"heads={self.num_heads}, top_k={self.top_k}, scale={self.scale:g}, topk_rule={self.topk_rule!r}, "
                f"out_layers={self.out_layers!r}, pad={self.pad!r}, random_attention={self.random_attention}")

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None                          # recompiled on first use (copies, pickles)
        return state

    # -- inputs ------------------------------------------------------------------------------------
    def _check_query(self, h: torch.Tensor) -> None:
        if not isinstance(h, torch.Tensor) or h.dim() < 2:
            raise ValueError(f"the query h must be a tensor (B, C, *S), got {_shape(h)}")
        if h.shape[1] != self.query_dim:
            raise ValueError(f"query h {tuple(h.shape)} has {h.shape[1]} channels, the block was built for "
                             f"query_dim={self.query_dim}")

    def plan_sources(self, sources: Sequence[Any], q_size: Sequence[int], batch: int) -> List[_Plan]:
        """Validate, project (``project_sources=True``) and rescale the sources onto the query grid."""
        if len(sources) != len(self.source_dims):
            raise ValueError(f"expected {len(self.source_dims)} source layers, got {len(sources)}")
        nh, dk, dv = self.num_heads, self.d_k, self.d_v
        plans = []
        for j, src in enumerate(sources):
            if self.kv is not None:
                _check_source(j, src, batch, self.source_dims[j], f"source_dims[{j}] = {self.source_dims[j]}")
                k, v = _project_source(cast(nn.Linear, self.kv[j]), src, nh * dk)
            elif isinstance(src, (tuple, list)):
                if len(src) != 2:
                    raise ValueError(f"projected source {j} must be a (keys, values) pair, got {len(src)} tensors")
                k, v = src
                _check_source(j, k, batch, nh * dk, f"num_heads * d_k = {nh * dk} key channels")
                _check_source(j, v, batch, nh * dv, f"num_heads * d_v = {nh * dv} value channels")
                if k.shape[2:] != v.shape[2:]:
                    raise ValueError(f"projected source {j}: keys {tuple(k.shape)} and values {tuple(v.shape)} "
                                     "have different spatial sizes")
            else:
                _check_source(j, src, batch, nh * (dk + dv),
                              f"num_heads * (d_k + d_v) = {nh * (dk + dv)} channels (a projected source)")
                k, v = src.split([nh * dk, nh * dv], dim=1)
            plans.append(_make_plan(k, v, tuple(q_size), nh, dk, dv, self.pad))
        return plans

    # -- attention ---------------------------------------------------------------------------------
    @staticmethod
    def _scores(q: torch.Tensor, pl: _Plan) -> torch.Tensor:
        """``Q K^T`` for every slot and query position of one source: ``q (B, h, d_k, N)`` -> ``(B, h, slots, N)``
        (positions innermost: every product runs over contiguous memory; padding slots get ``-inf``)."""
        if pl.slots == 1:
            if pl.k.shape[-1] == 1 and q.shape[-1] != 1:                        # one key for all positions
                return torch.matmul(pl.k.transpose(2, 3), q)
            return (pl.k * q).sum(2, keepdim=True)
        s = (pl.k * q.unsqueeze(3)).sum(2)
        return s if pl.padding is None else s.masked_fill(pl.padding, float("-inf"))

    @staticmethod
    def _read(a: Optional[torch.Tensor], w: torch.Tensor, pl: _Plan) -> torch.Tensor:
        """Add the weighted sum of one source's values, weights ``(B, h, slots, N)``, to ``a (B, h, d_v, N)``."""
        if pl.slots == 1:
            return pl.v * w if a is None else torch.addcmul(a, pl.v, w)
        term = (pl.v * w.unsqueeze(2)).sum(3)
        return term if a is None else a + term

    def _weights(self, scores: torch.Tensor) -> torch.Tensor:
        """Attention weights over the slots (dim 2) by the top-k rule (see :data:`TOPK_RULES`)."""
        k, n_slots = self.top_k, scores.shape[2]
        if self.topk_rule == "reference":                  # softmax, minus the (k+1)-th probability, renormalised
            p = scores.softmax(dim=2)
            if k is None or n_slots <= k + 1:
                return p
            delta = p.topk(k + 1, dim=2).values[:, :, k:] + 1e-7
            w = (p - delta).clamp(min=0)
            return w / (w.sum(dim=2, keepdim=True) + 1e-7)
        if k is not None and k < n_slots:                   # softmax over the k largest, by index
            vals, idx = scores.topk(k, dim=2)
            return torch.zeros_like(scores).scatter(2, idx, vals.softmax(dim=2))
        return scores.softmax(dim=2)

    def _random_scores(self, like: torch.Tensor, plans: Sequence[_Plan]) -> torch.Tensor:
        """The ablation: standard Gaussian scores ``(B, h, L, N)`` (null slot 0 unless ``random_null``)."""
        b, nh, _, n = like.shape
        scores = torch.randn(b, nh, 1 + sum(pl.slots for pl in plans), n, device=like.device, dtype=like.dtype)
        if not self.random_null:
            scores = torch.cat([torch.zeros_like(scores[:, :, :1]), scores[:, :, 1:]], dim=2)
        if any(pl.padding is not None for pl in plans):
            pad = torch.cat([torch.zeros(1, n, dtype=torch.bool, device=like.device)]
                            + [torch.zeros(pl.slots, n, dtype=torch.bool, device=like.device)
                               if pl.padding is None else pl.padding for pl in plans])
            scores = scores.masked_fill(pad, float("-inf"))
        return scores

    def _output(self, hf: torch.Tensor, a: torch.Tensor, q_size: Size) -> torch.Tensor:
        """``h + gamma * sigma(BN(A W_o1)) W_o2`` on ``hf (B, C_q, N)``; ``gamma`` scales ``W_o2`` and its bias
        (small) instead of the output, and the residual is the GEMM's accumulator."""
        b, c, n = hf.shape
        assert self.out2.bias is not None                     # out2 is built with a bias
        w2, b2 = self.gamma * self.out2.weight, self.gamma * self.out2.bias
        if self.out_layers == "conv3x3":
            if len(q_size) != 2:
                raise ValueError(f"out_layers='conv3x3' needs a 2-D query (B, C, H, W), got spatial size {q_size}; "
                                 "use out_layers='linear' for vectors and sequences")
            r = F.relu(self.norm(self.out1(a.reshape(b, a.shape[1], *q_size))))
            return hf + F.conv2d(r, w2, b2, padding=1).reshape(b, c, n)
        r = F.relu(self.norm(_pointwise_wb(self.out1.weight, self.out1.bias, a)))
        if n < 64:
            return hf + F.conv1d(r, w2.unsqueeze(-1), b2)
        return torch.baddbmm(hf + b2[:, None], w2.expand(b, -1, -1), r)

    def _attend(self, h: torch.Tensor, plans: Sequence[_Plan], return_weights: bool = False):
        b, c, q_size = h.shape[0], h.shape[1], tuple(h.shape[2:])
        n, nh = math.prod(q_size), self.num_heads
        hf = h.reshape(b, c, n)                                                      # (B, C_q, N)
        s = self.scale
        q = _pointwise_wb(self.q.weight * s, self.q.bias * s, hf).reshape(b, nh, self.d_k, n)   # scaled Q
        slots = [pl.slots for pl in plans]
        if self.random_attention:
            scores = self._random_scores(q.new_empty(b, nh, 1, n), plans)
        else:
            scores = torch.cat([q.new_zeros(b, nh, 1, n)] + [self._scores(q, pl) for pl in plans], dim=2)
        w = self._weights(scores)                                                    # (B, h, L, N), null first
        a = None
        for pl, wj in zip(plans, torch.split(w[:, :, 1:], slots, dim=2)):          # the null value is 0
            a = self._read(a, wj, pl)
        assert a is not None                                  # a block has at least one source (__init__)
        h2 = self._output(hf, a.reshape(b, nh * self.d_v, n), q_size).reshape(h.shape)
        return (h2, w.transpose(2, 3), slots) if return_weights else h2              # weights (B, h, N, L)

    def attend(self, h: torch.Tensor, plans: Sequence[_Plan], return_weights: bool = False):
        """The block on sources already on the query grid (see :meth:`plan_sources`)."""
        self._check_query(h)
        if self.compile_blocks:
            if self._compiled is None:
                _raise_recompile_limit()
                self._compiled = torch.compile(self._attend, dynamic=False)
            return self._compiled(h, list(plans), return_weights)
        return self._attend(h, plans, return_weights)

    def forward(self, h: torch.Tensor, sources: Sequence[Any], return_weights: bool = False):
        self._check_query(h)
        return self.attend(h, self.plan_sources(sources, h.shape[2:], h.shape[0]), return_weights)


def _raise_recompile_limit(limit: int = 64) -> None:
    """Every block compiles the same method (one Dynamo cache per code object), so a 2-pass network with 8
    blocks, and a smaller last batch, passes Dynamo's default limit of 8 compiled versions; raise it."""
    import torch._dynamo.config as cfg
    for name in ("recompile_limit", "cache_size_limit"):
        if getattr(cfg, name, limit) < limit:
            setattr(cfg, name, limit)


def _shape(x: Any) -> str:
    return f"a tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_source(j: int, src: Any, batch: int, channels: int, what: str) -> None:
    if not isinstance(src, torch.Tensor) or src.dim() < 2:
        raise ValueError(f"source {j} must be a tensor (B, C, *S), got {_shape(src)}")
    if src.shape[0] != batch:
        raise ValueError(f"source {j} {tuple(src.shape)} has batch size {src.shape[0]}, the query h has {batch}: "
                         "every source must come from the same batch")
    if src.shape[1] != channels:
        raise ValueError(f"source {j} {tuple(src.shape)} has {src.shape[1]} channels, the block expects {what}")


# ----------------------------------------------------------------------------------------------------
# The multi-pass runner (Algorithm 2)
# ----------------------------------------------------------------------------------------------------
@dataclass
class NFMAttentionInfo:
    """What one NFM block read: ``weights (B, heads, N, L)``; slot 0 is the null slot, then ``slots[j]``
    slots for each source ``sources[j] = (pass, module)`` in memory order."""
    pass_idx: int
    module_idx: int
    weights: torch.Tensor
    sources: List[Tuple[int, int]]
    slots: List[int]

    def per_source(self) -> torch.Tensor:
        """Weights summed over each source's slots: ``(B, heads, N, 1 + len(sources))``, null first."""
        parts = torch.split(self.weights, [1] + list(self.slots), dim=-1)
        return torch.cat([p.sum(-1, keepdim=True) for p in parts], dim=-1)


@dataclass
class NFMTrace:
    """A full NFM forward: the output, the memory (every module output, in order) and the attention."""
    output: torch.Tensor
    memory: List[torch.Tensor] = field(default_factory=list)
    memory_index: List[Tuple[int, int]] = field(default_factory=list)
    attention: List[NFMAttentionInfo] = field(default_factory=list)


def reset_parameters(module: nn.Module) -> None:
    """Re-initialise every submodule that has ``reset_parameters`` (PyTorch's default initialisation)."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            getattr(m, "reset_parameters")()


class NFM(nn.Module):
    """Run a list of modules as an NFM network (thesis Algorithm 2).

    For pass ``p = 1..K``: ``h^(0) = x``; for each module ``i``, if ``i`` is in ``attend`` and the memory
    is not empty, ``h^(i-1) <- NFMAttention_{p,i}(h^(i-1), memory)``; then ``h^(i) = f_{p,i}(h^(i-1))`` is
    appended to the memory. The memory therefore holds every module output of earlier passes (top-down
    feedback) and the earlier modules of the current pass: ``N * K`` layers after ``K`` passes. The output
    is the last module's output of the last pass.

    Args:
        modules: the ``N`` modules of one pass (e.g. a ResNet's stem and stages); run in order.
        channels: output channels of each module (the sources' sizes for the key/value projections).
        in_chans: channels of ``x`` (the query size of module 0).
        passes: ``K`` (thesis: 2). ``passes=1`` is the single-pass NFM.
        attend: indices of the modules preceded by an NFM block, or ``"all"`` (the default: every module,
            as in Algorithm 2; module 0 gets a block from pass 2 on). A ResNet uses its stages, not its stem.
        share_modules: one set of module weights for all passes (default: per-pass weights, as in the
            thesis). Attention blocks are always per (pass, module).
        share_kv: ``True`` (default; the authors' code): each stored layer is projected to keys/values once,
            by a projection of its own (``kv.{p}_{i}``), and every block reading it uses that; blocks own
            their query, output layers and ``gamma``. ``False``: every block has its own ``W_k^j, W_v^j`` for
            each source it reads (the thesis lists ``W_k, W_v`` among a block's parameters but also says the
            key/value maps are "separate per module": the text reads both ways). Per-pair projections cost a
            projection of every source in every block that reads it.
        d_k, d_v, num_heads, top_k, hidden_dim, batch_norm, scale, topk_rule, out_layers, pad: of every
            :class:`NFMAttention`.
        pass_init: :data:`PASS_INITS`: pass ``k > 1`` module weights copied from pass 1 (default) or
            initialised independently by ``init_fn`` (default :func:`reset_parameters`).
        init_fn: re-initialises one module in place, for ``pass_init="independent"``.
        compile_blocks: ``torch.compile`` every block's attention (see :class:`NFMAttention`).

    Within one forward, each stored layer's keys/values are rescaled once per query grid (a cache), so
    blocks of the same resolution share the space-to-depth / upsampling copies.

    Shapes:
        x: ``(B, in_chans, *S)``; each module maps ``(B, C_{i-1}, *S_{i-1})`` -> ``(B, channels[i], *S_i)``,
        any ``S_i`` (2-D, 1-D or a vector ``()``). Returns the last module's output.

    Module names: ``passes.{p}.{i}`` (with ``share_modules`` only ``passes.0``), blocks ``attn.{p}_{i}``,
    shared key/value projections ``kv.{p}_{i}`` (with ``share_kv``).
    """

    def __init__(self, modules: Sequence[nn.Module], channels: Sequence[int], in_chans: int, passes: int = 2,
                 attend: Union[None, str, Sequence[int]] = None, share_modules: bool = False,
                 share_kv: bool = True, d_k: int = 16, d_v: int = 16, num_heads: int = 4,
                 top_k: Optional[int] = 5, hidden_dim: Optional[int] = None, batch_norm: bool = True,
                 scale: Union[None, float, str] = None, topk_rule: str = "topk_softmax",
                 out_layers: str = "linear", pad: str = "mask", pass_init: str = "copy",
                 init_fn: Optional[Callable[[nn.Module], None]] = None, compile_blocks: bool = False) -> None:
        super().__init__()
        n = len(modules)
        if n == 0 or len(channels) != n:
            raise ValueError(f"need one channel count per module: {n} modules, channels={list(channels)!r}")
        if int(passes) < 1:
            raise ValueError(f"passes must be >= 1, got {passes!r}")
        if int(in_chans) < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans!r}")
        if attend is None or attend == "all":
            attend = tuple(range(n))
        elif isinstance(attend, str):
            raise ValueError(f"attend must be 'all' or a list of module indices, got {attend!r}")
        else:
            attend = tuple(sorted(set(int(i) for i in attend)))
        if any(not 0 <= i < n for i in attend):
            raise ValueError(f"attend must hold module indices in [0, {n}), got {attend!r}")
        _choice("pass_init", pass_init, PASS_INITS)
        if pass_init == "independent" and share_modules:
            raise ValueError("pass_init='independent' needs per-pass modules; it contradicts share_modules=True")
        self.num_modules, self.num_passes, self.attend = n, int(passes), attend
        self.channels, self.in_chans, self.share_modules = tuple(channels), int(in_chans), share_modules
        self.pass_init = pass_init
        first = nn.ModuleList(modules)
        copies = [copy.deepcopy(first) for _ in range((1 if share_modules else self.num_passes) - 1)]
        if pass_init == "independent":
            for mods in copies:
                for m in mods:
                    (init_fn or reset_parameters)(m)
        self.passes = nn.ModuleList([first] + copies)
        self.attn = nn.ModuleDict()
        read = set()
        for p in range(self.num_passes):
            for i in attend:
                src = self.sources_of(p, i)
                if src:
                    read.update(src)
                    self.attn[f"{p}_{i}"] = NFMAttention(
                        channels[i - 1] if i else in_chans, [channels[j] for _, j in src], d_k=d_k, d_v=d_v,
                        num_heads=num_heads, top_k=top_k, hidden_dim=hidden_dim, batch_norm=batch_norm,
                        scale=scale, project_sources=not share_kv, topk_rule=topk_rule, out_layers=out_layers,
                        pad=pad)
        self.share_kv, self.key_channels = share_kv, num_heads * d_k
        self.d_k, self.d_v, self.num_heads, self.pad = d_k, d_v, num_heads, pad
        self.kv = nn.ModuleDict({f"{p}_{j}": nn.Linear(channels[j], num_heads * (d_k + d_v))
                                 for p, j in sorted(read)}) if share_kv else None
        self.grad_checkpointing = False
        self.set_compile_blocks(compile_blocks)

    def sources_of(self, p: int, i: int) -> List[Tuple[int, int]]:
        """The memory when module ``i`` of pass ``p`` runs: every ``(pass, module)`` computed before it."""
        return [(q, j) for q in range(p) for j in range(self.num_modules)] + [(p, j) for j in range(i)]

    def module(self, p: int, i: int) -> nn.Module:
        return cast(nn.ModuleList, self.passes[0 if self.share_modules else p])[i]

    def _blocks(self) -> Iterable[NFMAttention]:
        """The NFM blocks (``self.attn``'s values, typed)."""
        return cast(Iterable[NFMAttention], self.attn.values())

    def set_random_attention(self, enabled: bool = True, null: bool = True) -> None:
        """Switch the random-attention ablation on every block (use at test time); ``null=False`` keeps the
        null slot's score at 0 instead of drawing it too."""
        for blk in self._blocks():
            blk.random_attention, blk.random_null = enabled, null

    def set_compile_blocks(self, enabled: bool = True) -> None:
        """``torch.compile`` every block's attention (compiled lazily, on the first forward)."""
        self.compile_blocks = enabled
        for blk in self._blocks():
            blk.compile_blocks, blk._compiled = enabled, None

    def load_backbone(self, modules: Sequence[nn.Module]) -> None:
        """Copy a backbone's module weights into every pass (with ``gamma = 0`` the NFM network then
        computes exactly what the backbone computes)."""
        for mods in self.passes:
            for dst, src in zip(cast(nn.ModuleList, mods), modules):
                dst.load_state_dict(src.state_dict())

    def run(self, x: torch.Tensor, passes: Optional[int] = None, return_attention: bool = False,
            stop_after: Optional[int] = None) -> NFMTrace:
        """The full forward. ``passes`` overrides the number of passes (1 <= passes <= built passes);
        ``stop_after`` stops the last pass after that module index."""
        passes = self.num_passes if passes is None else int(passes)
        if not 1 <= passes <= self.num_passes:
            raise ValueError(f"passes must be in [1, {self.num_passes}] for this network, got {passes}")
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[1] != self.in_chans:
            raise ValueError(f"NFM input must be (B, in_chans={self.in_chans}, *S), got {_shape(x)}")
        trace = NFMTrace(output=x)
        kv_mem: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = []   # share_kv: keys/values per layer
        cache: Dict[Tuple[int, Size], _Plan] = {}                         # (layer, query grid) -> on the grid
        h = x
        for p in range(passes):
            h = x
            last = self.num_modules - 1 if (p < passes - 1 or stop_after is None) else stop_after
            for i in range(last + 1):
                key = f"{p}_{i}"
                blk = cast(NFMAttention, self.attn[key]) if key in self.attn else None
                if blk is not None:
                    q_size = tuple(h.shape[2:])
                    if self.kv is None:
                        plans = blk.plan_sources(trace.memory, q_size, h.shape[0])
                    else:
                        plans = [self._plan(cache, kv_mem, j, q_size) for j in range(len(trace.memory))]
                    if return_attention:
                        h, w, slots = blk.attend(h, plans, return_weights=True)
                        trace.attention.append(NFMAttentionInfo(p, i, w, self.sources_of(p, i), slots))
                    else:
                        h = blk.attend(h, plans)
                mod = self.module(p, i)
                if self.grad_checkpointing and torch.is_grad_enabled():
                    h = checkpoint(mod, h, use_reentrant=False)
                else:
                    h = mod(h)
                trace.memory.append(h)
                trace.memory_index.append((p, i))
                if self.kv is not None:                                   # shared projection, once per layer
                    lin = self.kv[key] if key in self.kv else None
                    kv_mem.append(None if lin is None else _project_source(cast(nn.Linear, lin), h, self.key_channels))
        trace.output = h
        return trace

    def _plan(self, cache: Dict[Tuple[int, Size], _Plan], kv_mem, j: int, q_size: Size) -> _Plan:
        """Layer ``j``'s keys/values on the grid ``q_size``, rescaled once per forward and grid."""
        plan = cache.get((j, q_size))
        if plan is None:
            k, v = kv_mem[j]
            plan = cache[(j, q_size)] = _make_plan(k, v, q_size, self.num_heads, self.d_k, self.d_v, self.pad)
        return plan

    def forward(self, x: torch.Tensor, passes: Optional[int] = None) -> torch.Tensor:
        return self.run(x, passes=passes).output
