"""IRL (irl_invariant_representation_learning.txt, eq. 1-2) and the shared noise models of zoo.augment:
the distance d(u, v), the special cases (1,0,0) / (0,1,0) / (0.5,0.5,0) against plain losses, the distance
term and the semi-supervised variant against manual computations, FGSM noise, and training on the
embedded digits above chance."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo  # noqa: F401
from zoo import augment as A
from zoo.methods import create_method
from zoo.methods.irl import IRL, irl_distance
from zoo.robustness import fgsm_attack
from zoo.taps import LayerTaps


class Net(nn.Module):
    """Small CNN without BatchNorm, so a sample's output does not depend on the rest of the batch."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.block2(self.block1(x)))


@pytest.fixture
def small_batch(image_batch):
    """Seeded 12x12 batches for :class:`Net`: ``small_batch(n=6, nu=0, seed=0)``."""
    return lambda n=6, nu=0, seed=0: image_batch(n, size=12, seed=seed, unlabeled=nu)


def shrink(x, g):                       # a deterministic "noise model"
    return 0.8 * x + 0.05


# ------------------------------------------------------------------------------------------------ distance
def test_distance_is_squared_l2_minus_lambda_cosine():
    u, v = torch.randn(5, 3, 4), torch.randn(5, 3, 4)
    uf, vf = u.flatten(1), v.flatten(1)
    for lam in (0.0, 0.5, 2.0):
        manual = torch.stack([((uf[i] - vf[i]) ** 2).sum() - lam * (uf[i] @ vf[i]) / (uf[i].norm() * vf[i].norm())
                              for i in range(5)])
        assert torch.allclose(irl_distance(u, v, lam), manual, atol=1e-5)
        per_feature = (((uf - vf) ** 2).sum(1) - lam * F.cosine_similarity(uf, vf)) / 12
        assert torch.allclose(irl_distance(u, v, lam, "mean"), per_feature, atol=1e-5)
    assert torch.allclose(irl_distance(u, v, 1.0), irl_distance(v, u, 1.0))            # symmetric
    assert torch.allclose(irl_distance(u, u, 0.7), torch.full((5,), -0.7))              # minimum at u = v
    assert torch.allclose(irl_distance(u, 3 * u, 1.0), 4 * (uf ** 2).sum(1) - 1.0)     # same angle: only L2
    with pytest.raises(ValueError, match="same shape"):
        irl_distance(u, v[:2])
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean'"):
        irl_distance(u, v, reduction="max")


def test_default_distance_keeps_the_papers_balance_of_l2_and_cosine():
    """``"mean"`` (the default) is the paper's ``d`` divided by the feature count: both terms scaled alike,
    so the squared L2 term outweighs the cosine term exactly as much as in the printed ``d``."""
    m = IRL()
    assert m.dist_reduction == "mean" and m.lam == 1.0
    g = torch.Generator().manual_seed(0)
    for shape in ((4, 3, 5, 5), (4, 96), (4, 10)):
        u = torch.randn(shape, generator=g)
        v = u + 0.5 * torch.randn(shape, generator=g)
        D = u[0].numel()
        assert torch.allclose(irl_distance(u, v, 1.0, "mean") * D, irl_distance(u, v, 1.0, "sum"), rtol=1e-5)
        uf, vf = u.flatten(1), v.flatten(1)
        l2, cos = ((uf - vf) ** 2).sum(1) / D, F.cosine_similarity(uf, vf) / D
        assert torch.allclose(irl_distance(u, v, 1.0, "mean"), l2 - cos, atol=1e-6)


# ------------------------------------------------------------------------------------------- special cases
def test_presets_and_special_cases_equal_plain_losses(small_batch):
    torch.manual_seed(0)
    model, b = Net(), small_batch()
    assert IRL(preset="irl_batching").hparams["gamma"] == 0.0 and IRL().hparams["alpha"] == 0.5
    assert IRL(preset="irl", gamma=0.3).gamma == 0.3                                       # explicit wins
    std = IRL(preset="standard", seed=1)
    std.setup(model)
    assert torch.allclose(std.loss(model, b, 0)[0], F.cross_entropy(model(b["x"]), b["y"]))
    aug = IRL(preset="augment", seed=1, K=3)
    aug.setup(model)
    noisy = A.in_domain_noise(b["x"].repeat(3, 1, 1, 1), torch.Generator().manual_seed(1))
    assert torch.allclose(aug.loss(model, b, 0)[0], F.cross_entropy(model(noisy), b["y"].repeat(3)), atol=1e-6)
    bat = IRL(preset="irl_batching", seed=1)
    bat.setup(model)
    noisy = A.in_domain_noise(b["x"], torch.Generator().manual_seed(1))
    ref = 0.5 * F.cross_entropy(model(b["x"]), b["y"]) + 0.5 * F.cross_entropy(model(noisy), b["y"])
    assert torch.allclose(bat.loss(model, b, 0)[0], ref, atol=1e-6)


