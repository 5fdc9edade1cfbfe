"""Recurrent Independent Mechanisms (Goyal, Lamb et al.; Lamb's thesis, ch. 8).

``RIMCell`` computes one step, ``RIM`` runs a sequence with ``torch.nn.LSTM``'s interface.

One step at time t (thesis section 8.2), for ``U`` units with states ``h_k`` (and ``c_k``) of size ``d``:

1. Input attention, eq. (8.1)-(8.2)/(8.3): ``X = [0 ; x_t]`` (a null row of zeros prepended to the input
   rows), shared keys ``K = X W^e`` and values ``V = X W^v``, per-unit queries ``Q_k = h_k W^q_k``,
   multi-head; ``A_k = softmax(Q_k K^T / sqrt(d_e)) V``.
2. Competition (section 8.2.2): the ``k_active`` units with the *least* attention on the null row,
   averaged over heads, form the active set ``S_t`` (ties go to the lower unit index). With a set of input
   rows, ``compete_per="position"`` runs the competition for each row instead (section 8.2.2, "for each
   spatial position").
3. Independent dynamics (section 8.2.3): ``h~_k = LSTM_k(h_k, A_k)`` (or GRU) with per-unit parameters,
   for ``k in S_t``; ``h_{t+1,k} = h_{t,k}`` exactly for ``k not in S_t`` (gradient still flows).
4. Communication (section 8.2.4): ``h_{t+1,k} = h~_k + softmax(Q_k K^T / sqrt(d_k)) V`` for ``k in S_t``,
   with per-unit query/key/value maps over all units (``comm_residual="paper"``; the default
   ``"linear"`` adds a per-unit output map, ``"gated"`` the official code's gate).

Speed: with one input row per step (a vector observation), no key/value bias and no input dropout (the
paper's defaults), the input attention over ``[0 ; x_t]`` is a two-way softmax, ``sigmoid`` of one logit,
and everything it needs from ``x_t`` is projected for the whole sequence before the time loop
(``RIMCell._fast_inputs``); other inputs take the general step. Both give the same results (tested in
float64). ``compile=True`` runs the one-row step through ``torch.compile`` (eager is the fallback when it
is unavailable); see ``docs/rims.md``.

Where the paper is silent the public implementations disagree; every such choice is an explicit option
(see :class:`RIMOptions`), and ``RIMCell.official(...)`` / ``RIM(..., official=True)`` reproduce the
numerics of the authors' code (``anirudh9119/RIMs``, ``event_based/blocks_core.py``, ``attention.py``,
``rnn_models.py``) in training mode too.
"""
from __future__ import annotations

import math
import types
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .grouped import GroupedLinear

__all__ = ["RIMCell", "RIM", "RIMStepInfo", "RIMOptions"]

_CELLS = ("lstm", "gru")
_COMPETITION = ("null_softmax", "input_logit")
_COMPETE_PER = ("step", "position")
_COMM_SOURCE = ("kept", "candidate")
_READOUT = ("all", "active")
_RESIDUAL = ("linear", "paper", "gated")
_GRU_MEMORY = ("pre_comm", "post_comm")


class RIMStepInfo(NamedTuple):
    """What one step decided, for plots and analysis.

    Attributes:
        mask: ``(B, U)`` float, 1 for the active units of this step.
        input_attention: ``(B, H_in, U, 1 + N)`` input-attention probabilities; column 0 is the null row.
        comm_attention: ``(B, H_c, U, U)`` communication probabilities (rows of inactive units are
            computed but unused), or ``None`` when communication is off.
    """

    mask: torch.Tensor
    input_attention: torch.Tensor
    comm_attention: Optional[torch.Tensor]


@dataclass(frozen=True)
class RIMOptions:
    """The choices the paper leaves open (thesis ch. 8); the defaults are listed in ``docs/rims.md``.

    Attributes:
        kv_bias: bias on the input key/value maps. ``False`` (paper, eq. 8.2 ``K = X W^e``; also the
            official code) makes the null row's key and value exactly 0, so its logit is exactly 0.
            ``True`` gives the null row a learned key/value (the bias), as in dido1998's code.
        competition: ``"null_softmax"`` (paper: least softmax attention on the null row, averaged over
            heads) or ``"input_logit"`` (rank by the raw logit of the best input row, averaged over
            heads, as in dido1998's code).
        compete_per: ``"step"`` (one competition per step over all input rows) or ``"position"``
            (thesis 8.2.2 for spatial inputs: for each input row the ``k_active`` units with the most
            attention on it win that row; a unit reads only the rows it won and is active when it won
            at least one, so more than ``k_active`` units can be active). Equal for one input row.
        comm_source: the state inactive units expose to communication: ``"kept"`` (paper: their state
            is unchanged, so the kept state) or ``"candidate"`` (official code: the discarded
            candidate ``h~``, its gradient blocked).
        readout: ``"all"`` (paper and official code: the output is every unit's state) or ``"active"``
            (inactive units read out as 0).
        comm_residual: ``"paper"`` (eq. of 8.2.4: ``h~ + softmax(Q K^T / sqrt(d_k)) V``, the heads'
            values concatenated to the unit size), ``"linear"`` (``h~ + W_o a + b_o`` with a per-unit
            output map, the Transformer's output projection) or ``"gated"`` (official code:
            ``h~ + sigmoid(W_g a + b_g) * tanh(dropout(W_o a + b_o))``).
        comm_out_shared: one output map (and gate) shared by all units, as the official code's
            ``nn.Linear`` (``False``: one per unit). Not used by ``"paper"``.
        gru_memory: what a GRU unit carries from step to step: ``"pre_comm"`` (its state before
            communication, returned as ``c``; communication is written to ``h``, which the gates read,
            as it is for LSTM units, whose ``c`` never receives it) or ``"post_comm"`` (official code:
            ``h`` with the communication added, which can grow without bound, see ``docs/rims.md``).
    """

    kv_bias: bool = False
    competition: str = "null_softmax"
    compete_per: str = "step"
    comm_source: str = "kept"
    readout: str = "all"
    comm_residual: str = "linear"
    comm_out_shared: bool = False
    gru_memory: str = "pre_comm"


_OPTION_NAMES = tuple(f.name for f in fields(RIMOptions))


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}")


# --- the step as pure functions of tensors and a static configuration -------------------------------
# Shared by the general and the one-row step, and compiled as a whole by ``torch.compile`` (``compile=True``).

class _Static(NamedTuple):
    """Everything a step needs that is not a tensor (constants for ``torch.compile``)."""

    cell: str
    units: int
    unit_size: int
    k_active: int
    input_heads: int
    input_key_size: int
    input_value_size: int
    competition: str
    comm: bool
    comm_source: str
    comm_residual: str
    comm_out_shared: bool
    comm_heads: int
    comm_key_size: int
    comm_value_size: int
    comm_topk: int            # 0: dense communication
    comm_dropout: float
    gru_memory: str
    readout: str


