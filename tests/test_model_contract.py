"""Every zoo model keeps timm's model contract (issue 18), checked the way timm checks its own models
(``tests/test_models.py`` in timm's repository): forward, backward, default cfgs, classifier resets,
``features_only``, ``forward_intermediates``, TorchScript and FX, parametrized over ``zoo.list_models()`` so a
new model cannot land without passing them. Sequence models get the same contract adapted to token input.

A model for which a check cannot apply says why in ``NOT_APPLICABLE`` (timm's own exclusion convention).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import pytest
import timm
import torch

import zoo

torch.set_num_threads(1)

IMAGE_MODELS = [n for n in zoo.list_models() if not n.endswith("_seq") and "_seq_" not in n]
SEQ_MODELS = [n for n in zoo.list_models() if n.endswith("_seq") or "_seq_" in n]
BIG = {"wrn28_10", "nfm_wrn28_10", "preactresnet50", "nfm_preactresnet50",   # slow tier only (their
       "preactresnet34", "nfm_preactresnet34"}                          # families run fast at 18 / 28-2)

_VIDEO = ("input is a video (B, T, C, H, W) and the output the next frames' logits (input_kind = 'video'): "
          "no image classifier contract")
#: (model glob, check) -> why the check cannot apply (timm's own exclusion convention)
NOT_APPLICABLE: Dict[Tuple[str, str], str] = {
    **{("*_balls*", c): _VIDEO for c in ("forward", "backward", "cfgs", "features", "torchscript", "fx")},
    ("snm_*", "spatial"): "forward_features is the latent z (B, D) of eq. 5 (fully-connected layers after the "
                          "convs): there is no feature map to pool, so no pool_size and no unpooled output",
    ("snm_mnist_mlp", "features"): "a fully-connected network: no feature maps for features_only (its "
                                   "feature_info levels are the hidden vectors, see forward_intermediates)",
    ("nfm_*", "torchscript"): "the NFM runner (zoo.layers.nfm.NFM) keeps a per-forward dict cache keyed by "
                              "(layer, grid), dataclass traces and a custom autograd.Function: not TorchScript",
}


def _why_not(name: str, check: str) -> str:
    import fnmatch

    for (glob, c), why in NOT_APPLICABLE.items():
        if c == check and fnmatch.fnmatch(name, glob):
            return why
    return ""


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in names]


def _input(model: torch.nn.Module, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


def _calls_in_train_step(model: torch.nn.Module, module_name: str, x: torch.Tensor) -> int:
    """Calls of ``module_name`` (its first module if a Sequential) in one forward + backward: 2 when gradient
    checkpointing recomputes it (a pre-hook: the recomputation may stop early, before any forward hook)."""
    calls = []
    stage = model.get_submodule(module_name)
    while isinstance(stage, torch.nn.Sequential):              # timm's checkpoint_seq calls the children
        stage = stage[0]
    handle = stage.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        model(x).float().sum().backward()
    finally:
        handle.remove()
    return len(calls)


def _skip_if_na(name: str, check: str) -> None:
    why = _why_not(name, check)
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("name", _params(IMAGE_MODELS))
def test_forward_and_grad_checkpointing(name):
    _skip_if_na(name, "forward")
    model = timm.create_model(name).eval()
    x = _input(model)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        assert torch.allclose(model(x), out, atol=1e-5)
    stage = model.feature_info[-1]["module"]                  # checkpointing recomputes it in the backward
    model.set_grad_checkpointing(False)
    assert _calls_in_train_step(model.train(), stage, _input(model, 2)) == 1
    model.set_grad_checkpointing(True)
    assert _calls_in_train_step(model, stage, _input(model, 2)) == 2


@pytest.mark.parametrize("name", _params(IMAGE_MODELS))
def test_backward_reaches_every_parameter(name):
    _skip_if_na(name, "backward")
    model = timm.create_model(name, num_classes=42).train()
    out = model(_input(model, 2))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", _params(IMAGE_MODELS))
def test_default_cfg_heads_and_classifier_resets(name):
    _skip_if_na(name, "cfgs")
    spatial = not _why_not(name, "spatial")
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    x = _input(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape[1] == model.num_features
        if spatial:
            assert feats.dim() == 4 and tuple(feats.shape[-2:]) == tuple(cfg["pool_size"]), \
                "forward_features size != pool_size"
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape and torch.allclose(out, pre, atol=1e-5)
        model.reset_classifier(0, "")
        out = model(x)
        fresh = timm.create_model(name, num_classes=0, global_pool="").eval()
        if spatial:
            assert out.dim() == 4 and tuple(out.shape[-2:]) == tuple(cfg["pool_size"])
            assert fresh(x).dim() == 4
        else:
            assert torch.allclose(out, feats, atol=1e-5) and fresh(x).shape == feats.shape
        with pytest.raises(ValueError, match="global_pool"):
            timm.create_model(name, num_classes=3, global_pool="no-such-pool")
        if spatial:                                    # a classifier on unpooled maps: refused in one line
            with pytest.raises(ValueError, match="global_pool"):
                model.reset_classifier(3)
    state = model.state_dict()
    classifier = cfg["classifier"] if isinstance(cfg["classifier"], (list, tuple)) else [cfg["classifier"]]
    full = timm.create_model(name).state_dict()
    assert all(f"{c}.weight" in full for c in classifier), classifier
    first = cfg["first_conv"] if isinstance(cfg["first_conv"], (list, tuple)) else [cfg["first_conv"]]
    assert all(f"{c}.weight" in state for c in first), first


@pytest.mark.parametrize("name", IMAGE_MODELS + SEQ_MODELS)
def test_pretrained_weights_are_refused_not_silently_dropped(name):
    with pytest.raises((ValueError, RuntimeError), match="pretrained"):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize("name", _params(IMAGE_MODELS))
def test_features_only_and_forward_intermediates(name):
    _skip_if_na(name, "features")
    model = timm.create_model(name, features_only=True).eval()
    channels, reduction = model.feature_info.channels(), model.feature_info.reduction()
    x = _input(model)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(channels) >= 2
    for c, r, o in zip(channels, reduction, outs):
        assert o.shape[1] == c and o.shape[-1] <= math.ceil(x.shape[-1] / r) + 1
    full = timm.create_model(name).eval()
    with torch.no_grad():
        final, inter = full.forward_intermediates(x)
        assert torch.allclose(final, full.forward_features(x), atol=1e-5)
    info = timm.models.FeatureInfo(full.feature_info, list(range(len(full.feature_info))))
    assert [t.shape[1] for t in inter] == info.channels()


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_torchscript(name):
    _skip_if_na(name, "torchscript")
    with timm.layers.set_scriptable(True):
        model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _input(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_fx_trace(name):
    _skip_if_na(name, "fx")
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = timm.create_model(name).eval()
    kwargs = dict(leaf_modules=timm.models.get_notrace_modules(), autowrap_functions=timm.models.get_notrace_functions())
    _, nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    fx = create_feature_extractor(model, return_nodes=[nodes[-1]], tracer_kwargs=kwargs)
    x = _input(model)
    with torch.no_grad():
        assert torch.allclose(next(iter(fx(x).values())), model(x), atol=1e-5)


# --- sequence models: the same contract on token input ----------------------------------------------------
@pytest.mark.parametrize("name", SEQ_MODELS)
def test_sequence_model_contract(name):
    small = dict(hidden_size=24, embed_dim=8)                               # 6 RIM units of 4
    model = timm.create_model(name, num_tokens=10, num_classes=7, **small).eval()
    x = torch.randint(0, 10, (2, 5))
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.is_tensor(feats) and feats.shape == (2, 5, model.num_features)
        logits = model.forward_head(feats)
        assert logits.shape == (2, 5, 7) and torch.allclose(logits, model(x))
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 5, model.head_hidden_size)
        model.reset_classifier(0, "")
        assert model(x).shape == (2, 5, model.num_features)
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, feats) and len(inter) == len(model.feature_info)
    model.reset_classifier(3)
    model.train()
    assert _calls_in_train_step(model, "core", x) == 1
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert _calls_in_train_step(model, "core", x) == 2                     # the core is recomputed
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_sequence_model_fx_trace(name):
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = timm.create_model(name, num_tokens=10, num_classes=7, hidden_size=24, embed_dim=8).eval()
    kwargs = dict(leaf_modules=timm.models.get_notrace_modules(), autowrap_functions=timm.models.get_notrace_functions())
    _, nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    fx = create_feature_extractor(model, return_nodes=[nodes[-1]], tracer_kwargs=kwargs)
    x = torch.randint(0, 10, (2, 5))
    with torch.no_grad():
        assert torch.allclose(next(iter(fx(x).values())), model(x), atol=1e-6)
