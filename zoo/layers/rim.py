"""Recurrent Independent Mechanisms (Goyal, Lamb et al.; Lamb's thesis, ch. 8).

``RIMCell`` computes one step, ``RIM`` runs a sequence with ``torch.nn.LSTM``'s interface.

One step at time t (thesis section 8.2), for ``U`` units with states ``h_k`` (and ``c_k``) of size ``d``:

1. Input attention, eq. (8.1)-(8.2)/(8.3): ``X = [0 ; x_t]`` (a null row of zeros prepended to the input
   rows), shared keys ``K = X W^e`` and values ``V = X W^v``, per-unit queries ``Q_k = h_k W^q_k``,
   multi-head; ``A_k = softmax(Q_k K^T / sqrt(d_e)) V``.
2. Competition (section 8.2.2): the ``k_active`` units with the *least* attention on the null row,
   averaged over heads, form the active set ``S_t``.
3. Independent dynamics (section 8.2.3): ``h~_k = LSTM_k(h_k, A_k)`` (or GRU) with per-unit parameters,
   for ``k in S_t``; ``h_{t+1,k} = h_{t,k}`` exactly for ``k not in S_t`` (gradient still flows).
4. Communication (section 8.2.4): ``h_{t+1,k} = softmax(Q_k K^T / sqrt(d_e)) V + h~_k`` for ``k in S_t``,
   with per-unit query/key/value maps over all units.

Speed: with one input row per step (a vector observation), no key/value bias and no input dropout (the
paper's defaults), the input attention over ``[0 ; x_t]`` is a two-way softmax, ``sigmoid`` of one logit,
and everything it needs from ``x_t`` is projected for the whole sequence before the time loop
(``RIMCell._fast_inputs``); other inputs take the general step. Both give the same results (tested in float64).

Where the paper is silent the public implementations disagree; every such choice is an explicit option
(see :class:`RIMCell`), the paper's reading is the default, and ``RIMCell.official(...)`` reproduces the
numerics of the authors' code (``anirudh9119/RIMs``, ``event_based/blocks_core.py``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .grouped import GroupedLinear

__all__ = ["RIMCell", "RIM", "RIMStepInfo", "RIMOptions"]

_CELLS = ("lstm", "gru")
_COMPETITION = ("null_softmax", "input_logit")
_COMM_SOURCE = ("kept", "candidate")
_READOUT = ("all", "active")
_RESIDUAL = ("plain", "gated")


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
    """The choices the paper leaves open; defaults are the paper's reading (thesis ch. 8).

    Attributes:
        kv_bias: bias on the input key/value maps. ``False`` (paper, eq. 8.2 ``K = X W^e``; also the
            official code) makes the null row's key and value exactly 0, so its logit is exactly 0.
            ``True`` gives the null row a learned key/value (the bias), as in dido1998's code.
        competition: ``"null_softmax"`` (paper: least softmax attention on the null row, averaged over
            heads) or ``"input_logit"`` (rank by the raw logit of the best input row, averaged over
            heads, as in dido1998's code).
        comm_source: the state inactive units expose to communication: ``"kept"`` (paper: their state
            is unchanged, so the kept state) or ``"candidate"`` (official code: the discarded
            candidate ``h~``, its gradient blocked).
        readout: ``"all"`` (paper and official code: the output is every unit's state) or ``"active"``
            (inactive units read out as 0).
        comm_residual: ``"plain"`` (paper: ``h~ + softmax(.)V``) or ``"gated"`` (official code:
            ``h~ + sigmoid(W_g a) * tanh(W_o a)``).
    """

    kv_bias: bool = False
    competition: str = "null_softmax"
    comm_source: str = "kept"
    readout: str = "all"
    comm_residual: str = "plain"


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}")


class _GradMask(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``mask`` (official code's ``blocked_grad``)."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


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
        comm_heads, comm_key_size, comm_value_size: communication attention (4 heads of 16, as the official code).
        comm_topk: keep only the ``comm_topk`` largest communication scores per query (``None``: all).
        input_dropout: dropout on the read vector ``A_k`` (the official code's position), default 0.
        comm_dropout: dropout on the communication update before the residual, default 0.
        options: a :class:`RIMOptions`, or pass its fields as keyword arguments.

    Shapes:
        x: ``(B, input_size)`` (one row) or ``(B, N, input_size)`` (a set of rows, e.g. a CNN map).
        state: ``(h, c)`` each ``(B, hidden_size)``; ``None`` means zeros. For ``cell="gru"`` ``c`` is
            ignored on input and returned equal to ``h`` (the official code's convention), so callers
            written for LSTMs need no branch.
        reset: optional ``(B,)`` bool/float; where true the state is reset to zeros before this step
            (episode starts in RL).
        returns: ``out (B, hidden_size)``, ``(h, c)``, and a :class:`RIMStepInfo` if ``return_info``.
    """

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
        comm_value_size: int = 16,
        comm_topk: Optional[int] = None,
        input_dropout: float = 0.0,
        comm_dropout: float = 0.0,
        options: Optional[RIMOptions] = None,
        **option_kwargs,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_units", num_units)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if hidden_size % num_units:
            raise ValueError(
                f"hidden_size={hidden_size} is not divisible by num_units={num_units}; choose hidden_size as a "
                f"multiple of num_units (e.g. {num_units * max(1, hidden_size // num_units)})")
        if not (isinstance(k_active, int) and 1 <= k_active <= num_units):
            raise ValueError(f"k_active={k_active!r} must be an integer with 1 <= k_active <= num_units={num_units}")
        _check_choice("cell", cell, _CELLS)
        if comm_topk is not None and not (1 <= comm_topk <= num_units):
            raise ValueError(f"comm_topk={comm_topk!r} must be None or in [1, num_units={num_units}]")
        if options is None:
            options = RIMOptions(**option_kwargs)
        elif option_kwargs:
            options = RIMOptions(**{**asdict(options), **option_kwargs})
        _check_choice("competition", options.competition, _COMPETITION)
        _check_choice("comm_source", options.comm_source, _COMM_SOURCE)
        _check_choice("readout", options.readout, _READOUT)
        _check_choice("comm_residual", options.comm_residual, _RESIDUAL)

        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_units, self.k_active, self.cell = num_units, k_active, cell
        self.unit_size = d = hidden_size // num_units
        self.options = options
        self.input_heads, self.input_key_size = input_heads, input_key_size
        self.input_value_size = dv = input_value_size or d
        self.comm, self.comm_heads, self.comm_key_size, self.comm_topk = comm, comm_heads, comm_key_size, comm_topk

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
        if comm:
            # queries, keys and values of all units in one grouped matmul: (U, d, H * (2 d_k + d_v))
            self.comm_qkv = GroupedLinear(num_units, d, comm_heads * (2 * comm_key_size + comm_value_size), bias=False)
            self.comm_out = GroupedLinear(num_units, comm_heads * comm_value_size, d, bias=True)
            self.comm_gate = (GroupedLinear(num_units, comm_heads * comm_value_size, d, bias=True)
                              if options.comm_residual == "gated" else None)
            self.comm_dropout = nn.Dropout(comm_dropout)
            # 1 / sqrt(d_k) on the query columns, 1 on key and value columns: folded into the weight once
            # per call (:meth:`_comm_weight`) instead of scaling the scores at every step
            scale = torch.ones(comm_heads * (2 * comm_key_size + comm_value_size))
            scale[:comm_heads * comm_key_size] = 1.0 / math.sqrt(comm_key_size)
            self.register_buffer("comm_scale", scale, persistent=False)

    @classmethod
    def official(cls, input_size: int, hidden_size: int, num_units: int = 6, k_active: int = 4,
                 cell: str = "lstm", **kwargs) -> "RIMCell":
        """The numerics of the authors' code (``blocks_core.py``): 1 input head with ``d_e = 64`` and
        ``4 * unit_size`` values, no key/value bias (null logit exactly 0), ranking by null softmax,
        4 communication heads of size 16, gated residual, inactive units exposing their discarded
        candidate, dropout 0.1 on the read vector and on the communication update."""
        d = hidden_size // num_units if hidden_size % num_units == 0 else 1
        cfg = dict(input_heads=1, input_key_size=64, input_value_size=4 * d, comm_heads=4, comm_key_size=16,
                   comm_value_size=16, input_dropout=0.1, comm_dropout=0.1,
                   options=RIMOptions(kv_bias=False, competition="null_softmax", comm_source="candidate",
                                      readout="all", comm_residual="gated"))
        cfg.update(kwargs)
        return cls(input_size, hidden_size, num_units, k_active, cell, **cfg)

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zeros, the initial state of every new sequence: ``(h, c)`` each ``(B, hidden_size)``."""
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return z, z

    # --- the four stages, on unit-major tensors: states are (U, B, d) ------------------------------
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
        """k, v: (B, 1+N, H, .), h: (U, B, d) -> read (U, B, H*dv), probs (U, B, H, 1+N), score (U, B)."""
        q = rearrange(self.input_query.unit_major(h), "u b (h d) -> u b h d", h=self.input_heads)
        logits = torch.einsum("ubhd,bnhd->ubhn", q, k) / math.sqrt(self.input_key_size)
        probs = logits.softmax(dim=-1)
        read = rearrange(torch.einsum("ubhn,bnhd->ubhd", probs, v), "u b h d -> u b (h d)")
        if self.options.competition == "null_softmax":
            score = -probs[..., 0].mean(dim=-1)                          # least null attention wins
        else:
            score = logits[..., 1:].amax(dim=-1).mean(dim=-1)            # strongest raw input logit wins
        return self.input_dropout(read), probs, score

    def _competition(self, score: torch.Tensor) -> torch.Tensor:
        """score: (U, B) -> mask (U, B) with exactly ``k_active`` ones per sample (section 8.2.2)."""
        if self.k_active == self.num_units:
            return torch.ones_like(score)
        idx = score.detach().topk(self.k_active, dim=0).indices
        return torch.zeros_like(score).scatter_(0, idx, 1.0)

    def _dynamics(self, read: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """Per-unit LSTM/GRU (section 8.2.3): read (U, B, H*dv), h, c (U, B, d) -> candidates h~, c~."""
        if self.cell == "lstm":
            return self._lstm_update(self.w_ih.unit_major(read) + self.w_hh.unit_major(h), c)
        return self._gru_update(self.w_ih.unit_major(read), h)

    def _lstm_update(self, pre: torch.Tensor, c: torch.Tensor):
        """The LSTM of every unit from its gate pre-activations ``W^ih A + W^hh h + b`` (U, B, 4d) -> h~, c~."""
        # split (not slicing): its backward is one cat instead of zero-filled buffers per slice
        ifo, g = pre.split([3 * self.unit_size, self.unit_size], dim=-1)
        i, f, o = torch.sigmoid(ifo).chunk(3, dim=-1)
        c_new = torch.addcmul(f * c, i, torch.tanh(g))
        return o * torch.tanh(c_new), c_new

    def _gru_update(self, x_gates: torch.Tensor, h: torch.Tensor):
        """The GRU of every unit from its input-side pre-activations ``W^ih A + b^ih`` (U, B, 3d) and h -> h~, h~."""
        d = self.unit_size
        xrz, xn = x_gates.split([2 * d, d], dim=-1)
        hrz, hn = self.w_hh.unit_major(h).split([2 * d, d], dim=-1)
        r, z = torch.sigmoid(xrz + hrz).chunk(2, dim=-1)
        h_new = torch.lerp(torch.tanh(torch.addcmul(xn, r, hn)), h, z)    # (1 - z) n + z h
        return h_new, h_new

    def _comm_weight(self) -> torch.Tensor:
        """The communication query/key/value weight with ``1 / sqrt(d_k)`` folded into the query block
        (once per call, not per step): ``(U, d, H * (2 d_k + d_v))``."""
        return self.comm_qkv.weight * self.comm_scale

    def _communicate(self, h_src: torch.Tensor, w_qkv: Optional[torch.Tensor] = None):
        """Attention among units (section 8.2.4): h_src (U, B, d) -> update (U, B, d), probs (U, U, B, H)
        (query unit, key unit, sample, head). ``w_qkv``: :meth:`_comm_weight`, computed if not given.

        With ``U`` units the ``U x U`` scores are a broadcast product, not a batched matmul: at these sizes
        (a few units, keys of 16) the elementwise form ran 2-3x faster, forward and backward, than
        ``einsum``/``bmm`` (batch 4 to 64, one CPU thread), which need permuted copies to put (sample, head) first.
        """
        units, batch = h_src.shape[:2]
        H, dk, dv = self.comm_heads, self.comm_key_size, self.comm_qkv.out_features // self.comm_heads - 2 * self.comm_key_size
        if w_qkv is None:
            w_qkv = self._comm_weight()
        qkv = torch.bmm(h_src, w_qkv)
        if dk == dv:
            q, k, v = qkv.view(units, batch, 3, H, dk).unbind(2)
        else:
            q, k, v = qkv.split([H * dk, H * dk, H * dv], dim=-1)
            q, k, v = q.view(units, batch, H, dk), k.view(units, batch, H, dk), v.view(units, batch, H, dv)
        logits = (q.unsqueeze(1) * k).sum(-1)                                # (U, U, B, H), scaled via w_qkv
        if self.comm_topk is not None and self.comm_topk < self.num_units:
            keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(
                1, logits.topk(self.comm_topk, dim=1).indices, True)       # exactly k, ties included
            logits = logits.masked_fill(~keep, float("-inf"))
        probs = logits.softmax(dim=1)
        a = (probs.unsqueeze(-1) * v).sum(1).view(units, batch, H * dv)
        if self.comm_gate is None:
            update = self.comm_out.unit_major(a)
        else:
            update = torch.sigmoid(self.comm_gate.unit_major(a)) * torch.tanh(self.comm_out.unit_major(a))
        if self.comm_dropout.p > 0 and self.training:
            update = self.comm_dropout(update)
        return update, probs

    def _merge(self, h, c, h_cand, c_cand, m, w_qkv=None):
        """Communication among the candidates (section 8.2.4) and the frozen inactive units (8.2.3):
        h, c the kept state, h_cand, c_cand the candidates, m (U, B, 1) 0/1 -> h_next, c_next, comm probs."""
        comm_probs = None
        if self.comm:
            if self.options.comm_source == "kept":
                h_src = torch.lerp(h, h_cand, m)
                update, comm_probs = self._communicate(h_src, w_qkv)
                # h_src + m * update: exactly h where m = 0 (h + 0), exactly h~ + update where m = 1,
                # as lerp(h, h_src + update, m) gives, in one op; the gradient to the update is m.
                h_next = torch.addcmul(h_src, m, update)
            else:
                h_src = _GradMask.apply(h_cand, m)
                update, comm_probs = self._communicate(h_src, w_qkv)
                h_next = torch.lerp(h, h_src + update, m)
        else:
            # lerp with a 0/1 weight returns `start` or `end` bit-for-bit: inactive units keep h and c
            # exactly, and the gradient still flows through them (weight 1 - 0 on h).
            h_next = torch.lerp(h, h_cand, m)
        c_next = torch.lerp(c, c_cand, m) if self.cell == "lstm" else h_next
        return h_next, c_next, comm_probs

    def step(self, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
             reset: Optional[torch.Tensor] = None, w_qkv: Optional[torch.Tensor] = None):
        """One step on unit-major state (the general path: any number of rows, every option). k, v from
        :meth:`project_input` for this step; h, c (U, B, d); reset (B,) or None; w_qkv: optional
        :meth:`_comm_weight` (computed if None). Returns ``h, c``
        (U, B, d), mask (U, B), input probs (U, B, H, 1+N), comm probs (U, U, B, H) or None."""
        if reset is not None:
            keep = (1 - reset.to(h.dtype)).view(1, -1, 1)
            h, c = h * keep, c * keep
        read, in_probs, score = self._input_attention(k, v, h)
        mask = self._competition(score)
        h_cand, c_cand = self._dynamics(read, h, c)
        h_next, c_next, comm_probs = self._merge(h, c, h_cand, c_cand, mask.unsqueeze(-1), w_qkv)
        return h_next, c_next, mask, in_probs, comm_probs

    # --- the fast path: one input row, no key/value bias, no input dropout ------------------------
    def fast_path_applies(self, num_rows: int) -> bool:
        """Whether :meth:`run` takes the one-row fast path: one input row per step (a vector
        observation), ``kv_bias=False`` (the paper's and the official code's choice) and no dropout on
        the read vector (``input_dropout=0``, or eval mode)."""
        return (num_rows == 1 and not self.options.kv_bias
                and (self.input_dropout.p == 0 or not self.training))

    def _fast_inputs(self, x: torch.Tensor):
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
        U, d, H = self.num_units, self.unit_size, self.input_heads
        de, dv = self.input_key_size, self.input_value_size
        steps, batch = x.shape[:2]
        k = self.input_key(x) * (1.0 / math.sqrt(de))
        v = self.input_value(x)
        if H == 1:
            # (T B, e) @ (U, e, d): one batched matmul over units, no copy of the weights
            g = torch.bmm(k.reshape(1, steps * batch, de).expand(U, -1, -1), self.input_query.weight.transpose(1, 2))
            p_in = torch.bmm(v.reshape(1, steps * batch, dv).expand(U, -1, -1), self.w_ih.weight)
            return g.view(U, steps, batch, d), p_in.view(U, steps, batch, -1)
        g = torch.einsum("tbhe,udhe->utbhd", k.reshape(steps, batch, H, de), self.input_query.weight.view(U, d, H, de))
        p_in = torch.einsum("tbhv,uhvg->utbhg", v.reshape(steps, batch, H, dv), self.w_ih.weight.view(U, H, dv, -1))
        return g, p_in

    def _fast_step(self, g, p_in, h, c, bias, w_qkv, keep=None):
        """One step of the fast path; g, p_in this step's slices of :meth:`_fast_inputs`, h, c (U, B, d),
        bias: the LSTM's ``b_ih + b_hh`` (U, 1, 4d) or the GRU's ``b_ih`` (U, 1, 3d); keep (1, B, 1) or
        None. Returns ``h, c``, mask (U, B), logits (U, B, H) and comm probs, as :meth:`step`."""
        if keep is not None:
            h, c = h * keep, c * keep
        heads = self.input_heads
        if heads == 1:
            logit = (h * g).sum(-1, keepdim=True)                            # (U, B, 1), eq. 8.1
        else:
            logit = (h.unsqueeze(2) * g).sum(-1)                             # (U, B, H)
        p = torch.sigmoid(logit)                                             # attention on the input row
        # Competition (8.2.2) on the score of the general path: minus the null row's attention
        # sigmoid(-l) = 1 - p averaged over heads (not the logit, although it ranks the same: where the
        # rounded probabilities tie, e.g. all 1.0, the general path's tie-break is kept), or the input logit.
        score = logit.detach()
        if self.options.competition == "null_softmax":
            score = -torch.sigmoid(-score).mean(-1)
        else:
            score = score.mean(-1)
        mask = self._competition(score)
        if heads == 1:
            read_gates = lambda base: torch.addcmul(base, p, p_in)          # noqa: E731 - base + p * W^ih v
        else:
            read_gates = lambda base: base + (p.unsqueeze(-1) * p_in).sum(-2)  # noqa: E731
        if self.cell == "lstm":
            h_cand, c_cand = self._lstm_update(read_gates(torch.baddbmm(bias, h, self.w_hh.weight)), c)
        else:
            h_cand, c_cand = self._gru_update(read_gates(bias), h)
        h_next, c_next, comm_probs = self._merge(h, c, h_cand, c_cand, mask.unsqueeze(-1), w_qkv)
        return h_next, c_next, mask, logit, comm_probs

    def run(self, rows: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
            episode_starts: Optional[torch.Tensor] = None, return_info: bool = False):
        """The cell over a sequence, on unit-major state.

        rows ``(T, B, N, F)``; h, c ``(U, B, d)``; episode_starts ``(T, B)`` or None. Returns the readout
        ``(T, U, B, d)``, the last ``h, c`` and a list of T :class:`RIMStepInfo` (empty unless
        ``return_info``). Takes the fast path (:meth:`fast_path_applies`) when it applies, with the same
        results as the general path up to rounding.
        """
        steps = rows.shape[0]
        h = h.contiguous()
        c = h if self.cell == "gru" else c.contiguous()
        outs, infos = [], []
        if self.fast_path_applies(rows.shape[2]):
            keeps = [None] * steps if episode_starts is None else \
                (1 - episode_starts.to(h.dtype)).view(steps, 1, -1, 1).unbind(0)
            # unbind (not g[t]): indexing would give each step's backward a zero-filled buffer the size of
            # the whole sequence, O(T^2) work; unbind's backward is one stack
            gs, ps = (t.unbind(1) for t in self._fast_inputs(rows.squeeze(2)))
            if self.cell == "lstm":
                bias = (self.w_ih.bias + self.w_hh.bias).unsqueeze(1)
            else:
                bias = self.w_ih.bias.unsqueeze(1)
            w_qkv = self._comm_weight() if self.comm else None
            for t in range(steps):
                h, c, mask, logit, comm_probs = self._fast_step(gs[t], ps[t], h, c, bias, w_qkv, keeps[t])
                outs.append(self.readout(h, mask))
                if return_info:
                    # the two-way softmax over [null ; x]: null column sigmoid(-l) = 1 - p
                    in_probs = torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], dim=-1)
                    infos.append(self.info(mask, in_probs, comm_probs))
        else:
            keys, values = (t.unbind(0) for t in self.project_input(rows))
            w_qkv = self._comm_weight() if self.comm else None
            for t in range(steps):
                reset = None if episode_starts is None else episode_starts[t]
                h, c, mask, in_probs, comm_probs = self.step(keys[t], values[t], h, c, reset, w_qkv)
                outs.append(self.readout(h, mask))
                if return_info:
                    infos.append(self.info(mask, in_probs, comm_probs))
        return torch.stack(outs), h, c, infos

    def readout(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The cell's output from unit-major state: every unit, or only the active ones (``readout``)."""
        return h if self.options.readout == "all" else h * mask.unsqueeze(-1)

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
        h = h.view(batch, U, d).transpose(0, 1)
        c = h if self.cell == "gru" else c.view(batch, U, d).transpose(0, 1)
        starts = None if reset is None else reset.view(1, batch)
        outs, h, c, infos = self.run(x.unsqueeze(0), h, c, starts, return_info)
        out = outs[0].transpose(0, 1).reshape(batch, self.hidden_size)
        state = (h.transpose(0, 1).reshape(batch, self.hidden_size), c.transpose(0, 1).reshape(batch, self.hidden_size))
        if return_info:
            return out, state, infos[0]
        return out, state

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_units={self.num_units}, "
                f"k_active={self.k_active}, cell={self.cell!r}, comm={self.comm}, {self.options}")


class RIM(nn.Module):
    """A stack of :class:`RIMCell` layers with ``torch.nn.LSTM``'s interface (thesis ch. 8).

    ``RIM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0)`` takes the
    positional arguments of ``nn.LSTM``, plus ``num_units``, ``k_active``, ``cell`` and every
    :class:`RIMCell` keyword. It can replace ``nn.LSTM`` literally in existing code.

    Shapes (``L = num_layers``, ``H = hidden_size``):
        input: ``(T, B, F)``, ``(B, T, F)`` if ``batch_first``, ``(T, F)`` unbatched; a set of rows per
            step adds a dimension before ``F``: ``(T, B, N, F)`` / ``(B, T, N, F)``.
        state: optional ``(h_0, c_0)`` each ``(L, B, H)`` (``(L, H)`` unbatched); default zeros.
        episode_starts: optional ``(T, B)`` (``(B, T)`` if ``batch_first``); where 1, that layer's state
            is reset to zeros *before* the step, so one call equals stepping with resets in between.
        returns: ``output (T, B, H)`` (the last layer's readout at each step) and ``(h_n, c_n)`` each
            ``(L, B, H)``; with ``return_info=True`` also a :class:`RIMStepInfo` whose tensors carry
            leading ``(T, L)`` dimensions (time, layer).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, *, num_units: int = 6, k_active: int = 4, cell: str = "lstm",
                 official: bool = False, **cell_kwargs) -> None:
        super().__init__()
        if bidirectional:
            raise ValueError("bidirectional=True is not supported by RIM (the paper's RIMs are causal); "
                             "allowed values: False")
        if proj_size:
            raise ValueError("proj_size is not supported by RIM; allowed values: 0")
        if not bias:
            raise ValueError("bias=False is not supported by RIM; allowed values: True")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.dropout = batch_first, float(dropout)
        self.num_units, self.k_active, self.cell = num_units, k_active, cell
        make = RIMCell.official if official else RIMCell
        self.cells = nn.ModuleList(
            make(input_size if i == 0 else hidden_size, hidden_size, num_units, k_active, cell, **cell_kwargs)
            for i in range(num_layers))
        self.layer_dropout = nn.Dropout(dropout)

    def flatten_parameters(self) -> None:
        """No-op, so code that calls ``nn.LSTM.flatten_parameters()`` runs unchanged."""

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
        h_n, c_n, infos = [], [], []
        for i, cell in enumerate(self.cells):
            if i > 0 and self.dropout > 0 and self.training:
                rows = self.layer_dropout(rows)
            units, d = cell.num_units, cell.unit_size
            h = h0[i].view(batch, units, d).transpose(0, 1)                  # (U, B, d)
            c = h if cell.cell == "gru" else c0[i].view(batch, units, d).transpose(0, 1)
            outs, h, c, layer_info = cell.run(rows, h, c, episode_starts, return_info)
            rows = outs.permute(0, 2, 1, 3).reshape(steps, batch, 1, self.hidden_size)
            h_n.append(h.transpose(0, 1).reshape(batch, self.hidden_size))
            c_n.append(c.transpose(0, 1).reshape(batch, self.hidden_size))
            infos.append(layer_info)
        output = rows.squeeze(2)                                             # (T, B, H)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if unbatched:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        if not return_info:
            return output, (h_n, c_n)

        def stack(field):
            if getattr(infos[0][0], field) is None:
                return None
            return torch.stack([torch.stack([getattr(infos[i][t], field) for i in range(self.num_layers)])
                                for t in range(steps)])                      # (T, L, ...)

        info = RIMStepInfo(stack("mask"), stack("input_attention"), stack("comm_attention"))
        return output, (h_n, c_n), info

    def extra_repr(self) -> str:
        return f"batch_first={self.batch_first}, num_layers={self.num_layers}, dropout={self.dropout}"