class _Weights(NamedTuple):
    """The step's parameters, prepared once per sequence call (see :meth:`RIMCell._step_weights`).

    gate_bias: LSTM ``b_ih + b_hh`` (U, 1, 4d) or GRU ``b_ih`` (U, 1, 3d); w_hh (U, d, G); b_hh: GRU only
    (U, 1, 3d); w_qkv (U, d, H (2 d_k + d_v)) with ``1/sqrt(d_k)`` folded into the query columns; w_out,
    b_out, w_gate, b_gate: the communication output map (per unit ``(U, H d_v, d)``, ``(U, 1, d)``; shared
    ``(d, H d_v)``, ``(d,)``) and gate, or None.
    """

    gate_bias: torch.Tensor
    w_hh: torch.Tensor
    b_hh: Optional[torch.Tensor]
    w_qkv: Optional[torch.Tensor]
    w_out: Optional[torch.Tensor]
    b_out: Optional[torch.Tensor]
    w_gate: Optional[torch.Tensor]
    b_gate: Optional[torch.Tensor]


class _Params(NamedTuple):
    """A cell's parameters (and the communication scale buffer), as tensors or None."""

    key_w: torch.Tensor
    key_b: Optional[torch.Tensor]
    value_w: torch.Tensor
    value_b: Optional[torch.Tensor]
    query_w: torch.Tensor
    ih_w: torch.Tensor
    ih_b: torch.Tensor
    hh_w: torch.Tensor
    hh_b: torch.Tensor
    qkv_w: Optional[torch.Tensor]
    comm_scale: Optional[torch.Tensor]
    out_w: Optional[torch.Tensor]
    out_b: Optional[torch.Tensor]
    gate_w: Optional[torch.Tensor]
    gate_b: Optional[torch.Tensor]


def _step_weights(st: _Static, P: _Params, fast: bool) -> _Weights:
    """The parameters as the step uses them, prepared once per call (see :class:`_Weights`)."""
    if st.cell == "lstm":
        gate_bias = P.ih_b + P.hh_b if fast else P.ih_b
        b_hh = None if fast else P.hh_b.unsqueeze(1)
    else:
        gate_bias, b_hh = P.ih_b, P.hh_b.unsqueeze(1)
    w_qkv = b_out = b_gate = None
    if st.comm:
        assert P.qkv_w is not None and P.comm_scale is not None        # set whenever st.comm
        w_qkv = P.qkv_w * P.comm_scale                  # 1/sqrt(d_k) folded into the query columns
        if P.out_b is not None:
            b_out = P.out_b if st.comm_out_shared else P.out_b.unsqueeze(1)
        if P.gate_b is not None:
            b_gate = P.gate_b if st.comm_out_shared else P.gate_b.unsqueeze(1)
    return _Weights(gate_bias.unsqueeze(1), P.hh_w, b_hh, w_qkv, P.out_w, b_out, P.gate_w, b_gate)


def _fast_inputs(st: _Static, x: torch.Tensor, P: _Params):
    """Everything of the one-row step that does not depend on the state, for all T steps at once.

    With one input row and no key/value bias the null row has key 0 and value 0 (eq. 8.2), so the
    attention of unit ``u``, head ``j`` over ``[0 ; x_t]`` is a two-way softmax (eq. 8.1/8.3):
    ``p = sigmoid(l)`` on the input row with ``l = q_uj . k_tj / sqrt(d_e)``, and the read vector is
    ``A_uj = p * v_tj``. Both products factor through the state-free side:

    * ``l = h_u . g_tuj`` with ``g_tuj = W^q_uj k_tj / sqrt(d_e)``;
    * ``W^ih_u A_u = sum_j p_uj (W^ih_uj v_tj)`` (the block of ``W^ih_u`` that reads head ``j``).

    x ``(T, B, F)`` -> ``g (U, T, B, d)`` and ``P (U, T, B, G)`` with one head (``(U, T, B, H, d)`` and
    ``(U, T, B, H, G)`` with ``H`` heads), ``G`` the gate width; two matmuls for the whole sequence.
    """
    U, d, H = st.units, st.unit_size, st.input_heads
    de, dv = st.input_key_size, st.input_value_size
    steps, batch = x.shape[:2]
    k = F.linear(x, P.key_w) * (1.0 / math.sqrt(de))
    v = F.linear(x, P.value_w)
    if H == 1:
        # (T B, e) @ (U, e, d): one batched matmul over units, no copy of the weights
        g = torch.bmm(k.reshape(1, steps * batch, de).expand(U, -1, -1), P.query_w.transpose(1, 2))
        p_in = torch.bmm(v.reshape(1, steps * batch, dv).expand(U, -1, -1), P.ih_w)
        return g.view(U, steps, batch, d), p_in.view(U, steps, batch, p_in.shape[-1])
    g = torch.einsum("tbhe,udhe->utbhd", k.reshape(steps, batch, H, de), P.query_w.view(U, d, H, de))
    p_in = torch.einsum("tbhv,uhvg->utbhg", v.reshape(steps, batch, H, dv), P.ih_w.view(U, H, dv, -1))
    return g, p_in


def _compete(score: torch.Tensor, k: int) -> torch.Tensor:
    """score (U, ...) -> 0/1 mask (U, ...) with exactly ``k`` ones along dim 0: the ``k`` largest scores,
    ties going to the lower unit index (section 8.2.2). A unit's rank is the number of units that beat it:
    a higher score, or an equal score and a lower index; the ``k`` units of rank ``< k`` win."""
    units = score.shape[0]
    if k == units:
        return torch.ones_like(score)
    s_u, s_w = score.unsqueeze(1), score.unsqueeze(0)                        # (U, 1, ...), (1, U, ...)
    lower = torch.ones(units, units, dtype=torch.bool, device=score.device).tril(-1)   # [u, w]: w < u
    lower = lower.view(units, units, *([1] * (score.dim() - 1)))
    rank = ((s_w > s_u) | ((s_w == s_u) & lower)).sum(1)
    return (rank < k).to(score.dtype)


def _lstm_update(pre: torch.Tensor, c: torch.Tensor, d: int):
    """The LSTM of every unit from its gate pre-activations ``W^ih A + W^hh h + b`` (U, B, 4d), gates
    ordered ``i, f, o, g`` -> h~, c~."""
    # split (not slicing): its backward is one cat instead of zero-filled buffers per slice
    ifo, g = pre.split([3 * d, d], dim=-1)
    i, f, o = torch.sigmoid(ifo).chunk(3, dim=-1)
    c_new = torch.addcmul(f * c, i, torch.tanh(g))
    return o * torch.tanh(c_new), c_new