def test_batching_puts_originals_and_copies_in_one_forward(small_batch, make_resnet):
    """With BatchNorm, IRL batching = the loss on the concatenated batch (shared batch statistics)."""
    model = make_resnet()
    b = small_batch(8)
    m = IRL(preset="irl_batching", noise=shrink)
    m.setup(model)
    logits = model(torch.cat([b["x"], shrink(b["x"], None)]))
    ref = 0.5 * F.cross_entropy(logits[:8], b["y"]) + 0.5 * F.cross_entropy(logits[8:], b["y"])
    assert torch.allclose(m.loss(model, b, 0)[0], ref, atol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_distance_term_matches_manual_eq2_with_per_layer_gamma(reduction, small_batch):
    torch.manual_seed(0)
    model, b, K = Net(), small_batch(5), 2
    weights = [0.3, 2.0, 0.5]
    m = IRL(alpha=0.2, beta=0.7, gamma=1.5, K=K, layers=["block1", "block2", "logits"], layer_weights=weights,
            lam=0.4, dist_reduction=reduction, noise="gaussian", noise_kwargs={"std": 0.2}, seed=3)
    m.setup(model)
    loss, metrics = m.loss(model, b, 0)
    m.remove()
    noisy = A.gaussian_noise(b["x"].repeat(K, 1, 1, 1), 0.2, torch.Generator().manual_seed(3))
    with LayerTaps(model, ["block1", "block2"]) as taps:
        out = model(b["x"])
        clean = {"block1": taps["block1"], "block2": taps["block2"], "logits": out}
        dist, per_copy = 0.0, []
        for k in range(K):
            xk = noisy[k * 5:(k + 1) * 5]
            out_k = model(xk)
            acts_k = {"block1": taps["block1"], "block2": taps["block2"], "logits": out_k}
            per_copy.append(acts_k)
            for w, name in zip(weights, ["block1", "block2", "logits"]):
                dist = dist + w * irl_distance(clean[name], acts_k[name], 0.4, reduction).mean() / K
    ce = F.cross_entropy(out, b["y"])
    ce_noise = F.cross_entropy(model(noisy), b["y"].repeat(K))
    assert torch.allclose(loss, 0.2 * ce + 0.7 * ce_noise + 1.5 * dist, rtol=1e-5, atol=1e-5)
    assert metrics["dist"] == pytest.approx(float(dist.detach()), rel=1e-5)
    assert metrics["ce"] == pytest.approx(float(ce.detach()), rel=1e-5)
    assert metrics["ce_noise"] == pytest.approx(float(ce_noise.detach()), rel=1e-5)
    for name in ("block1", "block2", "logits"):                   # per-layer means, before gamma_l
        ref = sum(irl_distance(clean[name], acts[name], 0.4, reduction).mean() for acts in per_copy) / K
        assert metrics[f"dist_{name}"] == pytest.approx(float(ref), rel=1e-4), name


def test_default_layers_are_last_four_stages_and_logits(make_resnet):
    model = make_resnet()
    m = IRL()
    m.setup(model)
    assert m.layers == ["layer1", "layer2", "layer3", "layer4", "logits"]
    m.remove()
    with pytest.raises(ValueError, match="layer_weights has 2 entries for 5 layers"):
        IRL(layer_weights=[1.0, 2.0]).setup(model)
    for bad, match in [(dict(alpha=0, beta=0, gamma=0), "must be >= 0 and not all 0"),
                       (dict(gamma=-1.0), "must be >= 0 and not all 0"), (dict(K=0), "K must be >= 1"),
                       (dict(preset="nope"), "preset must be one of"),
                       (dict(dist_reduction="max"), "dist_reduction must be 'sum' or 'mean'"),
                       (dict(semi_supervised=True, gamma=0), "gamma must be > 0"),
                       (dict(layers=[]), "layers must name at least one layer")]:
        with pytest.raises(ValueError, match=match):
            IRL(**bad)
    IRL(alpha=0, beta=0, gamma=0.5)                                # only the distance term: allowed
    with pytest.raises(ValueError, match="must be called before loss"):
        IRL().loss(model, {"x": torch.rand(2, 1, 28, 28), "y": torch.tensor([0, 1])}, 0)
    m = IRL(layers="layer2")                                        # one name for one layer
    m.setup(model)
    assert m.layers == ["layer2"]
    with pytest.raises(ValueError, match="different model"):
        m.loss(Net(), {"x": torch.rand(2, 1, 12, 12), "y": torch.tensor([0, 1])}, 0)
    m.remove()
    assert m.taps is None and m.extra_state() == {"irl_rng": m.rng}


def test_semi_supervised_unlabeled_get_only_the_distance_term(small_batch):
    torch.manual_seed(0)
    model, b = Net(), small_batch(4, nu=6)
    m = IRL(semi_supervised=True, layers=["block2", "logits"], noise=shrink)
    assert m.needs_unlabeled and create_method("irl", semi_supervised=True).needs_unlabeled
    assert not create_method("irl").needs_unlabeled
    m.setup(model)
    loss, metrics = m.loss(model, b, 0)
    with LayerTaps(model, ["block2"]) as taps:
        d = 0
        clean = torch.cat([b["x"], b["x_u"]])
        out = model(clean)
        h = taps["block2"]
        out_n = model(shrink(clean, None))
        d = irl_distance(h, taps["block2"], 1.0, "mean") + irl_distance(out, out_n, 1.0, "mean")
    ref = (0.5 * F.cross_entropy(out[:4], b["y"]) + 0.5 * F.cross_entropy(out_n[:4], b["y"])
           + d[:4].mean() + d[4:].mean())
    assert torch.allclose(loss, ref, atol=1e-5) and metrics["dist_u"] == pytest.approx(float(d[4:].mean().detach()), rel=1e-5)
    with pytest.raises(ValueError, match="x_u"):
        m.loss(model, small_batch(4), 0)


def test_adversarial_noise_is_fgsm_against_the_current_model(small_batch):
    torch.manual_seed(0)
    model, b = Net(), small_batch(6, nu=3)
    m = IRL(noise="adversarial", eps=0.1, K=2)
    m.setup(model)
    adv = m.noisy_copies(model, b["x"], b["y"])
    ref = fgsm_attack(model, b["x"], b["y"], 0.1)
    assert torch.allclose(adv, ref.repeat(2, 1, 1, 1))
    assert (adv - b["x"].repeat(2, 1, 1, 1)).abs().max() <= 0.1 + 1e-6
    pseudo = model(b["x_u"]).argmax(-1)                        # unlabeled: the model's own predictions
    assert torch.allclose(m.noisy_copies(model, b["x_u"], None), fgsm_attack(model, b["x_u"], pseudo, 0.1).repeat(2, 1, 1, 1))
    semi = IRL(noise="adversarial", semi_supervised=True)
    semi.setup(model)
    loss, _ = semi.loss(model, b, 0)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------- augment
@pytest.mark.parametrize("name", sorted(A.NOISE_MODELS))
@pytest.mark.parametrize("chans", [1, 3])
def test_noise_models_are_seeded_batched_and_in_range(name, chans):
    x = torch.rand(16, chans, 10, 10)
    fn = A.get_noise(name)
    y1, y2 = fn(x, torch.Generator().manual_seed(5)), fn(x, torch.Generator().manual_seed(5))
    y3 = fn(x, torch.Generator().manual_seed(6))
    assert y1.shape == x.shape and torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert y1.min() >= 0 and y1.max() <= 1
    same = fn(x[:1].repeat(16, 1, 1, 1), torch.Generator().manual_seed(5))
    assert (same - same[:1]).abs().amax((1, 2, 3)).gt(1e-4).sum() >= 14     # each image its own draw


def test_photometric_jitters_match_their_definitions():
    x, g = torch.rand(8, 3, 6, 6), torch.Generator()
    for fn in (A.brightness_jitter, A.contrast_jitter, A.saturation_jitter, A.hue_jitter, A.gamma_jitter):
        assert torch.allclose(fn(x, 0.0, g), x, atol=1e-5)                          # zero scale: identity
    y = A.hue_jitter(x, 0.5, torch.Generator().manual_seed(0))
    assert torch.allclose(A._luma(y), A._luma(x), atol=1e-4)                          # hue keeps luma
    a = 1 + A.uniform(8, -0.5, 0.5, torch.Generator().manual_seed(1))
    assert torch.allclose(A.brightness_jitter(x, 0.5, torch.Generator().manual_seed(1)), x * a.view(8, 1, 1, 1))
    c = A.contrast_jitter(x, 0.5, torch.Generator().manual_seed(1))
    gray = (x * torch.tensor(A.LUMA).view(1, 3, 1, 1)).sum(1).mean((1, 2)).view(8, 1, 1, 1)
    assert torch.allclose(c, a.view(8, 1, 1, 1) * x + (1 - a.view(8, 1, 1, 1)) * gray, atol=1e-6)
    p = A.pca_lighting(x, 0.1, generator=torch.Generator().manual_seed(2)) - x        # constant shift per image
    assert torch.allclose(p, p[:, :, :1, :1].expand_as(p), atol=1e-6)
    t = A.truncated_normal(20000, 0.5, 1.5, torch.Generator().manual_seed(0))
    assert t.min() >= 0.5 and t.max() <= 1.5 and abs(float(t.mean()) - 1.0) < 0.01
    assert 0.2 < float(t.std()) < 0.24                                                 # 0.25 * 0.88 (cut at 2 std)
    assert torch.allclose(A.random_affine(x, 0, 0, 0, 0), x, atol=1e-5)


# -------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_irl_trains_on_digits_above_chance_supervised_and_semi_supervised(run_classify, chance):
    common = ["--steps", "80", "--evaluations", "clean", "--batch-size", "32"]
    res = run_classify("--method", "irl", *common, "--method-kwargs", '{"K": 1, "noise": "in_domain"}', out="a")
    assert res["irl"]["acc"] > 3 * chance and res["irl"]["_hparams"]["gamma"] == 1.0
    res = run_classify("--method", "irl", "--labels-per-class", "20", "--unlabeled-batch-size", "32", *common,
                       "--method-kwargs", '{"semi_supervised": true, "noise": "out_of_domain"}', out="b")
    assert res["irl"]["acc"] > 3 * chance


def test_noise_generator_state_is_checkpointed():
    m = IRL(seed=7)
    m.setup(Net())
    state = {k: v.state_dict() for k, v in m.extra_state().items()}
    first = A.in_domain_noise(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), m.rng.generator)
    m.rng.load_state_dict(state["irl_rng"])
    again = A.in_domain_noise(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), m.rng.generator)
    assert torch.equal(first, again)


