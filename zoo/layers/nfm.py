"""Neural Function Modules (thesis ch. 10, Algorithm 2): sparse top-down attention over earlier layers.

Three pieces:

* rescaling helpers (thesis 10.3.2.2, "automatic type conversion"): :func:`space_to_depth`,
  :func:`depth_to_space`, :func:`upsample_nearest` and :func:`rescale`, which bring any layer
  ``(B, C, *S_src)`` onto a query grid ``S_q`` as ``(B, C, slots, *S_q)``. A larger source is cut into
  windows whose positions all stay selectable (space-to-depth, nothing is averaged away); a smaller one is
  upsampled nearest (one slot). Works for 2-D maps, 1-D sequences and vectors ``(B, C)``.
* :class:`NFMAttention`, the block that runs before a module: multi-head softmax top-k attention from the
  current hidden state over every stored layer (plus a null slot), ``h + gamma * sigma(BN(A W_o1)) W_o2``.
* :class:`NFM`, the multi-pass runner: runs any list of modules ``passes`` times, storing every module's
  output in a memory that later modules (and later passes) attend over.

Shapes use ``B`` batch, ``C`` channels, ``S`` spatial shape (``()``, ``(L,)`` or ``(H, W)``),
``N = prod(S_q)`` query positions, ``L`` attention slots per query position (null slot first).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "space_to_depth", "depth_to_space", "upsample_nearest", "rescale", "slots_for",
    "NFMAttention", "NFM", "NFMTrace", "NFMAttentionInfo",
]

Size = Tuple[int, ...]


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
    for d, (n_src, n_q) in enumerate(zip(x.shape[2:], size)):
        if n_src > n_q:
            raise ValueError(f"upsample_nearest: source size {tuple(x.shape[2:])} is larger than {size}")
        if n_src != n_q:
            x = x.index_select(2 + d, _nearest_index(n_src, n_q, x.device))
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
    x = x.reshape(b, c, *[v for n, k in zip(size, f) for v in (n, k)])
    perm = [0, 1] + [2 + 2 * d + 1 for d in range(nd)] + [2 + 2 * d for d in range(nd)]
    return x.permute(perm).reshape(b, c, math.prod(f), *size)


def _promote(x: torch.Tensor, nd: int) -> torch.Tensor:
    """A vector layer ``(B, C)`` becomes a map with ``nd`` singleton spatial dims."""
    return x.reshape(*x.shape[:2], *([1] * nd)) if x.dim() == 2 else x


def _grids(src: torch.Tensor, query_size: Sequence[int]) -> Tuple[torch.Tensor, Size, Size]:
    """Bring source and query to the same number of spatial dims (vectors are promoted)."""
    q = tuple(query_size)
    nd_s, nd_q = src.dim() - 2, len(q)
    if nd_s != nd_q:
        if nd_s == 0:
            src = _promote(src, nd_q)
        elif nd_q == 0:
            q = (1,) * nd_s
        else:
            raise ValueError(f"cannot rescale a {nd_s}-d layer {tuple(src.shape)} onto a {nd_q}-d query grid "
                             f"{q}; mix 1-d and 2-d layers through a vector layer or reshape them first")
    return src, q, slots_for(src.shape[2:], q)


def _replicate_pad(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Pad dim ``dim`` of ``x`` up to ``size`` by repeating its last entry (one ``cat``; an ``index_select``
    of the whole map is several times slower, forward and backward)."""
    n = x.shape[dim]
    if n >= size:
        return x
    edge = x.narrow(dim, n - 1, 1)
    return torch.cat([x, edge.expand(*x.shape[:dim], size - n, *x.shape[dim + 1:])], dim=dim)


def _window_view(x: torch.Tensor, q: Size, f: Size) -> torch.Tensor:
    """``(B, C, *S_src)`` -> ``(B, C, q_1 * f_1, ..., q_d * f_d)`` (identity, nearest upsampling by index,
    or replicate-padding a non-divisible larger source up to a multiple of the window)."""
    for d, (n_src, n_q, k) in enumerate(zip(x.shape[2:], q, f)):
        if n_src == n_q * k:
            continue                                                   # same size, or exact windows
        if n_src < n_q:
            x = x.index_select(2 + d, _nearest_index(n_src, n_q, x.device))
        else:
            x = _replicate_pad(x, 2 + d, n_q * k)
    return x