def _gru_update(st: _Static, x_gates: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w: _Weights):
    """The GRU of every unit from its input-side pre-activations ``W^ih A + b^ih`` (U, B, 3d), gates
    ``r, z, n``: ``h~ = (1 - z) n + z m`` with ``m`` the carried memory (``gru_memory``: ``c``, the state
    before communication, or ``h``) -> h~, c~ (equal)."""
    d = st.unit_size
    xrz, xn = x_gates.split([2 * d, d], dim=-1)
    assert w.b_hh is not None                                            # GRU weights always carry b_hh
    hrz, hn = torch.baddbmm(w.b_hh, h, w.w_hh).split([2 * d, d], dim=-1)
    r, z = torch.sigmoid(xrz + hrz).chunk(2, dim=-1)
    memory = c if st.gru_memory == "pre_comm" else h
    h_new = torch.lerp(torch.tanh(torch.addcmul(xn, r, hn)), memory, z)    # (1 - z) n + z memory
    return h_new, h_new


def _communicate(st: _Static, h_src: torch.Tensor, w: _Weights, training: bool):
    """Attention among units (section 8.2.4): h_src (U, B, d) -> update (U, B, d), probs (U, U, B, H)
    (query unit, key unit, sample, head).

    With ``U`` units the ``U x U`` scores are a broadcast product, not a batched matmul: at these sizes
    (a few units, keys of 16) the elementwise form ran 2-3x faster, forward and backward, than
    ``einsum``/``bmm`` (batch 4 to 64, one CPU thread), which need permuted copies to put (sample, head) first.
    """
    units, batch = h_src.shape[:2]
    H, dk, dv = st.comm_heads, st.comm_key_size, st.comm_value_size
    assert w.w_qkv is not None                                           # set whenever st.comm
    qkv = torch.bmm(h_src, w.w_qkv)
    if dk == dv:
        q, k, v = qkv.view(units, batch, 3, H, dk).unbind(2)
    else:
        q, k, v = qkv.split([H * dk, H * dk, H * dv], dim=-1)
        q, k, v = q.view(units, batch, H, dk), k.view(units, batch, H, dk), v.view(units, batch, H, dv)
    logits = (q.unsqueeze(1) * k).sum(-1)                                # (U, U, B, H), scaled via w_qkv
    if 0 < st.comm_topk < units:
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(
            1, logits.topk(st.comm_topk, dim=1).indices, True)           # exactly k: the largest scores
        logits = logits.masked_fill(~keep, float("-inf"))
    probs = logits.softmax(dim=1)
    a = (probs.unsqueeze(-1) * v).sum(1).reshape(units, batch, H * dv)
    p_drop = st.comm_dropout if training else 0.0
    if st.comm_residual == "paper":
        return F.dropout(a, p_drop, training), probs

    def out(weight, bias):
        return F.linear(a, weight, bias) if st.comm_out_shared else torch.baddbmm(bias, a, weight)

    if st.comm_residual == "linear":
        return F.dropout(out(w.w_out, w.b_out), p_drop, training), probs
    # official code: gate * tanh(dropout(fc(a))), one fc and gate for all units
    return torch.sigmoid(out(w.w_gate, w.b_gate)) * torch.tanh(F.dropout(out(w.w_out, w.b_out), p_drop, training)), probs


def _merge(st: _Static, h, c, h_cand, c_cand, m, w: _Weights, training: bool):
    """Communication among the candidates (section 8.2.4) and the frozen inactive units (8.2.3):
    h, c the kept state, h_cand, c_cand the candidates, m (U, B, 1) 0/1 -> h_next, c_next, comm probs.

    The state keeps its dtype: under bf16 autocast the candidates and the communication come out of bf16
    matmuls and are cast to the state's dtype here (no-ops when they already match), so the recurrent state
    stays float32 from step to step and ``lerp`` / ``addcmul`` see one dtype."""
    comm_probs = None
    h_cand, c_cand, m = h_cand.to(h.dtype), c_cand.to(c.dtype), m.to(h.dtype)
    if st.comm:
        if st.comm_source == "kept":
            h_src = torch.lerp(h, h_cand, m)
            update, comm_probs = _communicate(st, h_src, w, training)
            update = update.to(h.dtype)
            # h_src + m * update: exactly h where m = 0 (h + 0), exactly h~ + update where m = 1; the
            # gradient to the update is m.
            h_next = torch.addcmul(h_src, m, update)
        else:
            # the official code's blocked_grad: every unit exposes its candidate, inactive units' with no
            # gradient (where(m, x, x.detach()) is x itself, forward, bit for bit)
            h_src = torch.where(m > 0, h_cand, h_cand.detach())
            update, comm_probs = _communicate(st, h_src, w, training)
            h_next = torch.lerp(h, h_src + update.to(h.dtype), m)
    else:
        # lerp with a 0/1 weight returns `start` or `end` bit-for-bit: inactive units keep h and c
        # exactly, and the gradient still flows through them (weight 1 - 0 on h).
        h_next = torch.lerp(h, h_cand, m)
    return h_next, torch.lerp(c, c_cand, m), comm_probs


def _fast_step(st: _Static, g: torch.Tensor, p_in: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
               w: _Weights, keep: Optional[torch.Tensor], training: bool):
    """One step of the one-row fast path (see :meth:`RIMCell._fast_inputs`); g, p_in this step's slices,
    h, c (U, B, d), keep (1, B, 1) or None. Returns ``h, c``, the readout (U, B, d), mask (U, B), the
    input logits (U, B, H) and comm probs (U, U, B, H) or None."""
    if keep is not None:
        h, c = h * keep, c * keep
    if st.input_heads == 1:
        logit = (h * g).sum(-1, keepdim=True)                                # (U, B, 1), eq. 8.1
    else:
        logit = (h.unsqueeze(2) * g).sum(-1)                                 # (U, B, H)
    p = torch.sigmoid(logit)                                                 # attention on the input row
    # Competition (8.2.2) on the score of the general path: minus the null row's attention
    # sigmoid(-l) = 1 - p averaged over heads (not the logit, although it ranks the same: where the
    # rounded probabilities tie, e.g. all 1.0, the general path's tie-break is kept), or the input logit.
    score = logit.detach()
    if st.competition == "null_softmax":
        score = -torch.sigmoid(-score).mean(-1)
    else:
        score = score.mean(-1)
    mask = _compete(score, st.k_active)
    if st.cell == "lstm":
        base = torch.baddbmm(w.gate_bias, h, w.w_hh)
    else:
        base = w.gate_bias
    if st.input_heads == 1:
        gates = torch.addcmul(base, p, p_in)                                 # base + p * W^ih v
    else:
        gates = base + (p.unsqueeze(-1) * p_in).sum(-2)
    if st.cell == "lstm":
        h_cand, c_cand = _lstm_update(gates, c, st.unit_size)
    else:
        h_cand, c_cand = _gru_update(st, gates, h, c, w)
    h_next, c_next, comm_probs = _merge(st, h, c, h_cand, c_cand, mask.unsqueeze(-1), w, training)
    out = h_next if st.readout == "all" else h_next * mask.unsqueeze(-1)
    return h_next, c_next, out, mask, logit, comm_probs


