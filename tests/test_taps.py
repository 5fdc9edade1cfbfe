"""Layer taps: default layer names, captured activations equal a hand-run forward, modifiers replace
outputs (input included), hooks leave no trace, gradients flow through captured activations."""
import pytest
import timm

import zoo
import torch
from torch import nn

from zoo.taps import INPUT, LayerTaps, default_layers, map_tensors, resolve_layers, stage_layers

torch.set_num_threads(1)


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))


def test_default_layers_timm_feature_info_and_children():
    m = timm.create_model("test_resnet", in_chans=1, num_classes=10)
    assert default_layers(m) == [INPUT] + [f["module"] for f in m.feature_info]
    assert default_layers(m)[:3] == ["input", "act1", "layer1"]
    vit = timm.create_model("test_vit", in_chans=1, num_classes=10, img_size=28, patch_size=7)
    assert default_layers(vit)[1] == "blocks.0"
    assert default_layers(small_net()) == ["input", "0", "1", "2", "3", "4", "5"]


def test_resolve_layers_indices_names_and_errors():
    net = small_net()
    assert resolve_layers(net, [0, 2, "4"]) == ["input", "1", "4"]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers(net, [99])
    with pytest.raises(ValueError, match="not 'input' or a submodule"):
        resolve_layers(net, ["layer9"])


def test_captured_activations_equal_hand_forward():
    net, x = small_net(), torch.randn(3, 1, 28, 28)
    with LayerTaps(net, ["input", "1", "3"]) as taps:
        out = net(x)
        assert torch.equal(taps["input"], x)
        assert torch.allclose(taps["1"], net[:2](x))
        assert torch.allclose(taps[4], net[:4](x))              # index 4 of default_layers is module "3"
    assert torch.allclose(out, net(x))


def test_modifier_replaces_layer_output_and_input():
    net, x = small_net(), torch.randn(3, 1, 28, 28)
    with torch.no_grad():                                       # hand-written forwards, before any hook
        expected_mid = net[2:](2.0 * net[:2](x) + 1.0)
        expected_in = net(x.flip(0))
        plain = net(x)
    with LayerTaps(net, capture=False) as taps:
        taps.set_modifier("1", lambda h: 2.0 * h + 1.0)
        assert torch.allclose(net(x), expected_mid, atol=1e-6)
        taps.clear_modifier()
        taps.set_modifier(0, lambda v: v.flip(0))               # the input itself
        assert torch.allclose(net(x), expected_in, atol=1e-6)
        taps.clear_modifier(0)
        assert torch.allclose(net(x), plain)


def test_hooks_removed_on_exit_and_model_unchanged():
    m = timm.create_model("test_resnet", in_chans=1, num_classes=10).eval()
    x = torch.randn(2, 1, 28, 28)
    before = m(x)
    with LayerTaps(m) as taps:
        taps.set_modifier("layer1", torch.zeros_like)
        assert not torch.allclose(m(x), before)
        assert set(taps.activations) == set(default_layers(m))
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert torch.allclose(m(x), before)


def test_gradients_flow_through_captured_activations_unless_detached():
    net, x = small_net(), torch.randn(2, 1, 28, 28)
    with LayerTaps(net, ["1"]) as taps:
        net(x)
        taps["1"].pow(2).sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
    assert net[2].weight.grad is None                           # only layers before the tap
    with LayerTaps(net, ["1"], detach=True) as taps:
        net(x)
        assert not taps["1"].requires_grad


def test_map_tensors_nested_outputs():
    out = map_tensors(lambda t: t + 1, (torch.zeros(2), [torch.ones(1)], {"a": torch.zeros(1)}, "s"))
    assert out[0].tolist() == [1, 1] and out[1][0].item() == 2 and out[2]["a"].item() == 1 and out[3] == "s"


def test_stage_layers_drop_leaf_stems():
    m = timm.create_model("test_resnet", in_chans=1, num_classes=10)
    assert stage_layers(m) == ["layer1", "layer2", "layer3", "layer4"]           # act1 (a ReLU) is the stem
    net = small_net()                                                            # only leaves: keep them all
    assert stage_layers(net) == default_layers(net)[1:]