def rescale(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bring a layer onto the query grid ``size`` as slots (thesis 10.3.2.2).

    Per spatial dimension: equal sizes are kept; a smaller source is upsampled nearest (1 slot); a larger
    source is cut into windows of ``f = ceil(S_src / S_q)`` positions by space-to-depth, every position of
    a window becoming its own slot (a non-divisible source is first replicate-padded to ``S_q * f``).
    A vector ``(B, C)`` is a map with singleton spatial dims; a vector query grid ``size = ()`` sees the
    whole source as ``prod(S_src)`` slots.

    Shapes: ``(B, C, *S_src)`` or ``(B, C)`` -> ``(B, C, slots, *size)`` with ``slots = prod(f)``.
    """
    out = _on_grid(x, size)
    return out.reshape(*out.shape[:3], *size)


def _on_grid(x: torch.Tensor, size: Sequence[int], broadcast: bool = False) -> torch.Tensor:
    """:func:`rescale` without the final reshape: ``(B, C, *S_src)`` or ``(B, C)`` -> ``(B, C, slots, *S_q)``.

    Whole-factor upsampling goes through :func:`_upsample_int` (``F.interpolate``, whose backward is a fast
    sum pooling, unlike ``index_select``'s ``index_add``); only non-integer factors are upsampled by index.
    With ``broadcast=True`` a source of a single position is left ``(B, C, 1, 1, ...)``, for broadcasting.
    """
    x, q, f = _grids(x, size)
    grid_q = tuple(n_q if n_s >= n_q or n_q % n_s else n_s for n_s, n_q in zip(x.shape[2:], q))
    x = _window_view(x, grid_q, f)                                      # non-integer upsampling, padding
    u = tuple(n_q // n for n, n_q in zip(grid_q, q))                     # whole upsampling factors
    if any(k > 1 for k in u) and not (broadcast and all(n == 1 for n in x.shape[2:])):
        x = _upsample_int(x, u)
    return _fold_windows(x, f)


# ----------------------------------------------------------------------------------------------------
# The NFM block
# ----------------------------------------------------------------------------------------------------
def _pointwise(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution with ``lin``'s weights on ``(B, C_in, N)`` -> ``(B, C_out, N)``."""
    return _pointwise_wb(lin.weight, lin.bias, x)


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
    x = src.reshape(b, c, -1)
    w, bias = lin.weight, lin.bias
    k, v = (_pointwise_wb(w[rows], None if bias is None else bias[rows], x).reshape(b, -1, *src.shape[2:])
            for rows in (slice(0, n_k), slice(n_k, w.shape[0])))
    return k, v


class NFMAttention(nn.Module):
    """The NFM attention block (thesis 10.3.2.1, Algorithm 2 line 9, with the null slot of "Default
    Computation").

    For every query position of ``h`` (the input ``h^(i-1)`` of module ``i``) and head:
    ``Q = h W_q``; each source layer ``j`` gets its own projections ``K_j = M_j W_k^j``, ``V_j = M_j W_v^j``
    (so layers of any channel count mix), is rescaled onto the query grid (:func:`rescale`), and all
    slots are concatenated after a null slot (key 0, value 0). Then

        ``A = top-k-softmax(Q K^T * scale) V``  (paper: ``scale = 1 / d_k``; only the ``k`` largest scores
        per query keep weight, chosen by index so ties never keep more than ``k``),
        ``h_1 = sigma(BN(A W_o1)) W_o2``, ``h_2 = h + gamma * h_1`` with ``gamma`` learned, initialised 0.

    Args:
        query_dim: channels of ``h``.
        source_dims: channels of each source layer, in the order they are passed to ``forward``.
        d_k, d_v: key/query and value size per head (paper: 16-32).
        num_heads: attention heads (paper: 4).
        top_k: slots kept per query and head (paper: 4-5); ``None`` keeps every slot.
        hidden_dim: width of ``W_o1`` (default ``num_heads * d_v``).
        batch_norm: the BN before ``sigma`` (the thesis uses it for the classifiers).
        scale: score scale (default ``1 / d_k`` as in the thesis; ``d_k ** -0.5`` is the Transformer's).
        gamma_init: initial ``gamma`` (0: the block starts as the identity).
        project_sources: ``True`` (the thesis): the block owns ``W_k^j, W_v^j`` for each source. ``False``:
            the caller passes sources already projected to ``num_heads * (d_k + d_v)`` channels (keys first,
            then values; :class:`NFM` with ``share_kv=True`` projects each stored layer once for all readers).

    Attributes:
        random_attention: the ablation of thesis 10.4 (96.5 % -> 88.5 %): when set, the scores are replaced
            by standard Gaussian noise (then the same top-k softmax), so the block reads random slots. Set it
            at test time on a trained model (``NFM.set_random_attention(True)``).

    Shapes:
        h: ``(B, query_dim, *S_q)`` (``S_q`` may be ``()``), sources[j]: ``(B, source_dims[j], *S_j)``.
        returns ``h_2`` like ``h``, and with ``return_weights`` the weights ``(B, num_heads, N, L)`` and the
        slot count per source (slot 0 is the null slot; source ``j`` owns the next ``slots[j]`` slots).
    """

    def __init__(self, query_dim: int, source_dims: Sequence[int], d_k: int = 16, d_v: int = 16,
                 num_heads: int = 4, top_k: Optional[int] = 5, hidden_dim: Optional[int] = None,
                 batch_norm: bool = True, scale: Optional[float] = None, gamma_init: float = 0.0,
                 project_sources: bool = True) -> None:
        super().__init__()
        for name, v in (("query_dim", query_dim), ("d_k", d_k), ("d_v", d_v), ("num_heads", num_heads)):
            if int(v) < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not source_dims or any(int(c) < 1 for c in source_dims):
            raise ValueError(f"source_dims must be a non-empty list of positive channel counts, got {source_dims!r}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be a positive int or None (keep all), got {top_k!r}")
        self.query_dim, self.source_dims = query_dim, tuple(int(c) for c in source_dims)
        self.d_k, self.d_v, self.num_heads, self.top_k = d_k, d_v, num_heads, top_k
        self.scale = 1.0 / d_k if scale is None else float(scale)
        hidden_dim = hidden_dim or num_heads * d_v
        self.q = nn.Linear(query_dim, num_heads * d_k)
        # one projection per source, keys (rows [0, h d_k)) and values (rows [h d_k, h (d_k + d_v))) in one
        # matrix so each source is projected once
        self.project_sources = project_sources
        self.kv = (nn.ModuleList(nn.Linear(c, num_heads * (d_k + d_v)) for c in self.source_dims)
                   if project_sources else None)
        self.out1 = nn.Linear(num_heads * d_v, hidden_dim, bias=not batch_norm)
        self.norm = nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity()
        self.out2 = nn.Linear(hidden_dim, query_dim)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))
        self.random_attention = False

    def extra_repr(self) -> str:
        return (f"query_dim={self.query_dim}, sources={len(self.source_dims)}, d_k={self.d_k}, d_v={self.d_v}, "
                f"heads={self.num_heads}, top_k={self.top_k}, random_attention={self.random_attention}")

    def _project(self, lin: Optional[nn.Linear], src, q_size: Size) -> "_Plan":
        """One source's keys and values against the query grid: ``(B, h, d, N)`` (or ``(B, h, d, 1)`` for a
        vector / 1x1 source, broadcast) for one slot, ``(B, h, d, slots, N)`` for windows.

        The source is projected at its own resolution first, keys and values by two GEMMs (a projection is
        per position, so projecting and then rescaling equals rescaling and projecting every slot; tested),
        so only the ``h d_k`` + ``h d_v`` projected channels are rescaled, never the source's own channels:
        a larger source is one space-to-depth copy each, a smaller one is upsampled nearest by
        ``F.interpolate`` (integer factors; its backward is a fast sum pooling, unlike ``index_select``'s
        ``index_add``); only a non-integer upsampling or a non-divisible larger source goes through
        ``index_select`` / replicate padding first.
        """
        nh, dk, dv = self.num_heads, self.d_k, self.d_v
        if lin is not None:
            k, v = _project_source(lin, src, nh * dk)                        # (B, h d, *S_src) each
        elif isinstance(src, (tuple, list)):
            k, v = src
        else:
            if src.shape[1] != nh * (dk + dv):
                raise ValueError(f"a projected source needs num_heads * (d_k + d_v) = {nh * (dk + dv)} "
                                 f"channels, got {tuple(src.shape)}")
            k, v = src.split([nh * dk, nh * dv], dim=1)
        if k.shape[1] != nh * dk or v.shape[1] != nh * dv or k.shape[2:] != v.shape[2:]:
            raise ValueError(f"a projected source needs keys of num_heads * d_k = {nh * dk} and values of "
                             f"num_heads * d_v = {nh * dv} channels, got {tuple(k.shape)}, {tuple(v.shape)}")
        k, v = _on_grid(k, q_size, broadcast=True), _on_grid(v, q_size, broadcast=True)   # (B, h d, slots, *S)
        b, slots = k.shape[0], k.shape[2]
        if slots == 1:                                                       # (B, h, d, N), or N = 1: broadcast
            return _Plan(k.reshape(b, nh, dk, -1), v.reshape(b, nh, dv, -1), 1)
        return _Plan(k.reshape(b, nh, dk, slots, -1), v.reshape(b, nh, dv, slots, -1), slots)

    # Scores and weights are (B, h, slots, N): positions innermost, so the products run over contiguous memory.
    @staticmethod
    def _scores(q: torch.Tensor, pl: "_Plan") -> torch.Tensor:
        """``Q K^T`` for every slot and query position of one source: ``q (B, h, d_k, N)`` -> ``(B, h, slots, N)``."""
        if pl.slots == 1:
            return (pl.k * q).sum(2, keepdim=True)
        return (pl.k * q.unsqueeze(3)).sum(2)

    @staticmethod
    def _read(w: torch.Tensor, pl: "_Plan") -> torch.Tensor:
        """The weighted sum of one source's values: weights ``(B, h, slots, N)`` -> ``(B, h, d_v, N)``."""
        if pl.slots == 1:
            return pl.v * w
        return (pl.v * w.unsqueeze(2)).sum(3)

    def _weights(self, scores: torch.Tensor) -> torch.Tensor:
        """Top-k softmax over the slots (dim 2): softmax over the ``k`` largest scores, scattered back, so
        exactly ``k`` weights are nonzero per query (chosen by index: ties never keep more than ``k``)."""
        if self.top_k is not None and self.top_k < scores.shape[2]:
            vals, idx = scores.topk(self.top_k, dim=2)
            return torch.zeros_like(scores).scatter(2, idx, vals.softmax(dim=2))
        return scores.softmax(dim=2)

    def forward(self, h: torch.Tensor, sources: Sequence[torch.Tensor], return_weights: bool = False):
        if len(sources) != len(self.source_dims):
            raise ValueError(f"expected {len(self.source_dims)} source layers, got {len(sources)}")
        if h.shape[1] != self.query_dim:
            raise ValueError(f"query has {h.shape[1]} channels, the block was built for query_dim={self.query_dim}")
        b, q_size = h.shape[0], tuple(h.shape[2:])
        hf = h.reshape(b, self.query_dim, -1)                                       # (B, C_q, N)
        n, nh = hf.shape[-1], self.num_heads
        q = _pointwise(self.q, hf).reshape(b, nh, self.d_k, n) * self.scale        # (B, h, d_k, N)
        lins = self.kv if self.kv is not None else [None] * len(sources)
        plans = [self._project(lin, src, q_size) for lin, src in zip(lins, sources)]
        slots = [pl.slots for pl in plans]
        if self.random_attention:                                                   # ablation: random scores
            scores = [q.new_zeros(b, nh, 1, n), torch.randn(b, nh, sum(slots), n, device=h.device, dtype=h.dtype)]
        else:
            scores = [q.new_zeros(b, nh, 1, n)] + [self._scores(q, pl) for pl in plans]   # null slot first
        w = self._weights(torch.cat(scores, dim=2))                                 # (B, h, L, N)
        a = sum(self._read(wj, pl) for pl, wj in zip(plans, torch.split(w[:, :, 1:], slots, dim=2)))
        a = a.reshape(b, nh * self.d_v, n)                                          # null value is 0
        out = _pointwise(self.out2, F.relu(self.norm(_pointwise(self.out1, a))))
        h2 = h + self.gamma * out.reshape(h.shape)
        return (h2, w.transpose(2, 3), slots) if return_weights else h2          # weights (B, h, N, L)