# --------------------------------------------------------------------------------- which terms are computed
def test_first_tensor_finds_the_activation_in_nested_outputs():
    from zoo.methods.irl import first_tensor
    t = torch.rand(2, 3)
    assert first_tensor(t) is t
    assert first_tensor((t, None)) is t and first_tensor([None, (t,)]) is t        # e.g. (output, state)
    assert first_tensor({"state": None, "out": t}) is t
    for bad, kind in [(None, "NoneType"), ({"a": None}, "dict"), ((1, "x"), "tuple")]:
        with pytest.raises(ValueError, match=f"layer output holds no tensor: {kind}"):
            first_tensor(bad)


def test_cosine_term_is_exact_for_small_activations():
    """``cos(u, v)`` is scale-free: activations of norm << 1 (late layers, per-feature scales) still get
    ``-lam`` at equal directions, not a cosine shrunk by a norm floor."""
    u = 1e-3 * torch.randn(4, 6)
    assert torch.allclose(irl_distance(u, 2 * u, 1.0), (u ** 2).sum(1) - 1.0, atol=1e-7)


def test_weights_must_be_non_negative_and_noise_state_exists_only_after_setup():
    for bad in (dict(alpha=-1.0), dict(beta=-1.0), dict(gamma=-2.0)):
        with pytest.raises(ValueError, match="must be >= 0 and not all 0"):
            IRL(**bad)
    assert IRL().extra_state() == {}                                   # nothing to checkpoint before setup


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_logits_only_distance_and_no_taps_without_distance(small_batch):
    torch.manual_seed(0)
    model, b = Net(), small_batch(5)
    m = IRL(layers=["logits"], noise=shrink)                           # d on the model output only
    m.setup(model)
    assert m.layers == ["logits"] and _hooks(model) == 0
    loss, metrics = m.loss(model, b, 0)
    out, out_n = model(b["x"]), model(shrink(b["x"], None))
    dist = irl_distance(out, out_n, 1.0, "mean").mean()
    ref = 0.5 * F.cross_entropy(out, b["y"]) + 0.5 * F.cross_entropy(out_n, b["y"]) + dist
    assert torch.allclose(loss, ref, atol=1e-5) and metrics["dist_logits"] == pytest.approx(float(dist), rel=1e-5)
    m.remove()
    bat = IRL(preset="irl_batching", layers=["block1", "logits"], noise=shrink)    # gamma = 0: nothing captured
    bat.setup(model)
    assert _hooks(model) == 0
    other = Net()                                                     # taps unused: any model can be trained
    bat.loss(other, b, 0)
    assert bat.taps.activations == {}


