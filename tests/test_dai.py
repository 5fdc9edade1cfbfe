"""Data augmentation invariance (data_augmentation_invariance.txt, eq. 1-4) and the invariance score (eq. 2):
the matrix-form loss against a brute-force double loop, its batch-size independence, the exponential layer
weights, the total loss against a manual computation, the score against its definition (1 for identical
activations), and training on the embedded digits above chance with the score as a harness column."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo  # noqa: F401
from tasks import classify
from zoo import augment as A
from zoo.methods import create_method
from zoo.methods.dai import DAI, dai_invariance_loss, exponential_layer_weights, invariance_scores
from zoo.robustness import EvalContext, evaluate_robustness, list_evaluations
from zoo.taps import LayerTaps

torch.set_num_threads(1)
CHANCE = 0.1


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
    with pytest.raises(ValueError):
        dai_invariance_loss(a, g[:5])


def test_exponential_layer_weights_sum_to_alpha_last_is_ten_times_first():
    for n in (1, 2, 4, 7):
        w = exponential_layer_weights(n, 0.1)
        assert sum(w) == pytest.approx(0.1) and len(w) == n
        if n > 1:
            assert w[-1] / w[0] == pytest.approx(10.0)
            ratios = [w[i + 1] / w[i] for i in range(n - 1)]
            assert max(ratios) == pytest.approx(min(ratios))                   # geometric: exponential in l


def test_method_loss_is_weighted_ce_plus_layer_losses_on_m_augmentations():
    torch.manual_seed(0)
    model = zoo.create_model("test_resnet", in_chans=1, num_classes=10)
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
    for bad in (dict(alpha=1.0), dict(M=0), dict(seed_reduction="x"), dict(ratio=0)):
        with pytest.raises(ValueError):
            DAI(**bad)


# ------------------------------------------------------------------------------------------ invariance score
def test_invariance_score_is_one_for_identical_activations_and_matches_eq2():
    torch.manual_seed(0)
    model = zoo.create_model("test_resnet", in_chans=1, num_classes=10).eval()
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


# -------------------------------------------------------------------------------------------- training
def test_dai_trains_on_digits_above_chance_and_harness_shows_invariance(tmp_path):
    res = classify.main(["--method", "dai", "--steps", "80", "--eval-every", "0", "--workers", "1", "--no-progress",
                         "--evaluations", "clean", "invariance", "--batch-size", "32", "--eval-size", "200",
                         "--out", str(tmp_path)])
    r = res["dai"]
    assert r["acc"] > 3 * CHANCE and r["_hparams"]["alpha"] == 0.1 and r["_hparams"]["M"] == 2
    assert {"inv/0", "inv/6"} <= set(r) and all(v <= 1.0 for k, v in r.items() if k.startswith("inv/"))
    assert "inv/6" in (tmp_path / "results.md").read_text()
    assert create_method("dai").needs_unlabeled is False