# --- the paper's stages on every timm family (issue 18) --------------------------------------------------
# S = {input, stage 1, stage 2} of Manifold Mixup (thesis ch. 4): on a ResNet the outputs of layer1 and
# layer2, never the stem's output. The expected names follow each architecture's own stage definition.
PAPER_STAGES = {
    "resnet18": ["layer1", "layer2"],
    "mobilenetv3_small_050": ["blocks.0", "blocks.1"],                  # bn1 is the stem
    "regnetx_002": ["s1", "s2"],                                        # stem
    "repvgg_a0": ["stages.0", "stages.1"],
    "gernet_s": ["stages.0", "stages.1"],
    "coatnet_0_rw_224": ["stages.0", "stages.1"],
    "maxvit_tiny_rw_224": ["stages.0", "stages.1"],
    "densenet121": ["features.denseblock1", "features.denseblock2"],    # features.norm0 is the stem
    "cspdarknet53": ["stages.0", "stages.1"],                           # stem.conv1
    "xception41": ["blocks.0.stack.act3", "blocks.1.stack.act3"],       # not only blocks.12
    "convnext_atto": ["stages.0", "stages.1"],                          # no stem level in feature_info
    "vit_tiny_patch16_224": ["blocks.0", "blocks.1"],
    "twins_svt_small": ["blocks.0.1", "blocks.1.1"],                    # feature_info says block.0: last block
    "preactresnet18": ["layer1", "layer2"],                             # conv1 (a leaf conv) is the stem
    "sortclevr_cnn": ["conv1", "conv2"],                                # conv1 = conv+ReLU+BN, a stage
}


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):                                          # no memory, no init time
        return timm.create_model(name)


@pytest.mark.parametrize("name", sorted(PAPER_STAGES))
def test_stage_layers_are_the_papers_stages_on_each_family(name):
    assert stage_layers(_meta(name))[:2] == PAPER_STAGES[name]


def test_stages_of_a_real_forward_are_the_stem_then_two_downsamplings():
    m = timm.create_model("mobilenetv3_small_050").eval()
    with LayerTaps(m, ["input"] + stage_layers(m)[:2], detach=True) as taps:
        m(torch.randn(1, 3, 64, 64))
        sizes = [taps[n].shape[-1] for n in taps.layers]
    assert sizes == [64, 16, 8]                                         # stride 4 and 8, as ResNet's layer1/2


def test_feature_info_naming_missing_modules_is_a_clear_error():
    with pytest.raises(ValueError, match=r"feature_info names modules it does not have \(stem, stage1\).*pass the layers"):
        default_layers(_meta("hrnet_w18_small"))


def test_out_of_range_and_unknown_layers_are_errors():
    m = timm.create_model("test_resnet", in_chans=1, num_classes=10)
    with pytest.raises(ValueError, match="layer index 7 out of range"):
        LayerTaps(m, [7, 8])
    with pytest.raises(ValueError, match="close names"):
        LayerTaps(m, ["layer9"])


def _families():
    import timm.models._registry as registry

    first = {}
    for name in timm.list_models():
        module = registry._model_to_module.get(name)
        if module and module not in first and not zoo.is_zoo_model(name):
            first[module] = name
    return sorted(first.values())


@pytest.mark.slow
def test_every_timm_family_gets_resolvable_hookable_stages_or_a_clear_error():
    counts = {"stages": 0, "clear error": 0, "no feature_info": 0}
    for name in _families():
        m = _meta(name)
        if getattr(m, "feature_info", None) is None:
            counts["no feature_info"] += 1
            continue
        try:
            names = default_layers(m)
        except ValueError as e:
            assert "pass the layers explicitly" in str(e)
            counts["clear error"] += 1
            continue
        modules = dict(m.named_modules())
        assert names[0] == "input" and all(n in modules for n in names[1:]), name
        stages = stage_layers(m)
        assert stages and not any(p.startswith("stem") for p in stages[0].split(".")), (name, stages)
        counts["stages"] += 1
    assert counts["stages"] >= 80 and counts["clear error"] <= 6, counts
