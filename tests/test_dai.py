"""Data augmentation invariance (data_augmentation_invariance.txt, eq. 1-4) and the invariance score (eq. 2):
the matrix-form loss against a brute-force double loop, its batch-size independence, the exponential layer
weights, the total loss against a manual computation, the score against its definition (1 for identical
activations), the paper's scoring protocol (ranges halved, drawn at their ends), and training on the
embedded digits above chance with the score as a harness column."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo  # noqa: F401
from zoo import augment as A
from zoo import robustness as R
from zoo.methods import create_method
from zoo.methods.dai import DAI, dai_invariance_loss, exponential_layer_weights, invariance_scores
from zoo.robustness import EvalContext, evaluate_robustness, list_evaluations
from zoo.taps import LayerTaps


def d(a, i, j):
    """Eq. 1: mean square difference of two samples' activations."""
    return ((a[i] - a[j]) ** 2).mean()


def brute_force_loss(a, groups, seed_reduction="mean"):
    """Eq. 3 with explicit double loops over the pairs of each seed set S_k and of the batch B."""
    a = a.flatten(1)
    per_seed = []
    for k in sorted(set(groups.tolist())):
        S = [i for i in range(len(a)) if groups[i] == k]
        per_seed.append(sum(d(a, i, j) for i in S for j in S) / len(S) ** 2)
    num = sum(per_seed) / (len(per_seed) if seed_reduction == "mean" else 1)
    B = len(a)
    den = sum(d(a, i, j) for i in range(B) for j in range(B)) / B ** 2
    return num / den


@pytest.mark.parametrize("seed_reduction", ["mean", "sum"])
def test_loss_equals_brute_force_double_loop_with_gradients(seed_reduction):
    torch.manual_seed(0)
    a = torch.randn(14, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([5, 2, 2, 9, 5, 5, 2, 9, 7, 7, 7, 7, 5, 2])     # uneven |S_k|, arbitrary ids
    fast = dai_invariance_loss(a, groups, seed_reduction)
    (g_fast,) = torch.autograd.grad(fast, a)
    slow = brute_force_loss(a, groups, seed_reduction)
    (g_slow,) = torch.autograd.grad(slow, a)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)
    assert torch.allclose(g_fast.double(), g_slow, rtol=1e-4, atol=1e-7)
    blocks = torch.arange(5).repeat(3)                                       # copy-major: M = 3 blocks
    b = torch.randn(15, 3, 2, 2, dtype=torch.float64)
    assert dai_invariance_loss(b, 3, seed_reduction).item() == pytest.approx(
        brute_force_loss(b, blocks, seed_reduction).item(), rel=1e-5)


def test_loss_does_not_depend_on_batch_size_or_m_and_is_zero_for_invariant_features():
    torch.manual_seed(0)
    seeds = torch.randn(6, 10)
    M = 3
    a = seeds.repeat(M, 1) + 0.1 * torch.randn(18, 10)
    g = torch.arange(6).repeat(M)
    # the batch twice, as new seeds: same per-seed spread and same batch spread
    a2, g2 = torch.cat([a, a]), torch.cat([g, g + 6])
    assert dai_invariance_loss(a2, g2).item() == pytest.approx(dai_invariance_loss(a, g).item(), rel=1e-5)
    assert dai_invariance_loss(seeds.repeat(M, 1), g).item() == pytest.approx(0.0, abs=1e-6)
    assert dai_invariance_loss(a, g, "sum").item() == pytest.approx(6 * dai_invariance_loss(a, g).item(), rel=1e-5)
    with pytest.raises(ValueError, match="18 activations but 5 group ids"):
        dai_invariance_loss(a, g[:5])
    with pytest.raises(ValueError, match="not 4 equal blocks"):
        dai_invariance_loss(a, 4)
    with pytest.raises(ValueError, match="seed_reduction must be"):
        dai_invariance_loss(a, g, "max")