class _Plan(NamedTuple):
    """One source on the query grid (see :meth:`NFMAttention._project`): keys ``(B, h, d_k, [slots,] N or 1)``,
    values likewise (the slots dimension only when ``slots > 1``)."""
    k: torch.Tensor
    v: torch.Tensor
    slots: int


def _pow2(x: int) -> bool:
    return x & (x - 1) == 0


def _upsample_int(x: torch.Tensor, u: Size) -> torch.Tensor:
    """Nearest upsampling by whole factors: ``(B, C, *S)`` -> ``(B, C, *(S * u))``, output ``i`` reads input
    ``i // u``. ``F.interpolate`` where its float scale is exact (powers of two, 1-3 dims), else a
    broadcast copy."""
    size = tuple(n * k for n, k in zip(x.shape[2:], u))
    if 1 <= len(u) <= 3 and all(_pow2(k) for k in u):
        return F.interpolate(x, size=size, mode="nearest")
    b, c = x.shape[:2]
    view = [v for n in x.shape[2:] for v in (n, 1)]
    full = [v for n, k in zip(x.shape[2:], u) for v in (n, k)]
    return x.reshape(b, c, *view).expand(b, c, *full).reshape(b, c, *size)


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
        passes: ``K`` (paper: 2). ``passes=1`` is the single-pass NFM.
        attend: indices of the modules preceded by an NFM block (default: all). A ResNet uses its stages,
            not its stem.
        share_modules: one set of module weights for all passes (default: per-pass copies, as in the
            thesis; the copies start from the same weights). Attention blocks are always per (pass, module).
        share_kv: ``False`` (the thesis: every block has its own key/value projection of every source it
            reads). ``True``: each stored layer is projected to keys/values once, by a projection of its own
            (``kv.{p}_{i}``), and every block reading it uses that; blocks keep their own query, output layers
            and ``gamma``. Cheaper: each layer is projected once instead of once per reading block.
        d_k, d_v, num_heads, top_k, hidden_dim, batch_norm, scale: of every :class:`NFMAttention`.

    Shapes:
        x: ``(B, in_chans, *S)``; each module maps ``(B, C_{i-1}, *S_{i-1})`` -> ``(B, channels[i], *S_i)``,
        any ``S_i`` (2-D, 1-D or a vector ``()``). Returns the last module's output.

    Module names: ``passes.{p}.{i}`` (with ``share_modules`` only ``passes.0``), blocks ``attn.{p}_{i}``,
    shared key/value projections ``kv.{p}_{i}`` (with ``share_kv``).
    """

    def __init__(self, modules: Sequence[nn.Module], channels: Sequence[int], in_chans: int, passes: int = 2,
                 attend: Optional[Sequence[int]] = None, share_modules: bool = False, share_kv: bool = False,
                 d_k: int = 16,
                 d_v: int = 16, num_heads: int = 4, top_k: Optional[int] = 5, hidden_dim: Optional[int] = None,
                 batch_norm: bool = True, scale: Optional[float] = None) -> None:
        super().__init__()
        n = len(modules)
        if n == 0 or len(channels) != n:
            raise ValueError(f"need one channel count per module: {n} modules, channels={list(channels)!r}")
        if int(passes) < 1:
            raise ValueError(f"passes must be >= 1, got {passes!r}")
        attend = tuple(range(n)) if attend is None else tuple(sorted(set(int(i) for i in attend)))
        if any(not 0 <= i < n for i in attend):
            raise ValueError(f"attend must hold module indices in [0, {n}), got {attend!r}")
        self.num_modules, self.num_passes, self.attend = n, int(passes), attend
        self.channels, self.in_chans, self.share_modules = tuple(channels), in_chans, share_modules
        first = nn.ModuleList(modules)
        copies = 1 if share_modules else self.num_passes
        self.passes = nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(copies - 1)])
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
                        scale=scale, project_sources=not share_kv)
        self.share_kv, self.key_channels = share_kv, num_heads * d_k
        self.kv = nn.ModuleDict({f"{p}_{j}": nn.Linear(channels[j], num_heads * (d_k + d_v))
                                 for p, j in sorted(read)}) if share_kv else None
        self.grad_checkpointing = False

    def sources_of(self, p: int, i: int) -> List[Tuple[int, int]]:
        """The memory when module ``i`` of pass ``p`` runs: every ``(pass, module)`` computed before it."""
        return [(q, j) for q in range(p) for j in range(self.num_modules)] + [(p, j) for j in range(i)]

    def module(self, p: int, i: int) -> nn.Module:
        return self.passes[0 if self.share_modules else p][i]

    def set_random_attention(self, enabled: bool = True) -> None:
        """Switch the random-attention ablation on every block (use at test time)."""
        for blk in self.attn.values():
            blk.random_attention = enabled

    def load_backbone(self, modules: Sequence[nn.Module]) -> None:
        """Copy a backbone's module weights into every pass (with ``gamma = 0`` the NFM network then
        computes exactly what the backbone computes)."""
        for mods in self.passes:
            for dst, src in zip(mods, modules):
                dst.load_state_dict(src.state_dict())

    def run(self, x: torch.Tensor, passes: Optional[int] = None, return_attention: bool = False,
            stop_after: Optional[int] = None) -> NFMTrace:
        """The full forward. ``passes`` overrides the number of passes (1 <= passes <= built passes);
        ``stop_after`` stops the last pass after that module index."""
        passes = self.num_passes if passes is None else int(passes)
        if not 1 <= passes <= self.num_passes:
            raise ValueError(f"passes must be in [1, {self.num_passes}] for this network, got {passes}")
        trace = NFMTrace(output=x)
        reads = trace.memory if self.kv is None else []                 # what the blocks attend over
        h = x
        for p in range(passes):
            h = x
            last = self.num_modules - 1 if (p < passes - 1 or stop_after is None) else stop_after
            for i in range(last + 1):
                blk = self.attn[f"{p}_{i}"] if f"{p}_{i}" in self.attn else None
                if blk is not None:
                    if return_attention:
                        h, w, slots = blk(h, reads, return_weights=True)
                        trace.attention.append(NFMAttentionInfo(p, i, w, self.sources_of(p, i), slots))
                    else:
                        h = blk(h, reads)
                mod = self.module(p, i)
                if self.grad_checkpointing and torch.is_grad_enabled():
                    h = checkpoint(mod, h, use_reentrant=False)
                else:
                    h = mod(h)
                trace.memory.append(h)
                trace.memory_index.append((p, i))
                if self.kv is not None:                                   # shared projection, once per layer
                    lin = self.kv[f"{p}_{i}"] if f"{p}_{i}" in self.kv else None
                    reads.append(None if lin is None else _project_source(lin, h, self.key_channels))
        trace.output = h
        return trace

    def forward(self, x: torch.Tensor, passes: Optional[int] = None) -> torch.Tensor:
        return self.run(x, passes=passes).output