def _fast_steps(st: _Static, gs: Tuple[torch.Tensor, ...], ps: Tuple[torch.Tensor, ...], h: torch.Tensor,
                c: torch.Tensor, w: _Weights, keeps: Tuple[Optional[torch.Tensor], ...], training: bool):
    """``len(gs)`` consecutive steps of :func:`_fast_step` in one call (a list of their results): compiled,
    one graph and one autograd node for the whole chunk instead of one per step, whose per-call cost (guards,
    wrappers, the autograd engine) is most of a small RIM's step on CPU."""
    results = []
    for g, p_in, keep in zip(gs, ps, keeps):
        res = _fast_step(st, g, p_in, h, c, w, keep, training)
        h, c = res[0], res[1]
        results.append(res)
    return results


def _single_step(st: _Static, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, P: _Params,
                 keep: Optional[torch.Tensor], training: bool):
    """A whole one-row call of one step, from the raw parameters: x (B, F), h, c (U, B, d). What RL rollouts
    run at every environment step; compiled as one graph, input projection included."""
    g, p_in = _fast_inputs(st, x.unsqueeze(0), P)
    return _fast_step(st, g[:, 0], p_in[:, 0], h, c, _step_weights(st, P, fast=True), keep, training)


_COMPILED: Dict[Tuple[str, _Static], Callable] = {}
_COMPILE_ERROR: Optional[str] = None


def _compiled(fn: Callable, st: _Static) -> Callable:
    """``torch.compile(fn)`` for one static configuration, shared by every cell that has it.

    Each configuration compiles its own copy of ``fn`` (a copy of its code object): torch caches compiled
    graphs per code object with a limit on recompilations (training/eval, reset masks, batch sizes), which
    one shared code object would exhaust as soon as a process uses a few configurations."""
    key = (fn.__name__, st)
    compiled = _COMPILED.get(key)
    if compiled is None:
        code = fn.__code__.replace(co_name=f"{fn.__name__}_{len(_COMPILED)}")
        copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__)
        compiled = _COMPILED[key] = torch.compile(copy, fullgraph=True)
    return compiled


