"""Encoder / classifier / tied-decoder networks of semantic noise modeling (``semantic_noise_modeling.txt``,
sec. 2.1 eq. 5, sec. 4.2 and Figure 4).

Given an input ``x`` (eq. 5)::

    z   = f1(x)        encoder: the convs / fully-connected layers up to the latent z
    y   = f2(z)        classifier: the last fully-connected layer (logits)
    x_R = g1'(z)       decoder of x: the encoder layers run backwards with the *same* weights, transposed
    z_R = g2'(y)       decoder of z: ``y W2`` with the classifier's weight ``W2``

"Weights on the decoding path are tied with corresponding weights on the encoding path (transposed
convolution for the tied convolution layer and transposed matrix multiplication for the tied fully-connected
layer)" (sec. 4.2): a decoder layer holds no weight of its own, it reads its encoder layer's ``weight``
Parameter (same storage) and uses it transposed, so gradients of the reconstruction losses flow into the
one encoder weight. Decoder biases are optional (``decoder_bias=True``; Figure 4 leaves biases out).

Registered models (timm ``@register_model``, default cfgs):

* ``snm_mnist_convnet``: the paper's MNIST network: 3x3 stride-2 convs with 32, 64, 96 filters, then
  fully-connected 128 (z) and 10 (y); ReLU after every hidden layer.
* ``snm_mnist_mlp``: the permutation-invariant MNIST network 784-512-256-256-128-10.

Both are ordinary timm classifiers (``forward(x) -> logits``; ``forward_features -> z``; ``forward_head``;
``reset_classifier``; ``forward_intermediates`` over ``feature_info``: the conv maps of the convnet, the
fully-connected layers of the MLP) and add :meth:`SNMNet.encode`, :meth:`SNMNet.classify`, :meth:`SNMNet.decode_x`,
:meth:`SNMNet.decode_z`, used by the ``semantic_noise`` methods (:mod:`zoo.methods.semantic_noise`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._checks import check_shape
from .staged import build_zoo_model, check_head_args, check_pool

__all__ = ["SNMNet", "TiedLinearT", "TiedConvT"]


class TiedLinearT(nn.Module):
    """Decoder layer ``h -> h W + b'`` for an encoder ``nn.Linear`` with weight ``W`` ``(out, in)``.

    ``weight`` *is* the encoder's Parameter (held by reference, not registered twice); ``bias`` ``(in,)``
    (optional) is this layer's own. Shapes: ``(B, out) -> (B, in)``.
    """

    __jit_unused_properties__ = ["weight"]

    def __init__(self, encoder: nn.Linear, bias: bool = False) -> None:
        super().__init__()
        self._encoder = (encoder,)                       # a tuple: not a submodule, the weight stays single
        self.bias = nn.Parameter(torch.zeros(encoder.in_features)) if bias else None

    @property
    def weight(self) -> Tensor:
        return self._encoder[0].weight

    @torch.jit.unused
    def forward(self, h: Tensor) -> Tensor:
        return F.linear(h, self.weight.t(), self.bias)


class TiedConvT(nn.Module):
    """Decoder layer: transposed convolution with an encoder ``nn.Conv2d``'s weight ``(C_out, C_in, k, k)``.

    ``conv_transpose2d`` reads that same tensor as ``(in = C_out, out = C_in, k, k)``: the adjoint of the
    encoder convolution. ``bias`` ``(C_in,)`` (optional) is this layer's own. Shapes: ``(B, C_out, h, w) ->
    (B, C_in, H, W)`` with ``(H, W)`` the encoder's input size (``output_padding`` chosen to reach it).
    """

    __jit_unused_properties__ = ["weight"]

    def __init__(self, encoder: nn.Conv2d, bias: bool = False) -> None:
        super().__init__()
        if encoder.groups != 1 or isinstance(encoder.padding, str):
            raise ValueError("tied transposed convolution needs groups=1 and numeric padding")
        self._encoder = (encoder,)
        self.bias = nn.Parameter(torch.zeros(encoder.in_channels)) if bias else None

    @property
    def weight(self) -> Tensor:
        return self._encoder[0].weight

    @torch.jit.unused
    def forward(self, h: Tensor, out_hw: Tuple[int, int]) -> Tensor:
        enc = self._encoder[0]
        padding = enc.padding
        assert not isinstance(padding, str)                  # string padding is refused in __init__
        pad = []
        for i in range(2):
            base = (h.shape[2 + i] - 1) * enc.stride[i] - 2 * padding[i] + enc.dilation[i] * (enc.kernel_size[i] - 1) + 1
            pad.append(out_hw[i] - base)
            if not 0 <= pad[i] < max(enc.stride[i], enc.dilation[i]):
                raise ValueError(f"cannot reach output size {tuple(out_hw)} from {tuple(h.shape[2:])}")
        return F.conv_transpose2d(h, self.weight, self.bias, enc.stride, padding, tuple(pad), 1, enc.dilation)


class SNMNet(nn.Module):
    """Encoder ``f1`` (convs, then fully-connected layers) -> latent ``z`` -> classifier ``f2`` -> logits ``y``,
    with the tied decoders ``g1'`` (``z -> x_R``) and ``g2'`` (``y -> z_R``) of eq. 5.

    Args:
        num_classes, in_chans: as in timm. img_size: input side (fixes the flattened size).
        conv_widths: filters of the 3x3 stride-2 convs (``()`` for the MLP).
        fc_dims: fully-connected widths after the convs; the last is the latent size ``dim(z)``.
        drop_rate: dropout on ``z`` before the classifier.
        recon_act: output of ``x_R``: ``"identity"`` (the paper's L2 on whitened inputs) or ``"sigmoid"``.
        decoder_bias: give every decoder layer its own bias (Figure 4 leaves biases out; default off, so
            the tied decoders add no parameters and every parameter is trained by the classifier path too).
        global_pool: ``""`` (the only value: ``z`` is a vector, nothing to pool; accepted for timm's API).

    ``feature_info``: the conv maps (the convnet) or, for a fully-connected network, the hidden layers.
    ``num_classes=0`` gives the encoder alone (``forward`` returns ``z``); the ``z_R`` decoder needs a classifier.

    Shapes: ``x (B, in_chans, img_size, img_size)``; ``z, z_R (B, fc_dims[-1])``; ``y (B, num_classes)``;
    ``x_R`` like ``x``.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                 conv_widths: Sequence[int] = (32, 64, 96), fc_dims: Sequence[int] = (128,),
                 drop_rate: float = 0.0, recon_act: str = "identity", decoder_bias: bool = False,
                 global_pool: str = "") -> None:
        super().__init__()
        if not fc_dims:
            raise ValueError("fc_dims must name at least the latent size")
        if recon_act not in ("identity", "sigmoid"):
            raise ValueError(f"recon_act must be 'identity' or 'sigmoid', got {recon_act!r}")
        check_head_args(num_classes, in_chans)
        check_pool(0, global_pool, ("",))
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.drop_rate, self.recon_act, self.grad_checkpointing = drop_rate, recon_act, False
        self.decoder_bias = bool(decoder_bias)
        self.enc_convs = nn.ModuleList()
        self.sizes: List[Tuple[int, int, int]] = [(in_chans, img_size, img_size)]   # input of every conv
        self.feature_info: List[Dict[str, Any]] = []
        self.input_shape: List[int] = [in_chans, img_size, img_size]
        cin, side, red = in_chans, img_size, 1
        convs: List[nn.Conv2d] = []                      # the encoder layers, tied to the decoders below
        fcs: List[nn.Linear] = []
        for i, w in enumerate(conv_widths):
            convs.append(nn.Conv2d(cin, w, 3, 2, 1))
            self.enc_convs.append(nn.Sequential(convs[-1], nn.ReLU()))
            cin, side, red = w, (side - 1) // 2 + 1, red * 2
            self.sizes.append((cin, side, side))
            self.feature_info.append(dict(num_chs=w, reduction=red, module=f"enc_convs.{i}"))
        self.flat_dim = cin * side * side
        self.enc_fcs = nn.ModuleList()
        d = self.flat_dim
        for i, h in enumerate(fc_dims):
            fcs.append(nn.Linear(d, h))
            self.enc_fcs.append(nn.Sequential(fcs[-1], nn.ReLU()))
            d = h
            if not conv_widths:                          # no feature maps: the hidden layers are the levels
                self.feature_info.append(dict(num_chs=h, reduction=1, module=f"enc_fcs.{i}"))
        self.num_features = self.head_hidden_size = d
        self.fc = nn.Linear(d, num_classes) if num_classes > 0 else nn.Identity()
        # decoders: the encoder layers' own weights, used transposed (x_R path in reverse layer order)
        self.dec_fcs = nn.ModuleList([TiedLinearT(m, decoder_bias) for m in fcs])
        self.dec_convs = nn.ModuleList([TiedConvT(m, decoder_bias) for m in convs])
        self.dec_fc = TiedLinearT(cast(nn.Linear, self.fc), decoder_bias) if num_classes > 0 else None

    # -- timm API -----------------------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier (``num_classes=0``: none, the model returns ``z``) and its tied ``z_R`` decoder."""
        check_head_args(num_classes, self.in_chans)
        check_pool(0, global_pool, ("",))
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.dec_fc = TiedLinearT(cast(nn.Linear, self.fc), self.decoder_bias) if num_classes > 0 else None

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoder layers' activations in the backward pass."""
        self.grad_checkpointing = enable

    def _encode(self, x: Tensor, last: int = -1) -> Tuple[Tensor, List[Tensor]]:
        """``z`` and the ``feature_info`` levels up to ``last`` (all for ``-1``)."""
        check_shape(x, self.input_shape)
        levels: List[Tensor] = []
        for m in self.enc_convs:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(m, x, use_reentrant=False)
            else:
                x = m(x)
            levels.append(x)
        x = x.flatten(1)
        for m in self.enc_fcs:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(m, x, use_reentrant=False)
            else:
                x = m(x)
            if len(self.enc_convs) == 0:
                levels.append(x)
        return x, levels

    def forward_features(self, x: Tensor) -> Tensor:
        """``f1``: ``(B, C, H, W) -> z (B, dim_z)``."""
        return self._encode(x)[0]

    @torch.jit.ignore
    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's intermediate-feature API over ``feature_info`` (conv maps ``(B, C, h, w)``; the hidden
        vectors ``(B, D)`` of the MLP). Returns ``(z, levels)`` (``levels`` alone if ``intermediates_only``)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, _ = feature_take_indices(len(self.feature_info), indices)
        z, levels = self._encode(x)
        inter = [levels[i] for i in take]
        return inter if intermediates_only else (z, inter)

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """The wanted ``feature_info`` indices; the encoder is kept whole (the tied decoders read its weights)."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_head(self, z: Tensor, pre_logits: bool = False) -> Tensor:
        """``f2``: ``z -> y`` (``pre_logits``: ``z`` after dropout)."""
        z = F.dropout(z, self.drop_rate, self.training) if self.drop_rate > 0 else z
        return z if pre_logits else self.fc(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # -- semantic-noise API (eq. 5) -----------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """``z = f1(x)``."""
        return self.forward_features(x)

    def classify(self, z: Tensor) -> Tensor:
        """``y = f2(z)``."""
        return self.forward_head(z)

    def decode_z(self, y: Tensor) -> Tensor:
        """``z_R = g2'(y) = ReLU(y W2 + b)`` with the classifier weight ``W2`` (z is a ReLU output too)."""
        if self.dec_fc is None:
            raise ValueError("decode_z needs the classifier (W2): build the model with num_classes > 0")
        return F.relu(self.dec_fc(y))

    def decode_x(self, z: Tensor) -> Tensor:
        """``x_R = g1'(z)``: the encoder layers in reverse order with transposed weights, ReLU between them."""
        h = z
        layers = len(self.dec_fcs) + len(self.dec_convs)
        k = 0
        for m in reversed(self.dec_fcs):
            h, k = m(h), k + 1
            h = F.relu(h) if k < layers else h
        if self.dec_convs:
            h = h.view(h.shape[0], *self.sizes[-1])
            for i in reversed(range(len(self.dec_convs))):
                h, k = self.dec_convs[i](h, self.sizes[i][1:]), k + 1
                h = F.relu(h) if k < layers else h
        else:
            h = h.view(h.shape[0], *self.sizes[0])
        return torch.sigmoid(h) if self.recon_act == "sigmoid" else h

    def forward_snm(self, x: Tensor) -> Dict[str, Tensor]:
        """Eq. 5 in one call: ``{"z", "y", "x_r", "z_r"}``."""
        z = self.encode(x)
        y = self.classify(z)
        return {"z": z, "y": y, "x_r": self.decode_x(z), "z_r": self.decode_z(y)}


