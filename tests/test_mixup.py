"""Input / Manifold Mixup through taps (thesis ch. 4, eq. 4.1) against hand-written mixed forwards: the
training step mixes the layer it drew, with one lambda for the hidden state and the targets."""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import zoo  # noqa: F401
from zoo.methods import create_method, list_methods
from zoo.methods.mixup import bce_on_softmax, mix, mixed_targets, sample_lambda, soft_target_cross_entropy

CPU = torch.device("cpu")


def resnet_hand_forward(m, x, mix_after: str, lam: float, perm: torch.Tensor):
    """timm ResNet forward written out, mixing after ``mix_after`` (``input``, ``act1``, ``layerN``)."""
    h = mix(x, lam, perm) if mix_after == "input" else x
    h = m.act1(m.bn1(m.conv1(h)))
    if mix_after == "act1":
        h = mix(h, lam, perm)
    h = m.maxpool(h)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        h = getattr(m, name)(h)
        if name == mix_after:
            h = mix(h, lam, perm)
    return m.forward_head(h)


@pytest.fixture
def xy(image_batch):
    b = image_batch(8, seed=1)
    return b["x"], b["y"]


def test_registered():
    assert {"erm", "input_mixup", "manifold_mixup"} <= set(list_methods())
    assert create_method("manifold_mixup").alpha == 2.0 and create_method("input_mixup").alpha == 1.0
    assert create_method("manifold_mixup").loss_name == "soft_ce"
    with pytest.raises(ValueError, match="loss must be one of"):
        create_method("manifold_mixup", loss="mse")
    for bad, match in [(dict(alpha=-0.1), "alpha must be >= 0"), (dict(layers=[]), "at least one layer")]:
        with pytest.raises(ValueError, match=match):
            create_method("manifold_mixup", **bad)
    assert create_method("manifold_mixup", alpha=0.0).alpha == 0.0                  # 0: no mixing
    assert create_method("manifold_mixup", layers="layer1").layer_refs == ("layer1",)
    with pytest.raises(ValueError, match="cannot mix a batch of 3 with a permutation of 2"):
        mix(torch.rand(3, 2), 0.5, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="setup"):
        create_method("manifold_mixup").loss(nn.Linear(2, 2), {"x": torch.rand(2, 2), "y": torch.tensor([0, 1])}, 0)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_manifold_mixup_equals_hand_written_mixed_forward_and_grads(k, xy, make_resnet):
    x, y = xy
    lam, perm = 0.3, torch.randperm(8, generator=torch.Generator().manual_seed(2))
    m_tap, m_hand = make_resnet(), make_resnet()
    method = create_method("manifold_mixup", layers=[0, 1, 2, 3])
    method.setup(m_tap)
    method.set_mix(k, lam, perm)
    out_tap = m_tap(x)
    out_hand = resnet_hand_forward(m_hand, x, method.layers[k], lam, perm)
    assert torch.allclose(out_tap, out_hand, atol=1e-5)
    target = mixed_targets(y, 10, lam, perm)
    soft_target_cross_entropy(out_tap, target).backward()
    soft_target_cross_entropy(out_hand, target).backward()
    # gradients reach the layers before the mix (conv1 is before every tap point) and match by hand
    assert next(m_tap.parameters()).grad.abs().sum() > 0
    for (n, p_t), p_h in zip(m_tap.named_parameters(), m_hand.parameters()):
        assert torch.allclose(p_t.grad, p_h.grad, atol=1e-5), n
    method.end_step()
    assert torch.allclose(m_tap(x), m_hand(x), atol=1e-5)          # no mixing once the step is over


def test_input_layer_is_really_mixed(xy, make_resnet):
    x, _ = xy
    m = make_resnet().eval()
    method = create_method("input_mixup")
    method.setup(m)
    assert method.layers == ["input"]
    perm = torch.arange(7, -1, -1)
    method.set_mix(0, 0.0, perm)                         # lambda = 0: the network sees x[perm] only
    assert torch.allclose(m(x), make_resnet().eval()(x[perm]), atol=1e-5)
    method.set_mix(0, 0.25, perm)
    assert torch.allclose(m(x), make_resnet().eval()(0.25 * x + 0.75 * x[perm]), atol=1e-5)