def test_exponential_layer_weights_sum_to_alpha_last_is_ten_times_first():
    with pytest.raises(ValueError, match="at least one layer"):
        exponential_layer_weights(0)
    assert exponential_layer_weights(3, 0.3, 4.0) == pytest.approx([0.3 / 7, 0.6 / 7, 1.2 / 7])
    for n in (1, 2, 4, 7):
        w = exponential_layer_weights(n, 0.1)
        assert sum(w) == pytest.approx(0.1) and len(w) == n
        if n > 1:
            assert w[-1] / w[0] == pytest.approx(10.0)
            ratios = [w[i + 1] / w[i] for i in range(n - 1)]
            assert max(ratios) == pytest.approx(min(ratios))                   # geometric: exponential in l


def test_method_loss_is_weighted_ce_plus_layer_losses_on_m_augmentations(make_resnet):
    model = make_resnet()
    x, y = torch.rand(5, 1, 28, 28), torch.randint(10, (5,))
    m = DAI(alpha=0.1, M=3, seed=4)
    m.setup(model)
    assert m.layers == ["layer1", "layer2", "layer3", "layer4"]
    loss, metrics = m.loss(model, {"x": x, "y": y}, 0)
    m.remove()
    xa = A.dai_augment(x.repeat(3, 1, 1, 1), torch.Generator().manual_seed(4))
    groups = torch.arange(5).repeat(3)
    with LayerTaps(model, m.layers) as taps:
        logits = model(xa)
        ref = 0.9 * F.cross_entropy(logits, y.repeat(3))
        for w, name in zip(exponential_layer_weights(4, 0.1), m.layers):
            ref = ref + w * brute_force_loss(taps[name], groups)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    # alpha = 0: in-batch augmentation only; a batch with "group" ids is used as given
    plain = DAI(alpha=0.0, M=3, seed=4)
    plain.setup(model)
    assert plain.loss(model, {"x": x, "y": y}, 0)[0].item() == pytest.approx(
        F.cross_entropy(model(xa), y.repeat(3)).item(), rel=1e-5)
    given = DAI(alpha=0.1, M=3)
    given.setup(model)
    l2, _ = given.loss(model, {"x": xa, "y": y.repeat(3), "group": groups}, 0)
    assert l2.item() == pytest.approx(ref.item(), rel=1e-4)
    keep = DAI(M=2, keep_batch_size=True, seed=0)
    keep.setup(model)
    xk, yk, gk = keep.augment_batch(torch.rand(8, 1, 28, 28), torch.arange(8))
    assert xk.shape[0] == 8 and torch.equal(yk, torch.tensor([0, 1, 2, 3] * 2)) and torch.equal(gk, yk)
    for bad, match in [(dict(alpha=1.0), r"alpha must be in \[0, 1\)"), (dict(alpha=-0.1), "alpha must be in"),
                       (dict(M=0), "M must be >= 1"), (dict(seed_reduction="x"), "seed_reduction must be"),
                       (dict(ratio=0), "ratio must be > 0")]:
        with pytest.raises(ValueError, match=match):
            DAI(**bad)
    with pytest.raises(ValueError, match="layer_weights has 1 entries"):
        DAI(layer_weights=[0.1]).setup(model)
    with pytest.raises(ValueError, match="must be called before loss"):
        DAI().loss(model, {"x": x, "y": y}, 0)
    one = DAI(layers="layer3", layer_weights=[0.05])
    one.setup(model)
    assert one.layers == ["layer3"] and one.weights == [0.05] and list(one.extra_state()) == ["dai_rng"]