def _cfg(**kwargs) -> Dict[str, Any]:
    return {"url": "", "num_classes": 10, "input_size": (1, 28, 28), "mean": (0.1307,), "std": (0.3081,),
            "crop_pct": 1.0, "interpolation": "bilinear", "classifier": "fc", "license": "mit",
            "paper_name": "Semantic Noise Modeling for Better Representation Learning", **kwargs}


default_cfgs = generate_default_cfgs({
    "snm_mnist_convnet.untrained": _cfg(first_conv="enc_convs.0.0",
                                        description="SNM MNIST convnet: conv 32-64-96 (3x3, stride 2), fc 128-10, "
                                                    "tied decoders"),
    "snm_mnist_mlp.untrained": _cfg(first_conv="enc_fcs.0.0",
                                    description="SNM permutation-invariant MNIST MLP 784-512-256-256-128-10, tied "
                                                "decoders"),
})


def _create(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> SNMNet:
    return build_zoo_model(SNMNet, variant, pretrained, **kwargs)


@register_model
def snm_mnist_convnet(pretrained: bool = False, **kwargs) -> SNMNet:
    """Semantic-noise MNIST convnet (sec. 4.2): 3x3/2 convs 32, 64, 96; fc 128 (z), 10 (y); tied decoders."""
    return _create("snm_mnist_convnet", pretrained, dict(dict(conv_widths=(32, 64, 96), fc_dims=(128,)), **kwargs))


@register_model
def snm_mnist_mlp(pretrained: bool = False, **kwargs) -> SNMNet:
    """Semantic-noise permutation-invariant MNIST MLP (sec. 4.2): 784-512-256-256-128-10, tied decoders."""
    return _create("snm_mnist_mlp", pretrained, dict(dict(conv_widths=(), fc_dims=(512, 256, 256, 128)), **kwargs))