@pytest.mark.parametrize("loss_name", ["soft_ce", "bce"])
def test_training_step_mixes_the_layer_it_drew_and_the_targets_with_the_same_lambda(loss_name, xy, make_resnet):
    """``loss()`` draws ``(k, lambda, pi)`` with :meth:`sample` and must mix exactly ``layers[k]`` with
    ``lambda`` and train on ``lambda y + (1 - lambda) y[pi]``: the loss equals the hand-written forward that
    mixes that layer, and neither mixing another layer nor swapping ``lambda`` and ``1 - lambda`` in the
    targets gives it. Seeds are tried until every eligible layer has been drawn."""
    x, y = xy
    m_tap, m_hand = make_resnet(), make_resnet()
    method = create_method("manifold_mixup", layers=[0, 1, 2, 3], loss=loss_name)   # input, act1, layer1, 2
    method.setup(m_tap)
    criterion = soft_target_cross_entropy if loss_name == "soft_ce" else bce_on_softmax
    drawn, swap_checked = set(), 0
    for seed in range(60):
        torch.manual_seed(seed)
        k, lam, perm = method.sample(8, CPU)
        torch.manual_seed(seed)
        loss, metrics = method.loss(m_tap, {"x": x, "y": y}, step=0)
        method.end_step()
        assert metrics["layer"] == k and metrics["lam"] == lam
        with torch.no_grad():
            outs = [resnet_hand_forward(m_hand, x, name, lam, perm) for name in method.layers]
            target = mixed_targets(y, 10, lam, perm)
            assert torch.allclose(loss, criterion(outs[k], target), atol=1e-5), (seed, method.layers[k])
            for j, out in enumerate(outs):                       # another layer's mix is told apart
                if j != k:
                    assert not torch.allclose(loss, criterion(out, target), atol=1e-4), (seed, j)
            if abs(lam - 0.5) > 0.05:                            # targets with 1 - lambda are told apart
                swapped = mixed_targets(y, 10, 1 - lam, perm)
                assert not torch.allclose(loss, criterion(outs[k], swapped), atol=1e-4)
                swap_checked += 1
        drawn.add(k)
        if len(drawn) == 4 and swap_checked >= 4:
            break
    assert drawn == {0, 1, 2, 3} and swap_checked >= 4


class CheckpointedNet(nn.Module):
    """A net whose middle block runs under activation checkpointing (re-run during backward)."""

    def __init__(self, use_ckpt: bool):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
        self.use_ckpt = use_ckpt

    def forward(self, x):
        h = self.stem(x)
        h = checkpoint(self.block, h, use_reentrant=False) if self.use_ckpt else self.block(h)
        return self.head(h)


def test_same_result_when_forward_runs_twice_and_under_checkpointing(xy):
    x, y = xy
    grads = []
    for use_ckpt in (False, True):
        net = CheckpointedNet(use_ckpt)
        method = create_method("manifold_mixup", layers=["block.1"])     # a layer inside the checkpoint
        method.setup(net)
        torch.manual_seed(5)
        loss, metrics = method.loss(net, {"x": x, "y": y}, step=0)
        again = soft_target_cross_entropy(net(x), mixed_targets(y, 10, metrics["lam"], torch.arange(8)))
        out1, out2 = net(x), net(x)
        assert torch.equal(out1, out2)                                   # same (k, lambda, pi) every forward
        loss.backward()                                                  # re-runs block.1's hook
        for cb in method.callbacks():
            cb(1, net)
        grads.append([p.grad.clone() for p in net.parameters()])
        assert not method.taps.modifiers
        del again
    for g0, g1 in zip(*grads):
        assert torch.allclose(g0, g1, atol=1e-6)
    assert grads[0][0].abs().sum() > 0                                   # the stem, before the mix