def test_only_the_needed_parts_go_through_batchnorm(small_batch, make_resnet):
    """BatchNorm sees exactly the images of the terms with non-zero weight: the clean batch for (1, 0, 0),
    the noisy copies for (0, 1, 0), both for the distance term."""
    b = small_batch(6)
    model = make_resnet()
    for preset, x_in in [("standard", b["x"]), ("augment", shrink(b["x"], None))]:
        m = IRL(preset=preset, noise=shrink)
        m.setup(model)
        assert torch.allclose(m.loss(model, b, 0)[0], F.cross_entropy(model(x_in), b["y"]), atol=1e-5), preset
        m.remove()
    m = IRL(alpha=0, beta=0, gamma=0.5, layers=["layer4", "logits"], noise=shrink)    # distance only
    m.setup(model)
    loss, _ = m.loss(model, b, 0)
    m.remove()
    with LayerTaps(model, ["layer4"]) as taps:
        out = model(torch.cat([b["x"], shrink(b["x"], None)]))
        h = taps["layer4"]
    d = irl_distance(h[:6], h[6:], 1.0, "mean") + irl_distance(out[:6], out[6:], 1.0, "mean")
    assert torch.allclose(loss, 0.5 * d.mean(), atol=1e-5)


def test_supervised_irl_ignores_unlabeled_images_in_the_batch(small_batch):
    torch.manual_seed(0)
    model, b = Net(), small_batch(4, nu=5)
    m = IRL(noise=shrink, layers=["block2", "logits"])
    m.setup(model)
    with_u, _ = m.loss(model, b, 0)
    without, _ = m.loss(model, {"x": b["x"], "y": b["y"]}, 0)
    assert torch.allclose(with_u, without)


