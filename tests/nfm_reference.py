"""A brute-force NFM block written from the thesis (10.3.2.1-10.3.2.2) for the tests, independent of
``zoo.layers.nfm``: no rescaling helper of the package and no attribute of the block other than its
parameters and sizes. Every slot of every query position is listed by index, every key and value is the
projection of that one source position, and the attention is a plain softmax over the ``k`` largest scores
of each query position and head, in float64.
"""
from __future__ import annotations

import itertools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def dim_slots(n_src: int, n_q: int, pad: str) -> List[List[Tuple[int, bool]]]:
    """Per query index along one dimension: its slots as ``(source index, real)``.

    Same size: the same index. Smaller source: nearest, ``floor(q n_src / n_q)``. Larger source: the
    window ``q f .. q f + f - 1`` with ``f = ceil(n_src / n_q)`` (space-to-depth), positions past the end
    are padding: masked (``real = False``) or the last position repeated (``pad="replicate"``)."""
    if n_src <= n_q:
        return [[(q * n_src // n_q, True)] for q in range(n_q)]
    f = -(-n_src // n_q)
    return [[(min(q * f + r, n_src - 1), pad == "replicate" or q * f + r < n_src) for r in range(f)]
            for q in range(n_q)]


def slot_table(src: Sequence[int], query: Sequence[int], pad: str = "mask") -> Tuple[torch.Tensor, torch.Tensor]:
    """``(N, S)`` flat source index of every slot of every query position (row-major positions, window
    offsets row-major), and ``(N, S)`` which slots are real. A vector source (``src = ()``) is one slot
    everywhere; a vector query (``query = ()``) has one position whose slots are all source positions."""
    src, query = tuple(src), tuple(query)
    if not src:
        n = math.prod(query)
        return torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.bool)
    if not query:
        m = math.prod(src)
        return torch.arange(m).view(1, m), torch.ones(1, m, dtype=torch.bool)
    assert len(src) == len(query)
    per_dim = [dim_slots(s, q, pad) for s, q in zip(src, query)]
    idx, real = [], []
    for qpos in itertools.product(*[range(q) for q in query]):
        row_i, row_r = [], []
        for combo in itertools.product(*[per_dim[d][qpos[d]] for d in range(len(query))]):
            flat = 0
            for (i, _), s in zip(combo, src):
                flat = flat * s + i
            row_i.append(flat)
            row_r.append(all(r for _, r in combo))
        idx.append(row_i)
        real.append(row_r)
    return torch.tensor(idx), torch.tensor(real)


def reference_block(blk, h: torch.Tensor, sources: Sequence[torch.Tensor], kv: Optional[Sequence] = None,
                    scale: Optional[float] = None, pad: str = "mask", top_k: Optional[int] = -1,
                    rule: str = "topk_softmax"):
    """``(h_2, weights (B, heads, N, L))`` of an NFM block with ``blk``'s parameters.

    ``kv``: the key/value projections of the sources (default: the block's own ``blk.kv``); ``scale``:
    the score scale (default ``1 / d_k``, the thesis); ``top_k``: default ``blk.top_k``; ``rule``:
    ``"topk_softmax"`` or ``"reference"`` (the authors' sparse attention)."""
    nh, dk, dv = blk.num_heads, blk.d_k, blk.d_v
    scale = 1.0 / dk if scale is None else scale
    top_k = blk.top_k if top_k == -1 else top_k
    kv = list(blk.kv) if kv is None else list(kv)
    b, c, qs = h.shape[0], h.shape[1], tuple(h.shape[2:])
    n = math.prod(qs)
    hq = h.reshape(b, c, n)
    q = (torch.einsum("oc,bcn->bon", blk.q.weight, hq) + blk.q.bias[None, :, None]).reshape(b, nh, dk, n)
    keys = [h.new_zeros(b, nh, dk, n, 1)]                                            # the null slot first
    vals = [h.new_zeros(b, nh, dv, n, 1)]
    reals = [torch.ones(n, 1, dtype=torch.bool)]
    for lin, src in zip(kv, sources):
        m = math.prod(src.shape[2:])
        proj = torch.einsum("oc,bcm->bom", lin.weight, src.reshape(b, src.shape[1], m)) + lin.bias[None, :, None]
        idx, real = slot_table(src.shape[2:], qs, pad)
        g = proj[:, :, idx]                                                          # (B, h(dk+dv), N, S)
        keys.append(g[:, :nh * dk].reshape(b, nh, dk, n, -1))
        vals.append(g[:, nh * dk:].reshape(b, nh, dv, n, -1))
        reals.append(real)
    k, v, real = torch.cat(keys, -1), torch.cat(vals, -1), torch.cat(reals, -1)
    scores = torch.einsum("bhdn,bhdns->bhns", q, k) * scale
    scores = scores.masked_fill(~real, float("-inf"))
    n_slots = scores.shape[-1]
    if rule == "reference":
        w = scores.softmax(-1)
        if top_k is not None and n_slots > top_k + 1:
            delta = w.sort(-1, descending=True).values[..., top_k:top_k + 1] + 1e-7
            w = (w - delta).clamp(min=0)
            w = w / (w.sum(-1, keepdim=True) + 1e-7)
    else:
        keep = n_slots if top_k is None else min(top_k, n_slots)
        kth = scores.sort(-1, descending=True).values[..., keep - 1:keep]
        w = torch.where(scores >= kth, scores, torch.full_like(scores, float("-inf"))).softmax(-1)
    a = torch.einsum("bhns,bhdns->bhdn", w, v).reshape(b, nh * dv, n)
    if isinstance(blk.out1, torch.nn.Conv2d):                   # the authors' 3x3 output convolutions
        y = F.conv2d(a.reshape(b, nh * dv, *qs), blk.out1.weight, blk.out1.bias, padding=1)
        dims, view = (0, 2, 3), (1, -1, 1, 1)
    else:
        y = torch.einsum("oc,bcn->bon", blk.out1.weight, a)
        if blk.out1.bias is not None:
            y = y + blk.out1.bias[None, :, None]
        dims, view = (0, 2), (1, -1, 1)
    bn = blk.norm
    if isinstance(bn, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
        if bn.training:
            mean, var = y.mean(dims, keepdim=True), y.var(dims, unbiased=False, keepdim=True)
        else:
            mean, var = bn.running_mean.view(view), bn.running_var.view(view)
        y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(view) + bn.bias.view(view)
    if isinstance(blk.out2, torch.nn.Conv2d):
        out = F.conv2d(F.relu(y), blk.out2.weight, blk.out2.bias, padding=1)
    else:
        out = torch.einsum("oc,bcn->bon", blk.out2.weight, F.relu(y)) + blk.out2.bias[None, :, None]
    return h + blk.gamma * out.reshape(h.shape), w