def test_mixed_soft_ce_is_lambda_weighted_ce_and_bce_formula():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5), torch.randint(5, (6,))
    lam, perm = 0.7, torch.randperm(6)
    t = mixed_targets(y, 5, lam, perm)
    ref = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
    assert torch.allclose(soft_target_cross_entropy(logits, t), ref, atol=1e-6)
    p = logits.softmax(-1)
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert torch.allclose(bce_on_softmax(logits, t), bce, atol=1e-5)


def test_lambda_is_beta_and_layer_uniform(make_resnet):
    torch.manual_seed(0)
    lams = torch.tensor([sample_lambda(2.0) for _ in range(4000)])
    assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - 1 / 20) < 0.006      # Beta(2,2): var 1/(4*5)
    lams = torch.tensor([sample_lambda(0.5) for _ in range(4000)])
    assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - 1 / 8) < 0.01        # Beta(.5,.5): var 1/(4*2)
    assert sample_lambda(0.0) == 1.0
    method = create_method("manifold_mixup")
    method.setup(make_resnet())
    assert method.layers == ["input", "layer1", "layer2"]           # the paper's S = {input, stage 1, 2}
    counts = torch.bincount(torch.tensor([method.sample(4, torch.device("cpu"))[0] for _ in range(3000)]), minlength=3)
    assert (counts - 1000).abs().max() < 120


def test_vit_tokens_mixed_at_a_block(xy):
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", in_chans=1, num_classes=10, img_size=28, patch_size=7).eval()
    x, _ = xy
    perm = torch.arange(7, -1, -1)
    method = create_method("manifold_mixup", layers=["blocks.1"])
    method.setup(vit)
    method.set_mix(0, 0.0, perm)                       # lambda 0 at a block: later blocks see the permuted tokens
    out = vit(x)
    method.end_step()
    assert torch.allclose(out, vit(x)[perm], atol=1e-5)
    assert float((out.detach() - vit(x).detach()).abs().max()) > 1e-3


BACKBONES = ["test_resnet", "convnext_atto"] + [n for n in ("preactresnet18",) if n in zoo.list_models()]


@pytest.mark.parametrize("name", BACKBONES)
def test_lambda_zero_at_every_default_layer_permutes_outputs(name):
    """In eval mode every network is per-example, so mixing with lambda = 0 at any eligible layer must
    give exactly the outputs of the permuted batch (zoo backbones join once registered)."""
    torch.manual_seed(0)
    m = zoo.create_model(name, in_chans=1, num_classes=10).eval()
    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([2, 0, 3, 1])
    method = create_method("manifold_mixup")
    method.setup(m)
    assert method.layers[0] == "input" and len(method.layers) == 3
    with torch.no_grad():
        plain = m(x)
        for k in range(len(method.layers)):
            method.set_mix(k, 0.0, perm)
            assert torch.allclose(m(x), plain[perm], atol=1e-4), method.layers[k]
            method.set_mix(k, 0.5, perm)
            assert not torch.allclose(m(x), plain, atol=1e-3)
        method.end_step()
        assert torch.allclose(m(x), plain)


def test_layer_indices_out_of_range_are_an_error_not_dropped():
    """layers=[7, 8] on a model with fewer default layers must not silently become Input Mixup (issue 18)."""
    import timm

    from zoo.methods import create_method
    from zoo.taps import default_layers

    model = timm.create_model("resnet18", num_classes=10)
    n = len(default_layers(model))
    with pytest.raises(ValueError, match="out of range"):
        create_method("manifold_mixup", layers=[n, n + 1]).setup(model)
    method = create_method("manifold_mixup", layers=[0, n - 1])
    method.setup(model)
    assert len(method.layers) == 2 and method.layers[0] == "input"


def test_remove_detaches_every_hook_and_the_method_then_refuses_to_run(xy, make_resnet):
    x, y = xy
    model = make_resnet()
    method = create_method("manifold_mixup")
    method.setup(model)
    assert any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    method.remove()
    method.remove()                                            # twice is fine
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match=r"ManifoldMixup\.setup\(model\) must be called with this model"):
        method.loss(model, {"x": x, "y": y}, 0)