@pytest.mark.parametrize("semi", [False, True])
def test_labeled_copies_are_attacked_with_their_labels(semi, small_batch):
    """Adversarial noise: FGSM with the true label for labeled images (unlabeled: the model's prediction)."""
    torch.manual_seed(0)
    model, b = Net(), small_batch(6, nu=3 if semi else 0)
    with torch.no_grad():
        pred = model(b["x"]).argmax(-1)
    b["y"] = (pred + 1) % 10                                           # labels != predictions
    m = IRL(noise="adversarial", eps=0.1, semi_supervised=semi, layers=["logits"])
    m.setup(model)
    _, metrics = m.loss(model, b, 0)
    adv = fgsm_attack(model, b["x"], b["y"], 0.1)
    assert metrics["ce_noise"] == pytest.approx(float(F.cross_entropy(model(adv), b["y"])), rel=1e-5)


def test_accuracy_metric_is_on_the_clean_labeled_images(small_batch):
    torch.manual_seed(0)
    model, b = Net(), small_batch(8)
    with torch.no_grad():
        pred = model(b["x"]).argmax(-1)
    b["y"] = torch.where(torch.arange(8) < 6, pred, (pred + 1) % 10)     # 6 of 8 right
    m = IRL(noise=shrink)
    m.setup(model)
    assert m.loss(model, b, 0)[1]["acc"] == 0.75


def test_default_layers_are_the_last_four_of_more_stages():
    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            for i in range(1, 6):
                setattr(self, f"block{i}", nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            for i in range(1, 6):
                x = getattr(self, f"block{i}")(x)
            return self.head(x)

    m = IRL()
    m.setup(Deep())
    assert m.layers == ["block2", "block3", "block4", "block5", "logits"]
