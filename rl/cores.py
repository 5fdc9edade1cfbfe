"""Recurrent cores for RL policies, all with one interface: a whole sequence and its episode-start mask in ONE call.

    output, (h_n, c_n) = core(x, (h_0, c_0), episode_starts)

Shapes (``L`` layers, ``H`` hidden size): ``x (T, B, F)``, ``h_0, c_0 (L, B, H)``, ``episode_starts (T, B)``
(1 where a new episode starts at that step: the state of that sample is reset to zeros *before* the step),
``output (T, B, H)``. Three cores take it:

* ``"rim"``: :class:`zoo.RIM` (thesis ch. 8), which resets inside its own time loop;
* ``"lstm"``: :class:`MaskedLSTM`, an ``nn.LSTM`` (same parameters and state dict) whose sequence is cut only
  at the time steps where some sample resets: one ATen call per segment instead of one per step;
* ``"gru"``: :class:`MaskedGRU`, the same for ``nn.GRU``. It takes and returns ``(h, c)`` pairs with
  ``c = h`` (a GRU without communication: zoo.RIM's GRU units return their state before communication as ``c``),
  so sb3-contrib's rollout buffer, which stores ``(h, c)``, works unchanged.

:func:`run_core` adds the fast path every recurrent PPO minibatch takes: sb3-contrib's rollout buffer cuts
sequences at episode starts, so a start can only be a sequence's *first* step; that reset is folded into the
initial state and the core runs with no mask at all.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn

from zoo.layers.rim import RIM

__all__ = ["MaskedLSTM", "MaskedGRU", "make_core", "run_core", "CORES"]

CORES = ("rim", "lstm", "gru")
State = Tuple[torch.Tensor, torch.Tensor]


def _reset(state: State, starts: torch.Tensor) -> State:
    """Zero the state of the samples where ``starts`` (B,) is 1: ``(L, B, H)`` each."""
    keep = (1.0 - starts.to(state[0].dtype)).view(1, -1, 1)
    return state[0] * keep, state[1] * keep


def _segments(episode_starts: torch.Tensor):
    """Time indices ``0 = t_0 < t_1 < ... < T`` where a segment begins (a step > 0 where any sample resets)."""
    steps = episode_starts.shape[0]
    inner = torch.nonzero(episode_starts[1:].any(dim=1)).flatten().add_(1).tolist()
    return [0] + inner + [steps]


class _MaskedRNNMixin:
    """``forward(x, hx, episode_starts)`` for ``nn.LSTM`` / ``nn.GRU``: one ATen call per segment."""

    num_layers: int                                   # nn.RNNBase's, declared for the type checker
    hidden_size: int

    def _call(self, x: torch.Tensor, hx: State):  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def forward(self, input: torch.Tensor, hx: Optional[State] = None,
                episode_starts: Optional[torch.Tensor] = None):
        if input.dim() != 3:
            raise ValueError(f"{type(self).__name__} expects input (T, B, F), got shape {tuple(input.shape)}")
        steps, batch = input.shape[:2]
        if hx is None:
            z = input.new_zeros(self.num_layers, batch, self.hidden_size)
            hx = (z, z)
        if episode_starts is None:
            return self._call(input, hx)
        if episode_starts.shape != (steps, batch):
            raise ValueError(f"episode_starts must have shape {(steps, batch)} (time, batch), "
                             f"got {tuple(episode_starts.shape)}")
        bounds, outs = _segments(episode_starts), []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            out, hx = self._call(input[start:stop], _reset(hx, episode_starts[start]))
            outs.append(out)
        return torch.cat(outs) if len(outs) > 1 else outs[0], hx


# forward deliberately differs from nn.LSTM's: it adds episode_starts and takes no PackedSequence
class MaskedLSTM(_MaskedRNNMixin, nn.LSTM):  # type: ignore[misc]
    """``nn.LSTM`` (same arguments, parameters and state dict) taking an ``episode_starts`` mask.

    ``forward(x (T, B, F), (h_0, c_0) each (L, B, H), episode_starts (T, B) or None)`` ->
    ``output (T, B, H), (h_n, c_n)``; equals stepping with the state zeroed before each marked step.
    """

    def _call(self, x, hx):
        return nn.LSTM.forward(self, x, hx)


# forward deliberately differs from nn.GRU's: episode_starts, (h, c) state pairs, no PackedSequence
class MaskedGRU(_MaskedRNNMixin, nn.GRU):  # type: ignore[misc]
    """``nn.GRU`` taking an ``episode_starts`` mask and ``(h, c)`` state pairs (``c`` is ignored on input
    and returned equal to ``h``), so code and buffers written for LSTM states need no branch.

    Shapes as :class:`MaskedLSTM`.
    """

    def _call(self, x, hx):
        out, h = nn.GRU.forward(self, x, hx[0])
        return out, (h, h)


def make_core(core: str, input_size: int, hidden_size: int, num_layers: int = 1, *, num_units: int = 6,
              k_active: int = 4, **core_kwargs: Any) -> nn.Module:
    """Build a core by name (``"rim"``, ``"lstm"``, ``"gru"``); ``num_units``, ``k_active`` and
    ``core_kwargs`` (any :class:`zoo.RIM` keyword: ``cell="gru"``, ``comm_topk=2``, ``official=True``, ...)
    go to the RIM; ``core_kwargs`` go to ``nn.LSTM`` / ``nn.GRU`` for the other two."""
    if core == "rim":
        return RIM(input_size, hidden_size, num_layers, num_units=num_units, k_active=k_active, **core_kwargs)
    if core in ("lstm", "gru"):
        return (MaskedLSTM if core == "lstm" else MaskedGRU)(input_size, hidden_size, num_layers, **core_kwargs)
    raise ValueError(f"core={core!r} is not supported; allowed values: {', '.join(map(repr, CORES))}")


def run_core(core: nn.Module, x: torch.Tensor, state: State, episode_starts: torch.Tensor):
    """Run ``core`` over a whole sequence in one call: ``x (T, B, F)``, ``state`` each ``(L, B, H)``,
    ``episode_starts (T, B)``. Resets at step 0 only (every RecurrentPPO minibatch, every rollout step) are
    folded into the initial state and the core runs unmasked; otherwise the mask goes to the core."""
    state = _reset(state, episode_starts[0])
    if episode_starts.shape[0] > 1 and bool(episode_starts[1:].any()):
        return core(x, state, episode_starts=episode_starts)
    return core(x, state)
