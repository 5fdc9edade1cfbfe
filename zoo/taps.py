"""The one layer-tap mechanism: name layers of any ``nn.Module``, capture their outputs, replace them.

Every method that acts on hidden layers (Manifold Mixup, thesis ch. 4; IRL's and DAI's per-layer
distances; the NFM plots) goes through :class:`LayerTaps` instead of re-writing a network's ``forward``.

Layer names are ``model.named_modules()`` names (``"layer1"``, ``"stages.0"``, ``"blocks.3"``) plus the
special name ``"input"`` (the model's first positional argument). An ``int`` ``k`` means
``default_layers(model)[k]``, so ``0`` is always the input and ``1, 2, ...`` are the feature stages:

* a timm model: ``["input"] + [info["module"] for info in model.feature_info]``
  (``resnet18``: ``input, act1, layer1, ..., layer4``; ``convnext_tiny``: ``input, stages.0, ...``;
  a ViT: ``input, blocks.0, ...``);
* a model without ``feature_info``: ``["input"]`` + the names of its top-level children.

Example::

    taps = LayerTaps(model, ["input", "layer1"])
    with taps:
        logits = model(x)
        h = taps["layer1"]                          # (B, C, H, W), still in the autograd graph
    with LayerTaps(model, [2]) as taps:
        taps.set_modifier(2, lambda h: 0.5 * h)     # the model now continues from 0.5 * layer1(...)
        logits = model(x)

Modifiers are plain functions of the layer's output; they are called on every forward while set, so a
modifier that depends only on values fixed beforehand (e.g. mixup's ``lambda`` and permutation, drawn once
per step) gives the same result when a forward runs twice (activation checkpointing re-runs it).
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

__all__ = ["INPUT", "LayerTaps", "default_layers", "stage_layers", "resolve_layers", "map_tensors", "is_stem"]

INPUT = "input"
LayerRef = Union[str, int]
Modifier = Callable[[Any], Any]


_STEM_LEAF = re.compile(r"^(act|bn|norm|conv|relu|pool)\d*$")


def _hookable(model: nn.Module, name: str) -> Optional[str]:
    """``name`` as a module of ``model`` whose forward runs as a unit: a container that is only iterated
    (``nn.ModuleList``/``ModuleDict``) stands for its last child. ``None`` if there is no such module."""
    modules = dict(model.named_modules())
    if name not in modules:
        return None
    module = modules[name]
    while (isinstance(module, (nn.ModuleList, nn.ModuleDict)) and len(module)
           and type(module).forward is nn.Module.forward):          # iterated by its parent, never called
        last = list(module.named_children())[-1][0]
        name, module = f"{name}.{last}", modules[f"{name}.{last}"]
    return name


def _feature_module(model: nn.Module, name: str) -> Optional[str]:
    """Resolve a ``feature_info`` module name on the model itself. Some timm families name the module of
    their features-only wrapper: the first path component is tried in its singular/plural form too
    (Twins: ``block.0`` for ``blocks.0``), and a unique module whose name ends with ``.name`` (Gemma ViT:
    ``encoder.blocks.0``)."""
    found = _hookable(model, name)
    if found is not None:
        return found
    head, _, rest = name.partition(".")
    alt = head[:-1] if head.endswith("s") else head + "s"
    found = _hookable(model, f"{alt}.{rest}" if rest else alt)
    if found is not None:
        return found
    tails = [n for n, _ in model.named_modules() if n.endswith("." + name)]
    return _hookable(model, tails[0]) if len(tails) == 1 else None


def default_layers(model: nn.Module) -> List[str]:
    """The default tap points: ``"input"`` plus the timm ``feature_info`` stages (else top-level children).

    Raises:
        ValueError: the model has ``feature_info`` whose modules it does not have (e.g. timm's HRNet
            classifiers describe their features-only variant): pass layer names explicitly.

    Returns:
        layer names, ``[0]`` is always ``"input"``.
    """
    info = getattr(model, "feature_info", None)
    names: List[str] = []
    if info is not None:
        entries = info.info if hasattr(info, "info") else info          # timm FeatureInfo or a list of dicts
        wanted = [e["module"] for e in entries if isinstance(e, dict) and e.get("module")]
        resolved = [_feature_module(model, n) for n in wanted]
        missing = [n for n, r in zip(wanted, resolved) if r is None]
        if missing:
            raise ValueError(
                f"{type(model).__name__}.feature_info names modules it does not have ({', '.join(missing[:4])}); "
                f"pass the layers explicitly, e.g. layers=[\"input\", ...] with names from model.named_modules()")
        names = list(dict.fromkeys(resolved))  # type: ignore[arg-type]
    if not names:
        names = [n for n, _ in model.named_children()]
    return [INPUT] + names


def is_stem(model: nn.Module, name: str) -> bool:
    """A stem output rather than a stage: a ``stem*`` path component (``stem``, ``stem.conv1``), or a single
    conv/norm/activation layer near the top (``act1``, ``bn1``, ``conv1``, ``features.norm0``; a
    ``conv1`` block of several layers, as in small CNNs, is a stage)."""
    parts = name.split(".")
    if any(p.startswith("stem") for p in parts):
        return True
    if len(parts) > 2 or not _STEM_LEAF.match(parts[-1]):
        return False
    module = model.get_submodule(name)
    kind = type(module).__name__
    return not any(True for _ in module.children()) or "Norm" in kind or "Act" in kind


def stage_layers(model: nn.Module) -> List[str]:
    """The feature *stages* among :func:`default_layers`, without ``"input"``, so that
    ``["input"] + stage_layers(model)[:2]`` is the Manifold Mixup paper's ``S = {input, stage 1, stage 2}``
    (thesis ch. 4: on a ResNet the outputs of ``layer1`` and ``layer2``).

    With timm ``feature_info`` the first level is dropped when it is the stem's output (:func:`is_stem`:
    ResNet ``act1``, MobileNetV3 ``bn1``, RegNet/RepVGG/GENet/CoAtNet/MaxViT ``stem``, DenseNet
    ``features.norm0``, CSPDarknet ``stem.conv1``). Without ``feature_info`` (top-level children), children
    that are single leaf modules (a stem conv, a classifier) are dropped.
    """
    names = default_layers(model)[1:]
    if getattr(model, "feature_info", None) is not None:
        return names[1:] if len(names) > 1 and is_stem(model, names[0]) else names
    stages = [n for n in names if any(True for _ in model.get_submodule(n).children())]
    return stages or names


def resolve_layers(model: nn.Module, layers: Optional[Iterable[LayerRef]] = None) -> List[str]:
    """Turn ``layers`` (names and/or indices into :func:`default_layers`) into checked module names.

    Raises:
        ValueError: an index out of range or a name that is not ``"input"`` or a submodule of ``model``.
    """
    defaults = default_layers(model)
    if layers is None:
        return defaults
    if isinstance(layers, (str, int)):
        layers = [layers]
    known = dict(model.named_modules())
    out: List[str] = []
    for ref in layers:
        if isinstance(ref, bool) or not isinstance(ref, (str, int)):
            raise ValueError(f"layers must be names (str) or indices (int) into default_layers, got {ref!r}")
        if isinstance(ref, int):
            if not 0 <= ref < len(defaults):
                raise ValueError(f"layer index {ref} out of range; default_layers(model) = {defaults}")
            name = defaults[ref]
        else:
            name = ref
        if name != INPUT and (name == "" or name not in known):
            close = difflib.get_close_matches(name, [n for n in known if n], n=6, cutoff=0.5)
            raise ValueError(f"layer {name!r} is not 'input' or a submodule of {type(model).__name__}; "
                             f"defaults: {defaults}" + (f"; close names: {close}" if close else ""))
        if name not in out:
            out.append(name)
    return out


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """Apply ``fn`` to every tensor in ``value`` (a tensor, or tensors nested in tuples/lists/dicts)."""
    if torch.is_tensor(value):
        return fn(value)
    if isinstance(value, (list, tuple)):
        mapped = [map_tensors(fn, v) for v in value]
        return type(value)(*mapped) if hasattr(value, "_fields") else type(value)(mapped)
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    return value


class LayerTaps:
    """Forward hooks on named layers of ``model``: capture outputs and, optionally, replace them.

    Args:
        model: any ``nn.Module`` (a timm model, a zoo model, your own network).
        layers: names or :func:`default_layers` indices to tap (``None``: all default layers).
        capture: keep each tapped layer's latest output in :attr:`activations` (not detached, so losses
            on activations back-propagate; ``False`` stores nothing, e.g. when only modifying).
        detach: store detached outputs instead (for plots and scores without a graph).

    Use as a context manager (hooks removed on exit) or call :meth:`attach` / :meth:`remove`.
    ``taps[name]`` (or ``taps[index]``) is the captured output of that layer in the latest forward;
    for ``"input"`` it is the (possibly modified) input.
    """

    def __init__(self, model: nn.Module, layers: Optional[Iterable[LayerRef]] = None, *, capture: bool = True,
                 detach: bool = False) -> None:
        self.model = model
        self.layers: List[str] = resolve_layers(model, layers)
        self.capture = capture
        self.detach = detach
        self.activations: Dict[str, Any] = {}
        self.modifiers: Dict[str, Modifier] = {}
        self._handles: Dict[str, Any] = {}

    # -- names ------------------------------------------------------------------------------------------
    def name(self, ref: LayerRef) -> str:
        """The module name of ``ref`` (a name or a :func:`default_layers` index)."""
        return resolve_layers(self.model, [ref])[0]

    def __getitem__(self, ref: LayerRef) -> Any:
        name = self.name(ref)
        if name not in self.activations:
            raise KeyError(f"no activation captured for {name!r}; tapped layers: {self.layers} "
                           f"(run a forward inside the taps first)")
        return self.activations[name]

    # -- hooks ------------------------------------------------------------------------------------------
    def _store(self, name: str, value: Any) -> None:
        if self.capture and name in self.layers:
            self.activations[name] = map_tensors(torch.Tensor.detach, value) if self.detach else value

    def _hook(self, name: str) -> None:
        if name in self._handles:
            return
        if name == INPUT:
            def pre_hook(module, args):
                if not args:
                    raise ValueError("the 'input' tap needs the input as the model's first positional argument")
                x = args[0]
                fn = self.modifiers.get(INPUT)
                if fn is not None:
                    x = fn(x)
                self._store(INPUT, x)
                return (x,) + tuple(args[1:]) if fn is not None else None
            self._handles[name] = self.model.register_forward_pre_hook(pre_hook)
        else:
            def hook(module, args, output):
                fn = self.modifiers.get(name)
                if fn is not None:
                    output = fn(output)
                self._store(name, output)
                return output if fn is not None else None
            self._handles[name] = self.model.get_submodule(name).register_forward_hook(hook)

    def attach(self) -> "LayerTaps":
        """Register the hooks (idempotent); returns ``self``."""
        for name in self.layers:
            self._hook(name)
        for name in self.modifiers:
            self._hook(name)
        return self

    def remove(self) -> None:
        """Remove every hook, modifier and captured activation."""
        for h in self._handles.values():
            h.remove()
        self._handles.clear()
        self.modifiers.clear()
        self.activations.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "LayerTaps":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- modifiers --------------------------------------------------------------------------------------
    def set_modifier(self, ref: LayerRef, fn: Modifier) -> str:
        """Replace the output of layer ``ref`` by ``fn(output)`` in every forward until cleared.

        The layer need not be in ``layers`` (it is hooked on demand). Returns the resolved name.
        """
        if not callable(fn):
            raise ValueError(f"fn must be callable, got {type(fn).__name__}")
        name = self.name(ref)
        self.modifiers[name] = fn
        if self.attached:
            self._hook(name)
        return name

    def clear_modifier(self, ref: Optional[LayerRef] = None) -> None:
        """Stop modifying layer ``ref`` (``None``: every layer)."""
        if ref is None:
            self.modifiers.clear()
        else:
            self.modifiers.pop(self.name(ref), None)

    def clear(self) -> None:
        """Forget the captured activations (hooks and modifiers stay)."""
        self.activations.clear()

    def __repr__(self) -> str:
        return (f"LayerTaps({type(self.model).__name__}, layers={self.layers}, "
                f"modifiers={list(self.modifiers)}, attached={self.attached})")
