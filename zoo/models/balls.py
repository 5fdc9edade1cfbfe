"""Video prediction models for bouncing balls: frame encoder -> recurrent core -> frame decoder.

Thesis ch. 8.4.2 (Fig. 3, "RIMs learn to specialize over objects and generalize between them"): a model
sees one frame per step and predicts the next; trained with teacher forcing on 4 balls, it is rolled out on
4 balls, on 6-8 balls and on 3 balls behind a curtain. The core is RIMs (LSTM or GRU units, thesis
eq. 8.1-8.3 and sections 8.2.2-8.2.4, :class:`zoo.RIM`) or an ``nn.LSTM`` / ``nn.GRU`` of comparable size
(the thesis compares an LSTM of 256 and of 512 units: "the improvement from RIMs is not primarily related
to capacity").

Encoder and decoder (``shared/docs/tasks.md``, the reference of van Steenkiste et al.):

* encoder: 3 convolutions, 4x4 stride 2 (16, 32, 64 channels), each followed by ELU and a LayerNorm over
  ``(C, H, W)`` (``GroupNorm`` with one group), flattened, then a linear map to ``embed_dim``;
* decoder: linear ``hidden -> 64 x (H/8) x (W/8)`` (``64 x 8 x 8`` at 64x64), then 3 times bilinear x2
  upsampling + 3x3 convolution (ELU + LayerNorm between), the last to one channel: per-pixel logits;
  ``sigmoid`` of them is the predicted frame. The ``_small`` CPU variants use 4x4 stride-2 transposed
  convolutions instead of upsampling + conv (``upsample="transpose"``, about 3x cheaper on a CPU).

``model(frames)`` returns the logits of the *next* frame at every step (teacher forcing); ``rollout``
feeds ``context`` true frames and then its own probabilities back as input.

Registered the timm way: ``timm.create_model("rim_lstm_balls", img_size=32)`` and ``zoo.create_model``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from einops import rearrange
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ..layers.rim import RIM, RIMStepInfo
from .staged import build_zoo_model

__all__ = ["BallsVideoModel", "FrameEncoder", "FrameDecoder"]

_CORES = ("rim", "lstm", "gru")


def _size2(img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)[-2:]
    if h % 8 or w % 8 or h < 8 or w < 8:
        raise ValueError(f"img_size must be a multiple of 8 (three stride-2 stages), got {img_size!r}")
    return int(h), int(w)


class FrameEncoder(nn.Module):
    """Three 4x4 stride-2 convolutions with ELU + LayerNorm, then a linear map.

    Shapes: ``(N, in_chans, H, W)`` -> ``(N, embed_dim)``.
    """

    def __init__(self, img_size: Tuple[int, int], in_chans: int = 1, channels: Sequence[int] = (16, 32, 64),
                 embed_dim: int = 256) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        prev = in_chans
        for c in channels:
            layers += [nn.Conv2d(prev, c, 4, stride=2, padding=1), nn.ELU(), nn.GroupNorm(1, c)]
            prev = c
        self.convs = nn.Sequential(*layers)
        h, w = img_size[0] // 8, img_size[1] // 8
        self.proj = nn.Linear(prev * h * w, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x).flatten(1))


class FrameDecoder(nn.Module):
    """Linear -> ``C x (H/8) x (W/8)`` -> 3 x (x2 upsampling, conv) -> logits.

    ``upsample="bilinear"`` (the reference): bilinear x2 then a 3x3 convolution. ``"transpose"``: one 4x4
    stride-2 transposed convolution per stage instead, about 3x cheaper on a CPU (the small variants).

    Shapes: ``(N, in_features)`` -> ``(N, out_chans, H, W)`` (logits; ``sigmoid`` gives the frame).
    """

    def __init__(self, img_size: Tuple[int, int], in_features: int, out_chans: int = 1,
                 channels: Sequence[int] = (64, 32, 16), upsample: str = "bilinear") -> None:
        super().__init__()
        if upsample not in ("bilinear", "transpose"):
            raise ValueError(f"upsample={upsample!r} is not supported; allowed values: 'bilinear', 'transpose'")
        self.grid = (img_size[0] // 8, img_size[1] // 8)
        self.channels = tuple(channels)
        self.proj = nn.Linear(in_features, channels[0] * self.grid[0] * self.grid[1])
        self.act0 = nn.Sequential(nn.ELU(), nn.GroupNorm(1, channels[0]))
        stages: List[nn.Module] = []
        outs = list(channels[1:]) + [out_chans]
        for i, (cin, cout) in enumerate(zip(channels, outs)):
            stage: List[nn.Module] = (
                [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(cin, cout, 3, padding=1)]
                if upsample == "bilinear" else [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)])
            if i < len(channels) - 1:
                stage += [nn.ELU(), nn.GroupNorm(1, cout)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.proj(z).view(z.shape[0], self.channels[0], *self.grid)
        return self.stages(self.act0(x))


class BallsVideoModel(nn.Module):
    """Next-frame prediction: encoder -> recurrent core (RIM, LSTM or GRU) -> decoder, one frame per step.

    Args:
        img_size: frame side (a multiple of 8): 64 (the standard data), 32 for quick runs.
        in_chans: channels per frame (1: binary frames).
        core: ``"rim"``, ``"lstm"`` or ``"gru"``.
        hidden_size: the core's state size (for RIMs ``num_units * unit_size``).
        embed_dim: the encoder's output, the core's input.
        enc_channels: the encoder's three conv widths (the reference: 16, 32, 64); the decoder mirrors them.
        upsample: the decoder's upsampling, ``"bilinear"`` (reference) or ``"transpose"`` (cheaper).
        core_kwargs: :class:`zoo.RIM` options (``num_units``, ``k_active``, ``cell``, ``comm_residual``, ...).

    Shapes:
        frames: ``(B, T, in_chans, H, W)`` in ``[0, 1]``.
        ``forward``: logits ``(B, T, in_chans, H, W)``; step ``t`` predicts frame ``t + 1``.
        ``forward_features``: ``(B, T, hidden_size)`` and the core state (and RIM step info if asked).

    ``input_kind = "video"``: ``pretrained_cfg["input_size"]`` is one frame; an input is a batch of videos.
    """

    input_kind = "video"

    def __init__(self, img_size: Union[int, Sequence[int]] = 64, in_chans: int = 1, core: str = "rim",
                 hidden_size: int = 600, embed_dim: int = 256, enc_channels: Sequence[int] = (16, 32, 64),
                 upsample: str = "bilinear", **core_kwargs: Any) -> None:
        super().__init__()
        if core not in _CORES:
            raise ValueError(f"core={core!r} is not supported; allowed values: {', '.join(map(repr, _CORES))}")
        if core != "rim" and core_kwargs:
            raise ValueError(f"core={core!r} takes no RIM options, got {sorted(core_kwargs)}")
        if len(enc_channels) != 3:
            raise ValueError(f"enc_channels must be three conv widths, got {enc_channels!r}")
        self.img_size = _size2(img_size)
        self.in_chans, self.core_type, self.hidden_size = in_chans, core, hidden_size
        self.num_features = hidden_size
        self.encoder = FrameEncoder(self.img_size, in_chans, enc_channels, embed_dim)
        rnn_cls = {"rim": RIM, "lstm": nn.LSTM, "gru": nn.GRU}[core]
        self.core = rnn_cls(embed_dim, hidden_size, batch_first=True, **core_kwargs)
        self.decoder = FrameDecoder(self.img_size, hidden_size, in_chans, tuple(reversed(enc_channels)), upsample)

    # ---- timm-style pieces --------------------------------------------------------------------------
    def _check(self, frames: torch.Tensor) -> None:
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (self.in_chans, *self.img_size):
            raise ValueError(f"expected frames of shape (batch, time, {self.in_chans}, {self.img_size[0]}, "
                             f"{self.img_size[1]}), got {tuple(frames.shape)}")

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, C, H, W)`` -> ``(B, T, embed_dim)``, every frame through the encoder at once."""
        B = frames.shape[0]
        z = self.encoder(rearrange(frames, "b t c h w -> (b t) c h w"))
        return rearrange(z, "(b t) e -> b t e", b=B)

    def forward_features(self, frames: torch.Tensor, state: Any = None, return_info: bool = False):
        """Encoder and core. Returns ``(features (B, T, hidden), state)`` (and RIM step info when asked:
        a :class:`zoo.RIMStepInfo` with leading ``(T, layers)`` dimensions; ``None`` for LSTM/GRU cores)."""
        self._check(frames)
        z = self.encode(frames)
        if self.core_type == "rim":
            if return_info:
                return self.core(z, state, return_info=True)
            return self.core(z, state)
        out, state = self.core(z, state)
        return (out, state, None) if return_info else (out, state)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, T, hidden)`` -> next-frame logits ``(B, T, C, H, W)``."""
        B = features.shape[0]
        logits = self.decoder(rearrange(features, "b t f -> (b t) f"))
        return rearrange(logits, "(b t) c h w -> b t c h w", b=B)

    def forward(self, frames: torch.Tensor, state: Any = None) -> torch.Tensor:
        features, _ = self.forward_features(frames, state)
        return self.forward_head(features)

    # ---- closed-loop prediction ---------------------------------------------------------------------
    def rollout(self, frames: torch.Tensor, context: int, steps: int, return_info: bool = False):
        """Feed ``context`` true frames, then ``steps`` times the model's own predicted probabilities.

        Args:
            frames: ``(B, T >= context, C, H, W)``; only the first ``context`` frames are read.
            context: true frames fed (15 in the thesis); steps: predictions fed back (35).

        Returns:
            logits ``(B, context + steps, C, H, W)``: entry ``k`` predicts frame ``k + 1``. The first
            ``context`` come from true inputs; entry ``context + s`` (``s >= 0``) is computed from input
            ``sigmoid(logits[:, context + s - 1])``, the model's own probabilities. With ``return_info``
            also the RIM's active-unit mask ``(context + steps, B, num_units)`` (first layer; ``None`` for
            LSTM/GRU).
        """
        if not 1 <= context <= frames.shape[1]:
            raise ValueError(f"context must be in [1, {frames.shape[1]}] (frames given), got {context}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        res = self.forward_features(frames[:, :context], None, return_info=True)
        feats, state, info = res
        logits = [self.forward_head(feats)]
        masks = [info.mask[:, 0]] if isinstance(info, RIMStepInfo) else []
        for _ in range(steps):
            inp = torch.sigmoid(logits[-1][:, -1:])
            feats, state, info = self.forward_features(inp, state, return_info=True)
            logits.append(self.forward_head(feats))
            if isinstance(info, RIMStepInfo):
                masks.append(info.mask[:, 0])
        out = torch.cat(logits, 1)
        if not return_info:
            return out
        return out, (torch.cat(masks, 0) if masks else None)


def _cfg(**kwargs) -> Dict[str, Any]:
    # input_size is one frame; inputs are videos (batch, time, *input_size) of any time >= 1 (see input_kind)
    return {"url": "", "num_classes": 0, "input_size": (1, 64, 64), "fixed_input_size": True, "license": "mit",
            "paper_ids": "arXiv:1909.10893", "paper_name": "Recurrent Independent Mechanisms", **kwargs}


default_cfgs = generate_default_cfgs({
    "rim_lstm_balls.untrained": _cfg(description="RIMs (LSTM units), 6 units of 100, k_A=4, embedding 256"),
    "rim_gru_balls.untrained": _cfg(description="RIMs (GRU units), 6 units of 100, k_A=4, gated communication"),
    "lstm_balls.untrained": _cfg(description="nn.LSTM core, hidden 256 (the thesis's baseline)"),
    "gru_balls.untrained": _cfg(description="nn.GRU core, hidden 256"),
    "rim_lstm_balls_small.untrained": _cfg(input_size=(1, 32, 32),
                                           description="RIMs (LSTM units), 6 units of 32, k_A=4: CPU runs"),
    "rim_gru_balls_small.untrained": _cfg(input_size=(1, 32, 32),
                                          description="RIMs (GRU units), 6 units of 32, k_A=4: CPU runs"),
    "lstm_balls_small.untrained": _cfg(input_size=(1, 32, 32), description="nn.LSTM core, hidden 144: CPU runs"),
    "gru_balls_small.untrained": _cfg(input_size=(1, 32, 32), description="nn.GRU core, hidden 168: CPU runs"),
})


def _create(variant: str, pretrained: bool, defaults: Dict[str, Any], kwargs: Dict[str, Any]) -> BallsVideoModel:
    return build_zoo_model(BallsVideoModel, variant, pretrained, kwargs_filter=("num_classes",),
                           **{**defaults, **kwargs})


# the thesis's sizes: RIMs 6 units of 100 with k_A = 4 (ch. 8), LSTM 256 (Fig. 3 text)
_RIM = dict(core="rim", hidden_size=600, embed_dim=256, num_units=6, k_active=4)
# CPU sizes (docs/bouncing_balls.md, the sweep): 32x32 frames, half the conv widths, transposed-conv decoder,
# cores of comparable parameter count
_SMALL = dict(embed_dim=64, enc_channels=(8, 16, 32), upsample="transpose")
_RIM_SMALL = dict(core="rim", hidden_size=192, num_units=6, k_active=4, **_SMALL)


@register_model
def rim_lstm_balls(pretrained: bool = False, **kwargs) -> BallsVideoModel:
    """RIMs with LSTM units as the core: 6 units of 100, ``k_A = 4``, embedding 256."""
    return _create("rim_lstm_balls", pretrained, {**_RIM, "cell": "lstm"}, kwargs)


@register_model
def rim_gru_balls(pretrained: bool = False, **kwargs) -> BallsVideoModel:
    """RIMs with GRU units (gated communication residual, see ``rim_gru_seq``): 6 units of 100, ``k_A = 4``."""
    return _create("rim_gru_balls", pretrained, {**_RIM, "cell": "gru", "comm_residual": "gated"}, kwargs)


@register_model
def lstm_balls(pretrained: bool = False, **kwargs) -> BallsVideoModel:
    """``nn.LSTM`` core with hidden 256, the thesis's baseline."""
    return _create("lstm_balls", pretrained, dict(core="lstm", hidden_size=256, embed_dim=256), kwargs)