class RIMCell(nn.Module):
    """One step of Recurrent Independent Mechanisms (thesis eq. 8.1-8.3 and sections 8.2.2-8.2.4).

    Args:
        input_size: features per input row.
        hidden_size: total state size, ``num_units * unit_size``.
        num_units: number of mechanisms ``U`` (paper ``k_T``).
        k_active: number of active units per step (paper ``k_A``), ``1 <= k_active <= num_units``.
        cell: per-unit dynamics, ``"lstm"`` or ``"gru"``.
        input_heads, input_key_size, input_value_size: input attention (defaults ours: 1 head,
            ``d_e = 64``, value size = ``unit_size``; the official code uses ``4 * unit_size`` values).
        comm: enable communication between units (section 8.2.4).
        comm_heads, comm_key_size, comm_value_size: communication attention (4 heads of 16, as the
            official code; with ``comm_residual="paper"`` the value size defaults to ``unit_size / comm_heads``
            so that the concatenated heads have the unit size).
        comm_topk: keep only the ``comm_topk`` largest communication scores per query (``None``: all).
        input_dropout: dropout on the read vector ``A_k`` (the official code's position), default 0.
        comm_dropout: dropout on the communication update (inside the ``tanh`` for the gated residual, as
            the official code), default 0.
        compile: run the one-row step through ``torch.compile`` (faster on CPU for long runs; the first
            call compiles, about a minute; eager is the fallback where compiling is not possible).
        compile_chunk: with ``compile``, the time steps of a sequence compiled as one graph (the rest of a
            sequence runs step by step). ``1`` (default): one graph per step. ``8``: one call, graph and
            autograd node per 8 steps, whose per-call cost dominates small RIMs on CPU, for a first compile
            several times longer (1-4 minutes); measured in ``docs/rims.md`` ("Speed"). Same forward bit
            for bit, gradients to rounding.
        options: a :class:`RIMOptions`, or pass its fields as keyword arguments.

    Shapes:
        x: ``(B, input_size)`` (one row) or ``(B, N, input_size)`` (a set of rows, e.g. a CNN map).
        state: ``(h, c)`` each ``(B, hidden_size)``; ``None`` means zeros. For LSTM units ``c`` is the
            cell; for GRU units ``c`` is the state before communication (the unit's memory, see
            ``RIMOptions.gru_memory``) and equals ``h`` when communication is off.
        reset: optional ``(B,)`` bool/float; where true the state is reset to zeros before this step
            (episode starts in RL).
        returns: ``out (B, hidden_size)``, ``(h, c)``, and a :class:`RIMStepInfo` if ``return_info``.
    """

    comm_scale: torch.Tensor                                             # buffer, registered when comm

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_units: int = 6,
        k_active: int = 4,
        cell: str = "lstm",
        *,
        input_heads: int = 1,
        input_key_size: int = 64,
        input_value_size: Optional[int] = None,
        comm: bool = True,
        comm_heads: int = 4,
        comm_key_size: int = 16,
        comm_value_size: Optional[int] = None,
        comm_topk: Optional[int] = None,
        input_dropout: float = 0.0,
        comm_dropout: float = 0.0,
        compile: bool = False,
        compile_chunk: int = 1,
        options: Optional[RIMOptions] = None,
        **option_kwargs,
    ) -> None:
        super().__init__()
        unknown = sorted(set(option_kwargs) - set(_OPTION_NAMES))
        if unknown:
            raise TypeError(f"RIM got an unexpected keyword argument {unknown[0]!r}; RIM options: "
                            f"{', '.join(_OPTION_NAMES)} (see zoo.RIMOptions) and the RIMCell arguments")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_units", num_units),
                            ("input_heads", input_heads), ("input_key_size", input_key_size),
                            ("comm_heads", comm_heads), ("comm_key_size", comm_key_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if hidden_size % num_units:
            raise ValueError(
                f"hidden_size={hidden_size} is not divisible by num_units={num_units}; choose hidden_size as a "
                f"multiple of num_units (e.g. {num_units * max(1, hidden_size // num_units)})")
        if not (isinstance(k_active, int) and 1 <= k_active <= num_units):
            raise ValueError(f"k_active={k_active!r} must be an integer with 1 <= k_active <= num_units={num_units}")
        _check_choice("cell", cell, _CELLS)
        if comm_topk is not None and not (isinstance(comm_topk, int) and 1 <= comm_topk <= num_units):
            raise ValueError(f"comm_topk={comm_topk!r} must be None or an integer in [1, num_units={num_units}]")
        for name, rate in (("input_dropout", input_dropout), ("comm_dropout", comm_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name}={rate!r} must be in [0, 1)")
        if options is None:
            options = RIMOptions(**option_kwargs)
        elif option_kwargs:
            options = RIMOptions(**{**asdict(options), **option_kwargs})
        _check_choice("competition", options.competition, _COMPETITION)
        _check_choice("compete_per", options.compete_per, _COMPETE_PER)
        _check_choice("comm_source", options.comm_source, _COMM_SOURCE)
        _check_choice("readout", options.readout, _READOUT)
        _check_choice("comm_residual", options.comm_residual, _RESIDUAL)
        _check_choice("gru_memory", options.gru_memory, _GRU_MEMORY)

        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_units, self.k_active, self.cell = num_units, k_active, cell
        self.unit_size = d = hidden_size // num_units
        self.options = options
        self.input_heads, self.input_key_size = input_heads, input_key_size
        self.input_value_size = dv = input_value_size or d
        if comm_value_size is None:
            comm_value_size = d // comm_heads if options.comm_residual == "paper" else 16
        if comm and options.comm_residual == "paper" and comm_heads * comm_value_size != d:
            raise ValueError(
                f'comm_residual="paper" adds the concatenated heads to the unit state, so comm_heads * '
                f"comm_value_size must equal unit_size={d}; got {comm_heads} * {comm_value_size}")
        if comm_value_size < 1:
            raise ValueError(f"comm_value_size must be a positive integer, got {comm_value_size!r}")
        self.comm, self.comm_heads, self.comm_key_size, self.comm_topk = comm, comm_heads, comm_key_size, comm_topk
        self.comm_value_size = comm_value_size
        # not `self.compile`: that would shadow nn.Module.compile()
        self.compile_step = bool(compile)
        if not isinstance(compile_chunk, int) or isinstance(compile_chunk, bool) or compile_chunk < 1:
            raise ValueError(f"compile_chunk must be a positive integer (time steps per compiled graph), "
                             f"got {compile_chunk!r}")
        self.compile_chunk = compile_chunk

        # Input attention: per-unit queries, shared keys/values over [null ; rows] (eq. 8.2).
        self.input_query = GroupedLinear(num_units, d, input_heads * input_key_size, bias=False)
        self.input_key = nn.Linear(input_size, input_heads * input_key_size, bias=options.kv_bias)
        self.input_value = nn.Linear(input_size, input_heads * dv, bias=options.kv_bias)
        self.input_dropout = nn.Dropout(input_dropout)

        # Independent dynamics: separate parameters per unit (block-diagonal, never a shared cell).
        gates = 4 if cell == "lstm" else 3
        self.w_ih = GroupedLinear(num_units, input_heads * dv, gates * d, bias=True)
        self.w_hh = GroupedLinear(num_units, d, gates * d, bias=True)

        # Communication: per-unit query/key/value maps over all units (section 8.2.4).
        self.comm_out: Optional[Union[nn.Linear, GroupedLinear]] = None
        self.comm_gate: Optional[Union[nn.Linear, GroupedLinear]] = None
        if comm:
            # queries, keys and values of all units in one grouped matmul: (U, d, H * (2 d_k + d_v))
            self.comm_qkv = GroupedLinear(num_units, d, comm_heads * (2 * comm_key_size + comm_value_size), bias=False)
            width = comm_heads * comm_value_size
            if options.comm_residual != "paper":
                make: Callable[[], Union[nn.Linear, GroupedLinear]] = (
                    (lambda: nn.Linear(width, d)) if options.comm_out_shared else (lambda: GroupedLinear(num_units, width, d)))
                self.comm_out = make()
                self.comm_gate = make() if options.comm_residual == "gated" else None
            self.comm_dropout = nn.Dropout(comm_dropout)
            # 1 / sqrt(d_k) on the query columns, 1 on key and value columns: folded into the weight once
            # per call (:meth:`_step_weights`) instead of scaling the scores at every step
            scale = torch.ones(comm_heads * (2 * comm_key_size + comm_value_size))
            scale[:comm_heads * comm_key_size] = 1.0 / math.sqrt(comm_key_size)
            self.register_buffer("comm_scale", scale, persistent=False)

    @classmethod
    def official(cls, input_size: int, hidden_size: int, num_units: int = 6, k_active: int = 4,
                 cell: str = "lstm", **kwargs) -> "RIMCell":
        """The numerics of the authors' code (``event_based/blocks_core.py``, ``attention.py``), in training
        mode too: 1 input head with ``d_e = 64`` and ``4 * unit_size`` values, no key/value bias (null logit
        exactly 0), ranking by null softmax, 4 communication heads of size 16 with one output layer and
        one gate shared by all units, ``h~ + sigmoid(W_g a) * tanh(dropout(W_o a))``, inactive units
        exposing their discarded candidate (gradient blocked), dropout 0.1 on the read vector and inside
        the communication ``tanh``, GRU units carrying the communicated state, and the reference
        initialization (:meth:`reset_parameters_official`). ``kwargs`` override any of these."""
        d = hidden_size // num_units if hidden_size % num_units == 0 else 1
        cfg: Dict[str, Any] = dict(input_heads=1, input_key_size=64, input_value_size=4 * d, comm_heads=4, comm_key_size=16,
                   comm_value_size=16, input_dropout=0.1, comm_dropout=0.1,
                   options=RIMOptions(kv_bias=False, competition="null_softmax", comm_source="candidate",
                                      readout="all", comm_residual="gated", comm_out_shared=True,
                                      gru_memory="post_comm"))
        cfg.update(kwargs)
        rim = cls(input_size, hidden_size, num_units, k_active, cell, **cfg)
        rim.reset_parameters_official()
        return rim

    @torch.no_grad()
    def reset_parameters_official(self) -> None:
        """The official code's initialization: its ``GroupLinearLayer`` weights (input query/key/value and
        communication query/key/value) ``0.01 * randn``; the block-diagonal ``nn.LSTMCell``/``nn.GRUCell``
        weights and biases ``U(-1/sqrt(H), 1/sqrt(H))`` with ``H = hidden_size`` (the whole cell's size);
        the shared communication output layer and gate: ``nn.Linear``'s default."""
        for weight in (self.input_query.weight, self.input_key.weight, self.input_value.weight):
            weight.normal_(0.0, 0.01)
        if self.comm:
            self.comm_qkv.weight.normal_(0.0, 0.01)
        bound = 1.0 / math.sqrt(self.hidden_size)
        for lin in (self.w_ih, self.w_hh):
            assert lin.bias is not None                                  # built with bias=True
            lin.weight.uniform_(-bound, bound)
            lin.bias.uniform_(-bound, bound)

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zeros, the initial state of every new sequence: ``(h, c)`` each ``(B, hidden_size)``."""
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return z, z

    def named_unit_parameters(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """Every unit's recurrent weights as 2-D views laid out and named as ``nn.LSTM``'s / ``nn.GRU``'s
        (``weight_ih_u{k}`` ``(G d, in)``, ``weight_hh_u{k}`` ``(G d, d)``, ``bias_ih_u{k}``, ``bias_hh_u{k}``
        ``(G d,)``; gates ``i, f, o, g`` for LSTM units (the forget gate at ``[d:2d]`` as in ``nn.LSTM``),
        ``r, z, n`` for GRU units). In-place initializers written for ``nn.LSTM`` loops
        (``for name, p in lstm.named_parameters(): if "weight" in name: nn.init.orthogonal_(p)``) do what
        their author meant on these views, one unit at a time; on :meth:`named_parameters` they see the
        stacked ``(U, in, out)`` tensors instead (see ``docs/rims.md``)."""
        assert self.w_ih.bias is not None and self.w_hh.bias is not None  # built with bias=True
        for u in range(self.num_units):
            yield f"weight_ih_u{u}", self.w_ih.weight[u].t()
            yield f"weight_hh_u{u}", self.w_hh.weight[u].t()
            yield f"bias_ih_u{u}", self.w_ih.bias[u]
            yield f"bias_hh_u{u}", self.w_hh.bias[u]

    # --- the four stages, on unit-major tensors: states are (U, B, d) ------------------------------
    def _static(self) -> _Static:
        o = self.options
        return _Static(self.cell, self.num_units, self.unit_size, self.k_active, self.input_heads,
                       self.input_key_size, self.input_value_size, o.competition, self.comm, o.comm_source,
                       o.comm_residual, o.comm_out_shared, self.comm_heads, self.comm_key_size,
                       self.comm_value_size, self.comm_topk or 0, float(self.comm_dropout.p) if self.comm else 0.0,
                       o.gru_memory, o.readout)

    def _params(self) -> _Params:
        comm = self.comm
        out, gate = self.comm_out, self.comm_gate
        assert self.w_ih.bias is not None and self.w_hh.bias is not None  # built with bias=True
        return _Params(self.input_key.weight, self.input_key.bias, self.input_value.weight, self.input_value.bias,
                       self.input_query.weight, self.w_ih.weight, self.w_ih.bias, self.w_hh.weight, self.w_hh.bias,
                       self.comm_qkv.weight if comm else None, self.comm_scale if comm else None,
                       None if out is None else out.weight, None if out is None else out.bias,
                       None if gate is None else gate.weight, None if gate is None else gate.bias)

    def _step_weights(self, fast: bool) -> _Weights:
        """The parameters as the step uses them, prepared once per call (see :class:`_Weights`)."""
        return _step_weights(self._static(), self._params(), fast)

    def project_input(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``X = [0 ; x]`` (eq. 8.1-8.2). They do not depend on the state, so a
        sequence projects all its steps at once.

        x: ``(..., N, F)`` -> keys ``(..., 1+N, H, d_e)``, values ``(..., 1+N, H, d_v)``.
        """
        rows = F.pad(x, (0, 0, 1, 0))                                    # prepend the null row
        k = rearrange(self.input_key(rows), "... n (h d) -> ... n h d", h=self.input_heads)
        v = rearrange(self.input_value(rows), "... n (h d) -> ... n h d", h=self.input_heads)
        return k, v

    def _input_attention(self, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor):
        """Input attention and competition (eq. 8.1-8.3, section 8.2.2). k, v: (B, 1+N, H, .), h: (U, B, d)
        -> read (U, B, H*dv), probs (U, B, H, 1+N), mask (U, B)."""
        q = rearrange(self.input_query.unit_major(h), "u b (h d) -> u b h d", h=self.input_heads)
        logits = torch.einsum("ubhd,bnhd->ubhn", q, k) / math.sqrt(self.input_key_size)
        probs = logits.softmax(dim=-1)
        weights = probs
        if self.options.compete_per == "position":
            # each input row (position) has its own competition; a unit reads the rows it won
            if self.options.competition == "null_softmax":
                per_row = probs[..., 1:].detach().mean(dim=2)            # (U, B, N): attention on each row
            else:
                per_row = logits[..., 1:].detach().mean(dim=2)
            won = _compete(per_row, self.k_active)                        # k winners per row
            mask = won.amax(dim=-1)                                       # active: won at least one row
            weights = torch.cat([probs[..., :1], probs[..., 1:] * won.unsqueeze(2)], dim=-1)
        else:
            if self.options.competition == "null_softmax":
                score = -probs[..., 0].detach().mean(dim=-1)             # least null attention wins
            else:
                score = logits[..., 1:].detach().amax(dim=-1).mean(dim=-1)  # strongest raw input logit wins
            mask = _compete(score, self.k_active)
        read = rearrange(torch.einsum("ubhn,bnhd->ubhd", weights, v), "u b h d -> u b (h d)")
        return self.input_dropout(read), probs, mask

    def step(self, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
             reset: Optional[torch.Tensor] = None, w: Optional[_Weights] = None):
        """One step on unit-major state (the general path: any number of rows, every option). k, v from
        :meth:`project_input` for this step; h, c (U, B, d); reset (B,) or None; w: :meth:`_step_weights`
        (computed if None). Returns ``h, c`` (U, B, d), mask (U, B), input probs (U, B, H, 1+N), comm
        probs (U, U, B, H) or None."""
        if w is None:
            w = self._step_weights(fast=False)
        st = self._static()
        if reset is not None:
            keep = (1 - reset.to(h.dtype)).view(1, reset.shape[0], 1)
            h, c = h * keep, c * keep
        read, in_probs, mask = self._input_attention(k, v, h)
        x_gates = self.w_ih.unit_major(read)
        if self.cell == "lstm":
            assert w.b_hh is not None                                    # the general path keeps b_hh apart
            h_cand, c_cand = _lstm_update(x_gates + torch.baddbmm(w.b_hh, h, w.w_hh), c, self.unit_size)
        else:
            h_cand, c_cand = _gru_update(st, x_gates, h, c, w)
        h_next, c_next, comm_probs = _merge(st, h, c, h_cand, c_cand, mask.unsqueeze(-1), w, self.training)
        return h_next, c_next, mask, in_probs, comm_probs

    # --- the fast path: one input row, no key/value bias, no input dropout ------------------------
    def fast_path_applies(self, num_rows: int) -> bool:
        """Whether :meth:`run` takes the one-row fast path: one input row per step (a vector
        observation), ``kv_bias=False`` (the paper's and the official code's choice) and no dropout on
        the read vector (``input_dropout=0``, or eval mode)."""
        return (num_rows == 1 and not self.options.kv_bias
                and (self.input_dropout.p == 0 or not self.training))

    def _fast_inputs(self, x: torch.Tensor):
        """:func:`_fast_inputs` with this cell's parameters: x ``(T, B, F)`` -> ``g``, ``P``."""
        return _fast_inputs(self._static(), x, self._params())

    def _compiling(self) -> bool:
        return self.compile_step and _COMPILE_ERROR is None

    @staticmethod
    def _call_compiled(fn: Callable, eager: Callable, st: _Static, *args):
        """``_compiled(fn, st)(st, *args)``; where compiling fails, warn once and run ``eager`` from now on."""
        global _COMPILE_ERROR
        if _COMPILE_ERROR is None:
            try:
                return _compiled(fn, st)(st, *args)
            except Exception as exc:  # no compiler, unsupported platform
                _COMPILE_ERROR = f"{type(exc).__name__}: {exc}".splitlines()[0]
                warnings.warn(f"RIM compile=True: torch.compile failed ({_COMPILE_ERROR}); running eager",
                              RuntimeWarning, stacklevel=3)
        return eager(st, *args)

    def run(self, rows: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
            episode_starts: Optional[torch.Tensor] = None, return_info: bool = False,
            readout: Optional[str] = None):
        """The cell over a sequence, on unit-major state.

        rows ``(T, B, N, F)``; h, c ``(U, B, d)``; episode_starts ``(T, B)`` or None; readout: override of
        the ``readout`` option (``RIM`` passes ``"active"`` to inner layers with ``use_inactive=False``).
        Returns the readout ``(T, U, B, d)``, the last ``h, c`` and a list of T :class:`RIMStepInfo`
        (empty unless ``return_info``). Takes the fast path (:meth:`fast_path_applies`) when it applies,
        with the same results as the general path up to rounding.
        """
        steps = rows.shape[0]
        h, c = h.contiguous(), c.contiguous()
        st = self._static()
        if readout is not None:
            _check_choice("readout", readout, _READOUT)
            st = st._replace(readout=readout)
        outs, infos = [], []
        if self.fast_path_applies(rows.shape[2]):
            keeps = [None] * steps if episode_starts is None else \
                (1 - episode_starts.to(h.dtype)).view(steps, 1, episode_starts.shape[1], 1).unbind(0)
            # a first step whose state needs no gradient (zeros, a stored state) runs eager when compiled:
            # its graph would differ from every later step's, a second compilation for one step
            first_eager = torch.is_grad_enabled() and not (h.requires_grad or c.requires_grad)
            compiling = self._compiling()
            P = self._params()
            if steps == 1 and compiling and not first_eager:
                # one step (RL rollouts): the input projection and the step in one compiled graph
                res = self._call_compiled(_single_step, _single_step, st, rows[0, :, 0], h, c, P, keeps[0],
                                          self.training)
                steps_out = [res]
            else:
                # unbind (not g[t]): indexing would give each step's backward a zero-filled buffer the size
                # of the whole sequence, O(T^2) work; unbind's backward is one stack
                gs, ps = (t.unbind(1) for t in _fast_inputs(st, rows.squeeze(2), P))
                w = _step_weights(st, P, fast=True)
                steps_out = []
                t = 0
                while t < steps:
                    compiled_step = compiling and not (t == 0 and first_eager)
                    chunk = self.compile_chunk if compiled_step and steps - t >= self.compile_chunk else 1
                    if chunk > 1:                                    # compile_chunk steps in one graph
                        res_list = self._call_compiled(
                            _fast_steps, _fast_steps, st, tuple(gs[t:t + chunk]), tuple(ps[t:t + chunk]), h, c, w,
                            tuple(keeps[t:t + chunk]), self.training)
                    elif compiled_step:
                        res_list = [self._call_compiled(_fast_step, _fast_step, st, gs[t], ps[t], h, c, w, keeps[t],
                                                        self.training)]
                    else:
                        res_list = [_fast_step(st, gs[t], ps[t], h, c, w, keeps[t], self.training)]
                    h, c = res_list[-1][0], res_list[-1][1]
                    steps_out.extend(res_list)
                    t += chunk
            for h, c, out, mask, logit, comm_probs in steps_out:
                outs.append(out)
                if return_info:
                    # the two-way softmax over [null ; x]: null column sigmoid(-l) = 1 - p
                    in_probs = torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], dim=-1)
                    infos.append(self.info(mask, in_probs, comm_probs))
        else:
            keys, values = (t.unbind(0) for t in self.project_input(rows))
            w = self._step_weights(fast=False)
            for t in range(steps):
                reset = None if episode_starts is None else episode_starts[t]
                h, c, mask, in_probs, comm_probs = self.step(keys[t], values[t], h, c, reset, w)
                outs.append(h if st.readout == "all" else h * mask.unsqueeze(-1))
                if return_info:
                    infos.append(self.info(mask, in_probs, comm_probs))
        if steps == 0:
            return h.new_zeros(0, *h.shape), h, c, infos
        return torch.stack(outs), h, c, infos

    @staticmethod
    def info(mask, in_probs, comm_probs) -> RIMStepInfo:
        """Unit-major step results (mask (U, B), input probs (U, B, H, 1+N), comm probs (U, U, B, H) or
        None) -> a batch-major :class:`RIMStepInfo`."""
        return RIMStepInfo(
            mask.transpose(0, 1),
            in_probs.permute(1, 2, 0, 3),
            None if comm_probs is None else comm_probs.permute(2, 3, 0, 1))

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"RIMCell expects input of shape (batch, {self.input_size}) or (batch, rows, {self.input_size}), "
                f"got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("RIMCell needs at least one input row per step, got a set of 0 rows")
        return x

    def forward(self, x: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                reset: Optional[torch.Tensor] = None, return_info: bool = False):
        x = self._check_input(x)
        batch = x.shape[0]
        if state is None:
            state = self.init_state(batch, x.device, x.dtype)
        h, c = state
        if h.shape != (batch, self.hidden_size) or c.shape != (batch, self.hidden_size):
            raise ValueError(f"state (h, c) must each have shape ({batch}, {self.hidden_size}), "
                             f"got {tuple(h.shape)} and {tuple(c.shape)}")
        U, d = self.num_units, self.unit_size
        h = h.reshape(batch, U, d).transpose(0, 1)
        c = c.reshape(batch, U, d).transpose(0, 1)
        starts = None if reset is None else reset.reshape(1, batch)
        outs, h, c, infos = self.run(x.unsqueeze(0), h, c, starts, return_info)
        out = outs[0].transpose(0, 1).reshape(batch, self.hidden_size)
        state = (h.transpose(0, 1).reshape(batch, self.hidden_size), c.transpose(0, 1).reshape(batch, self.hidden_size))
        if return_info:
            return out, state, infos[0]
        return out, state

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_units={self.num_units}, "
                f"k_active={self.k_active}, cell={self.cell!r}, comm={self.comm}, compile={self.compile_step}, "
                + (f"compile_chunk={self.compile_chunk}, " if self.compile_chunk > 1 else "") + f"{self.options}")