# ------------------------------------------------------------------------------------------ invariance score
def test_invariance_score_is_one_for_identical_activations_and_matches_eq2(make_resnet):
    model = make_resnet().eval()
    x = torch.rand(12, 1, 28, 28)
    same = invariance_scores(model, x, lambda xb: xb, batch_size=5)
    assert list(same) == ["input", "act1", "layer1", "layer2", "layer3", "layer4", "logits"]
    for s in same.values():
        assert torch.allclose(s, torch.ones(12), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    xt = A.gaussian_noise(x, 0.2, g)
    scores = invariance_scores(model, x, lambda xb: xt, batch_size=12)       # one chunk: G(x) = xt
    with LayerTaps(model, ["layer2"], detach=True) as taps, torch.no_grad():
        model(x)
        a = taps["layer2"].flatten(1)
        model(xt)
        at = taps["layer2"].flatten(1)
    den = sum(d(a, j, k) for j in range(12) for k in range(12)) / 144
    ref = torch.stack([1 - ((a[i] - at[i]) ** 2).mean() / den for i in range(12)])
    assert torch.allclose(scores["layer2"], ref, atol=1e-5)


def test_invariance_is_a_registered_evaluation_for_any_model():
    assert "invariance" in list_evaluations()

    class Own(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.body(x))

    out = evaluate_robustness(Own(), torch.rand(20, 1, 8, 8), torch.randint(3, (20,)), ["invariance"],
                              EvalContext(seed=1, options={"invariance": {"noise": "gaussian",
                                                                          "noise_kwargs": {"std": 0.0}}}))
    assert list(out) == ["inv/0", "inv/1", "inv/2", "inv/3"]               # input, body, head, logits
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in out.values())     # std 0: identical inputs

    class RowGRU(nn.Module):                  # a layer whose output is a tuple (output, hidden state)
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(8, 16, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            out, _ = self.rnn(x.squeeze(1))
            return self.head(out[:, -1])

    out = evaluate_robustness(RowGRU(), torch.rand(20, 1, 8, 8), torch.randint(3, (20,)), ["invariance"],
                              EvalContext(seed=1, options={"invariance": {"noise": "gaussian"}}))
    assert list(out) == ["inv/0", "inv/1", "inv/2", "inv/3"] and all(v < 1.0 for v in out.values())


# ------------------------------------------------------------------------------- the paper's scoring protocol
def test_halved_extremes_draws_the_two_ends_of_the_halved_range():
    v = A.halved_extremes(4000, 0.5, 1.5, torch.Generator().manual_seed(0))
    ends = torch.tensor([0.75, 1.25])
    assert ((v[:, None] - ends).abs().min(1).values < 1e-6).all()          # centre 1 +- range / 4 only
    assert abs(float((v > 1).float().mean()) - 0.5) < 0.03                 # each end with probability 1/2
    s = A.halved_extremes(1000, -22.5, 22.5, torch.Generator().manual_seed(1))
    assert set(s.unique().tolist()) == {-11.25, 11.25}
    with pytest.raises(ValueError):
        A.halved_extremes(3, 1.0, 0.0)


def test_dai_eval_transform_is_the_training_scheme_at_half_range_ends():
    """Appendix A: the score uses the training transformations with every range halved and one of its two
    ends drawn; checked one parameter at a time (no clipping)."""
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.3 * torch.rand(64, 1, 12, 12, generator=g)               # away from 0 and 1
    off = dict(rotation=0.0, shift=0.0, shear=0.0, zoom=0.0, contrast=(1.0, 1.0), brightness=0.0, clip=None)
    out = A.dai_eval_augment(x, torch.Generator().manual_seed(1), **{**off, "brightness": 0.25})
    delta = (out - x).flatten(1)
    assert torch.allclose(delta, delta[:, :1].expand_as(delta), atol=1e-6)     # one shift per image
    assert set(delta[:, 0].mul(1000).round().div(1000).unique().tolist()) == {-0.125, 0.125}
    out = A.dai_eval_augment(x, torch.Generator().manual_seed(2), **{**off, "contrast": (0.5, 1.5)})
    m = x.mean((1, 2, 3), keepdim=True)
    c = ((out - m) / (x - m)).flatten(1)
    assert set(c.median(1).values.mul(1000).round().div(1000).unique().tolist()) == {0.75, 1.25}
    out = A.dai_eval_augment(x, torch.Generator().manual_seed(3), **{**off, "rotation": 22.5})
    plus, minus = R.rotate(x, 11.25), R.rotate(x, -11.25)
    is_plus = (out - plus).flatten(1).abs().amax(1) < 1e-5
    is_minus = (out - minus).flatten(1).abs().amax(1) < 1e-5
    assert (is_plus ^ is_minus).all() and is_plus.any() and is_minus.any()
    # all parameters at once: the same generator stream as dai_augment with the halved-extremes sampler
    full = A.dai_eval_augment(x, torch.Generator().manual_seed(4))
    ref = A.dai_augment(x, torch.Generator().manual_seed(4), sampler=A.halved_extremes)
    assert torch.equal(full, ref) and not torch.equal(full, A.dai_augment(x, torch.Generator().manual_seed(4)))
    assert A.get_noise("dai_eval") is not None


def test_invariance_evaluation_uses_the_papers_protocol_by_default(make_resnet):
    model = make_resnet().eval()
    x, y = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.randint(10, (24,))
    ctx = EvalContext(seed=2, batch_size=10)
    cols = evaluate_robustness(model, x, y, ["invariance"], ctx)
    g = ctx.generator(6)
    ref = invariance_scores(model, x, lambda xb: A.dai_eval_augment(xb, g), batch_size=10)
    assert list(cols) == [f"inv/{i}" for i in range(len(ref))]
    for (col, v), s in zip(cols.items(), ref.values()):
        assert v == pytest.approx(float(s.mean()), abs=1e-6), col
    train_dist = evaluate_robustness(model, x, y, ["invariance"],
                                     EvalContext(seed=2, batch_size=10, options={"invariance": {"noise": "dai"}}))
    assert train_dist["inv/6"] != pytest.approx(cols["inv/6"], abs=1e-4)


# -------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_dai_trains_on_digits_above_chance_and_harness_shows_invariance(run_classify, tmp_path, chance):
    res = run_classify("--method", "dai", "--steps", "80", "--evaluations", "clean", "invariance",
                       "--batch-size", "32", "--eval-size", "200")
    r = res["dai"]
    assert r["acc"] > 3 * chance and r["_hparams"]["alpha"] == 0.1 and r["_hparams"]["M"] == 2
    assert {"inv/0", "inv/6"} <= set(r) and all(v <= 1.0 for k, v in r.items() if k.startswith("inv/"))
    assert "inv/6" in (tmp_path / "results.md").read_text()
    assert create_method("dai").needs_unlabeled is False


# ------------------------------------------------------------------------------------------ edge cases of eq. 3
def test_loss_is_scale_free_and_zero_with_one_augmentation_per_seed():
    """Eq. 3 is a ratio of two mean distances: multiplying the activations by any c > 0 leaves it unchanged
    (tiny activations included); with ``M = 1`` every ``S_k`` is one sample and the loss is 0."""
    a = torch.randn(12, 5, dtype=torch.float64)
    g = torch.arange(4).repeat(3)
    for c in (1e-4, 1e3):
        assert dai_invariance_loss(c * a, g).item() == pytest.approx(dai_invariance_loss(a, g).item(), rel=1e-6)
        assert dai_invariance_loss(c * a, 3).item() == pytest.approx(dai_invariance_loss(a, 3).item(), rel=1e-6)
    assert dai_invariance_loss(a, 1).item() == 0.0
    with pytest.raises(ValueError, match="a batch of 12 is not 5 equal blocks"):
        dai_invariance_loss(a, 5)


def test_papers_weights_by_default_and_any_positive_ratio(make_resnet):
    """``sum_l alpha^(l) = 0.1`` and ``alpha^(L) = 10 alpha^(1)`` (eq. 4) unless told otherwise."""
    assert sum(exponential_layer_weights(4)) == pytest.approx(0.1)
    model = make_resnet()
    for kw, ratio in [({}, 10.0), (dict(ratio=4.0), 4.0), (dict(ratio=1.0), 1.0), (dict(ratio=0.5), 0.5)]:
        m = DAI(**kw)
        m.setup(model)
        assert sum(m.weights) == pytest.approx(0.1) and m.weights[-1] / m.weights[0] == pytest.approx(ratio), kw
        m.remove()
    DAI(M=1)                                                           # one augmentation per seed: allowed


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_method_options_reach_the_loss(make_resnet):
    model = make_resnet()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(10, (4,))
    # augment_kwargs go to the augmentation
    m = DAI(augment="gaussian", augment_kwargs={"std": 0.05}, M=2, seed=1)
    m.setup(model)
    xa, _, _ = m.augment_batch(x, y)
    assert torch.equal(xa, A.gaussian_noise(x.repeat(2, 1, 1, 1), 0.05, torch.Generator().manual_seed(1)))
    m.remove()
    # seed_reduction="sum": eq. 3 as printed, in the method's loss too
    m = DAI(alpha=0.1, M=2, seed_reduction="sum", layers=["layer3"], layer_weights=[0.1], seed=2)
    m.setup(model)
    loss, metrics = m.loss(model, {"x": x, "y": y}, 0)
    m.remove()
    xa = A.dai_augment(x.repeat(2, 1, 1, 1), torch.Generator().manual_seed(2))
    with LayerTaps(model, ["layer3"]) as taps:
        logits = model(xa)
        inv = brute_force_loss(taps["layer3"], torch.arange(4).repeat(2), "sum")
    assert loss.item() == pytest.approx((0.9 * F.cross_entropy(logits, y.repeat(2)) + 0.1 * inv).item(), rel=1e-4)
    assert metrics["inv_layer3"] == pytest.approx(inv.item(), rel=1e-4)
    assert metrics["ce"] == pytest.approx(F.cross_entropy(logits, y.repeat(2)).item(), rel=1e-5)
    # keep_batch_size: B images per step even when B = M (one seed)
    keep = DAI(M=2, keep_batch_size=True, seed=0)
    keep.setup(model)
    assert keep.augment_batch(x[:2], y[:2])[0].shape[0] == 2
    keep.remove()


def test_accuracy_metric_is_on_the_augmented_batch(make_resnet):
    model = make_resnet().eval()
    x = torch.rand(4, 1, 28, 28)
    m = DAI(alpha=0.1, M=2, seed=3)
    m.setup(model)
    xa = A.dai_augment(x.repeat(2, 1, 1, 1), torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred = model(xa).argmax(-1)
    y = torch.where(torch.arange(8) < 6, pred, (pred + 1) % 10)         # 6 of 8 right
    _, metrics = m.loss(model, {"x": xa, "y": y, "group": torch.arange(4).repeat(2)}, 0)
    assert metrics["acc"] == 0.75


def test_taps_only_when_the_invariance_term_is_on(make_resnet):
    model, other = make_resnet(), make_resnet(seed=1)
    b = {"x": torch.rand(4, 1, 28, 28), "y": torch.randint(10, (4,))}
    plain = DAI(alpha=0.0)
    plain.setup(model)
    assert _hooks(model) == 0
    plain.loss(other, b, 0)                                            # alpha = 0: nothing tapped, any model
    m = DAI(alpha=0.1)
    m.setup(model)
    assert _hooks(model) > 0
    with pytest.raises(ValueError, match="DAI.setup\\(model\\) was called with a different model"):
        m.loss(other, b, 0)
    m.remove()


def test_invariance_scores_of_chosen_layers_over_chunks(make_resnet):
    """Eq. 2's denominator is over all N images, also when they are scored in chunks; any named layer."""
    model = make_resnet().eval()
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    xt = A.gaussian_noise(x, 0.2, torch.Generator().manual_seed(1))
    table = dict(zip(map(lambda t: t.sum().item(), x), xt))

    def transform(xb):                                                 # G(x_i) = xt_i, whatever the chunk
        return torch.stack([table[t.sum().item()] for t in xb])

    whole = invariance_scores(model, x, transform, layers=["layer2.0", "layer3"], batch_size=12)
    assert list(whole) == ["layer2.0", "layer3", "logits"]
    chunked = invariance_scores(model, x, transform, layers=["layer2.0", "layer3"], batch_size=5)
    for n in whole:
        assert torch.allclose(whole[n], chunked[n], atol=1e-5), n
    assert not torch.allclose(whole["layer3"], torch.ones(12))
    cols = evaluate_robustness(model, x, torch.randint(10, (12,)), ["invariance"],
                               EvalContext(seed=2, options={"invariance": {"layers": ["layer3"]}}))
    assert list(cols) == ["inv/0", "inv/1"]                            # layer3, logits
