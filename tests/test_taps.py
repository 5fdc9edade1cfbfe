"""Layer taps: default layer names, captured activations equal a hand-run forward, modifiers replace
outputs (input included), hooks leave no trace, gradients flow through captured activations."""
import pytest
import timm
import torch
from torch import nn

import zoo  # noqa: F401
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