@register_model
def gru_balls(pretrained: bool = False, **kwargs) -> BallsVideoModel:
    """``nn.GRU`` core with hidden 256."""
    return _create("gru_balls", pretrained, dict(core="gru", hidden_size=256, embed_dim=256), kwargs)


@register_model
def rim_lstm_balls_small(pretrained: bool = False, **kwargs) -> BallsVideoModel:
    """A small RIM core (6 LSTM units of 32, ``k_A = 4``, embedding 64; convs 8/16/32) for 32x32 CPU runs."""
    return _create("rim_lstm_balls_small", pretrained, {**_RIM_SMALL, "cell": "lstm"}, kwargs)


@register_model
def rim_gru_balls_small(pretrained: bool = False, **kwargs) -> BallsVideoModel:
    """A small RIM core (6 GRU units of 32, ``k_A = 4``, gated communication) for 32x32 CPU runs."""
    return _create("rim_gru_balls_small", pretrained, {**_RIM_SMALL, "cell": "gru", "comm_residual": "gated"},
                   kwargs)


@register_model
def lstm_balls_small(pretrained: bool = False, **kwargs) -> BallsVideoModel:
    """A small ``nn.LSTM`` core (hidden 144), about ``rim_lstm_balls_small``'s core parameters."""
    return _create("lstm_balls_small", pretrained, dict(core="lstm", hidden_size=144, **_SMALL), kwargs)


@register_model
def gru_balls_small(pretrained: bool = False, **kwargs) -> BallsVideoModel:
    """A small ``nn.GRU`` core (hidden 168), about ``rim_gru_balls_small``'s core parameters."""
    return _create("gru_balls_small", pretrained, dict(core="gru", hidden_size=168, **_SMALL), kwargs)