class RIM(nn.Module):
    """A stack of :class:`RIMCell` layers with ``torch.nn.LSTM``'s interface (thesis ch. 8).

    ``RIM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0)`` takes the
    positional arguments of ``nn.LSTM``, plus ``num_units``, ``k_active``, ``cell``, ``use_inactive``,
    ``official`` and every :class:`RIMCell` keyword. It can replace ``nn.LSTM`` literally in existing code.

    Args:
        use_inactive: whether a layer above reads the inactive units' states too (``True``); ``False``
            zeroes them in the input of the next layer (the official code's default, ``use_inactive=False``
            in ``rnn_models.py``). The last layer's output always follows the ``readout`` option.
        official: build every layer with :meth:`RIMCell.official` (and ``use_inactive=False``).

    Shapes (``L = num_layers``, ``H = hidden_size``):
        input: ``(T, B, F)``, ``(B, T, F)`` if ``batch_first``, ``(T, F)`` unbatched; a set of rows per
            step adds a dimension before ``F``: ``(T, B, N, F)`` / ``(B, T, N, F)``. ``T = 0`` gives an
            empty output and the initial state; ``B = 0`` an empty output.
        state: optional ``(h_0, c_0)`` each ``(L, B, H)`` (``(L, H)`` unbatched); default zeros.
        episode_starts: optional ``(T, B)`` (``(B, T)`` if ``batch_first``); where 1, that layer's state
            is reset to zeros *before* the step, so one call equals stepping with resets in between.
        returns: ``output (T, B, H)`` (the last layer's readout at each step) and ``(h_n, c_n)`` each
            ``(L, B, H)``; with ``return_info=True`` also a :class:`RIMStepInfo` whose tensors carry
            leading ``(T, L)`` dimensions (time, layer). Layers above the first read one row per step, the
            first ``N``: ``input_attention`` has ``1 + N`` columns for every layer, the columns past a
            layer's own rows holding probability 0.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, *, num_units: int = 6, k_active: int = 4, cell: str = "lstm",
                 use_inactive: Optional[bool] = None, official: bool = False, **cell_kwargs) -> None:
        super().__init__()
        if bidirectional:
            raise ValueError("bidirectional=True is not supported by RIM (the paper's RIMs are causal); "
                             "allowed values: False")
        if proj_size:
            raise ValueError("proj_size is not supported by RIM; allowed values: 0")
        if not bias:
            raise ValueError("bias=False is not supported by RIM; allowed values: True")
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.dropout = batch_first, float(dropout)
        self.num_units, self.k_active, self.cell = num_units, k_active, cell
        self.use_inactive = (not official) if use_inactive is None else bool(use_inactive)
        make = RIMCell.official if official else RIMCell
        self.cells = nn.ModuleList(
            make(input_size if i == 0 else hidden_size, hidden_size, num_units, k_active, cell, **cell_kwargs)
            for i in range(num_layers))
        self.layer_dropout = nn.Dropout(dropout)

    @property
    def _cells(self) -> Sequence[RIMCell]:
        """``self.cells`` typed: every layer is a :class:`RIMCell`."""
        return cast(Sequence[RIMCell], self.cells)

    def flatten_parameters(self) -> None:
        """No-op, so code that calls ``nn.LSTM.flatten_parameters()`` runs unchanged."""

    def named_unit_parameters(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """Every layer's per-unit recurrent weights as ``nn.LSTM``-style 2-D views
        (``cells.{i}.weight_hh_u{k}``, ...), see :meth:`RIMCell.named_unit_parameters`."""
        for i, cell in enumerate(self._cells):
            for name, p in cell.named_unit_parameters():
                yield f"cells.{i}.{name}", p

    def forward(self, input: torch.Tensor, hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                episode_starts: Optional[torch.Tensor] = None, return_info: bool = False):
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError("RIM does not take PackedSequence; pass a padded tensor (and mask the padding)")
        unbatched = input.dim() == 2
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"RIM expects input of rank 2, 3 or 4 (see docstring), got shape {tuple(input.shape)}")
        if unbatched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
            if episode_starts is not None:
                episode_starts = episode_starts.transpose(0, 1)
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input feature size {input.shape[-1]} != input_size={self.input_size}")
        if input.dim() == 4 and input.shape[2] == 0:
            raise ValueError("RIM needs at least one input row per step, got a set of 0 rows")
        steps, batch = input.shape[0], input.shape[1]
        if hx is None:
            z = input.new_zeros(self.num_layers, batch, self.hidden_size)
            hx = (z, z)
        elif unbatched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        h0, c0 = hx
        expected = (self.num_layers, batch, self.hidden_size)
        if h0.shape != expected or c0.shape != expected:
            raise ValueError(f"(h_0, c_0) must each have shape {expected}, got {tuple(h0.shape)} and {tuple(c0.shape)}")
        if episode_starts is not None and episode_starts.shape != (steps, batch):
            raise ValueError(f"episode_starts must have shape {(steps, batch)} (time, batch), "
                             f"got {tuple(episode_starts.shape)}")
        rows = input if input.dim() == 4 else input.unsqueeze(2)            # (T, B, N, F)
        hs: List[torch.Tensor] = []
        cs: List[torch.Tensor] = []
        infos = []
        for i, cell in enumerate(self._cells):
            if i > 0 and self.dropout > 0 and self.training:
                rows = self.layer_dropout(rows)
            units, d = cell.num_units, cell.unit_size
            h = h0[i].reshape(batch, units, d).transpose(0, 1)               # (U, B, d)
            c = c0[i].reshape(batch, units, d).transpose(0, 1)
            inner = i < self.num_layers - 1
            outs, h, c, layer_info = cell.run(rows, h, c, episode_starts, return_info,
                                              readout="active" if inner and not self.use_inactive else None)
            rows = outs.permute(0, 2, 1, 3).reshape(steps, batch, 1, self.hidden_size)
            hs.append(h.transpose(0, 1).reshape(batch, self.hidden_size))
            cs.append(c.transpose(0, 1).reshape(batch, self.hidden_size))
            infos.append(layer_info)
        output = rows.squeeze(2)                                             # (T, B, H)
        h_n, c_n = torch.stack(hs), torch.stack(cs)
        if unbatched:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        if not return_info:
            return output, (h_n, c_n)
        return output, (h_n, c_n), self._stack_info(infos, steps, input)

    def _stack_info(self, infos: List[List[RIMStepInfo]], steps: int, input: torch.Tensor) -> RIMStepInfo:
        """Per-layer lists of T step infos -> one :class:`RIMStepInfo` with leading (T, L) dimensions; input
        attention zero-padded to the widest layer's ``1 + N`` columns."""
        cells = self._cells
        batch, width = input.shape[1], 1 + (input.shape[2] if input.dim() == 4 else 1)
        if steps == 0:
            U, Hc = cells[0].num_units, cells[0].comm_heads
            empty = input.new_zeros
            return RIMStepInfo(empty(0, self.num_layers, batch, U),
                               empty(0, self.num_layers, batch, cells[0].input_heads, U, width),
                               empty(0, self.num_layers, batch, Hc, U, U) if cells[0].comm else None)

        def pad(t: torch.Tensor) -> torch.Tensor:
            return F.pad(t, (0, width - t.shape[-1]))

        mask = torch.stack([torch.stack([infos[i][t].mask for i in range(self.num_layers)]) for t in range(steps)])
        attn = torch.stack([torch.stack([pad(infos[i][t].input_attention) for i in range(self.num_layers)])
                            for t in range(steps)])
        comm = None
        if infos[0][0].comm_attention is not None:
            # every layer has the same `comm` setting, so none of these is None
            comm = torch.stack([torch.stack([cast(torch.Tensor, infos[i][t].comm_attention)
                                             for i in range(self.num_layers)])
                                for t in range(steps)])
        return RIMStepInfo(mask, attn, comm)

    def extra_repr(self) -> str:
        return (f"batch_first={self.batch_first}, num_layers={self.num_layers}, dropout={self.dropout}, "
                f"use_inactive={self.use_inactive}")
