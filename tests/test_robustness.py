"""Robustness evaluations do what they say: FGSM raises the loss, deformations are the named warps
(rotation by 0 is identity, by 90 is rot90, ...), occlusion boxes are 16x16, ECE of a calibrated toy is 0,
and added evaluations become columns."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo  # noqa: F401
from zoo import robustness as R


def linear_digits_model(data, steps=60):
    """Multinomial logistic regression on the embedded digits ``data`` (convex in its input)."""
    torch.manual_seed(0)
    x, y = data["train"]
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    for i in range(steps):
        idx = torch.randint(len(x), (256,))
        loss = F.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m, data["test"]


def test_fgsm_raises_the_loss_of_every_example_of_a_linear_model_and_of_a_resnet(digits, make_resnet):
    m, (x, y) = linear_digits_model(digits)
    x, y = x[:200], y[:200]
    m.zero_grad(set_to_none=True)
    adv = R.fgsm_attack(m, x, y, eps=0.05, clip=None)
    assert torch.allclose((adv - x).abs(), torch.full_like(x, 0.05))          # an L_inf step of eps
    with torch.no_grad():
        before = F.cross_entropy(m(x), y, reduction="none")
        after = F.cross_entropy(m(adv), y, reduction="none")
    # CE of a linear model is convex in x: f(x + eps sign g) >= f(x) + eps ||g||_1 > f(x) for every example
    assert (after > before).all()
    assert all(p.grad is None for p in m.parameters())
    net = make_resnet().eval()
    adv = R.fgsm_attack(net, x[:32], y[:32], eps=0.03)
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(net(adv), y[:32]) > F.cross_entropy(net(x[:32]), y[:32])
    cols = R.evaluate_robustness(m, x, y, ["clean", "fgsm"], options={"fgsm": {"eps": [0.05, 0.2]}})
    assert cols["fgsm/0.2"] <= cols["fgsm/0.05"] < cols["acc"]


def test_deformations_are_the_named_warps():
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(R.rotate(x, 0.0), x, atol=1e-6)
    assert torch.allclose(R.shear(x, 0.0), x, atol=1e-6)
    assert torch.allclose(R.zoom(x, 1.0), x, atol=1e-6)
    assert torch.allclose(R.rotate(x, 90.0), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(R.rotate(x, torch.tensor([0.0, 90.0, 180.0])),
                          torch.stack([x[0], torch.rot90(x[1], 1, (1, 2)), torch.rot90(x[2], 2, (1, 2))]), atol=1e-5)
    out = R.zoom(x, 2.0)                                   # zoom out 200 %: half size, zero border
    assert out[..., :2, :].abs().max() == 0 and out[..., 6:, :].abs().max() == 0
    assert torch.allclose(out[..., 2:6, 2:6], F.avg_pool2d(x, 2), atol=1e-6)
    z = torch.rand(1, 1, 9, 9)
    s = R.shear(z, 45.0)                                   # row i shifts by (i - 4) pixels
    for i in range(9):
        for j in range(9):
            src = j + i - 4
            assert math.isclose(float(s[0, 0, i, j]), float(z[0, 0, i, src]) if 0 <= src < 9 else 0.0, abs_tol=1e-5)


def test_occlusion_is_one_clipped_16x16_box_per_image():
    x = torch.ones(200, 1, 28, 28)
    out = R.occlude(x, 16, torch.Generator().manual_seed(0))
    for img in out[:, 0]:
        rows = (img == 0).any(1).nonzero().flatten()
        cols = (img == 0).any(0).nonzero().flatten()
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()             # contiguous
        assert int((img == 0).sum()) == len(rows) * len(cols)                       # a rectangle
    assert int((out[:, 0] == 0).flatten(1).sum(1).max()) == 256                  # some boxes fully inside


def test_gaussian_noise_std_and_identity():
    x = torch.full((4, 1, 50, 50), 0.5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(R.gaussian_noise(x, 0.0, g), x)
    assert abs(float((R.gaussian_noise(x, 0.1, g) - x).std()) - 0.1) < 0.005


def test_ece_zero_for_calibrated_toy_and_matches_brute_force():
    # bin 0.9: 9 of 10 right; bin 0.6: 3 of 5 right -> perfectly calibrated
    probs = torch.tensor([[0.9, 0.1]] * 10 + [[0.4, 0.6]] * 5)
    y = torch.tensor([0] * 9 + [1] + [1] * 3 + [0] * 2)
    assert R.expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-6)
    assert R.expected_calibration_error(torch.tensor([[1.0, 0.0]] * 4), torch.ones(4, dtype=torch.long)) == 1.0
    torch.manual_seed(0)
    p, yy = torch.randn(300, 4).softmax(-1), torch.randint(4, (300,))
    conf, pred = p.max(-1)
    brute = 0.0
    for b in range(10):                                      # bins (b/10, (b+1)/10]
        sel = (conf > b / 10) & (conf <= (b + 1) / 10)
        if sel.any():
            brute += sel.float().mean() * abs((pred[sel] == yy[sel]).float().mean() - conf[sel].mean())
    assert R.expected_calibration_error(p, yy, n_bins=10) == pytest.approx(float(brute), abs=1e-6)


def test_registered_evaluation_becomes_a_column_and_corruptions_are_seeded(digits):
    name = "test_mean_logit"

    @R.register_evaluation(name)
    def mean_logit(model, x, y, ctx):
        return {name: float(R.predict(model, x, ctx.batch_size).mean())}

    assert name in R.list_evaluations()
    m, (x, y) = linear_digits_model(digits, steps=5)
    a = R.evaluate_robustness(m, x[:100], y[:100], ["noise", "occlusion", name], seed=1)
    b = R.evaluate_robustness(m, x[:100], y[:100], ["noise", "occlusion", name], seed=1)
    assert a == b and name in a and "noise/0.5" in a and "occl16" in a
    table = R.robustness_table({"erm": a})
    assert name in table.splitlines()[0]
    with pytest.raises(ValueError, match="unknown evaluations"):
        R.evaluate_robustness(m, x[:10], y[:10], ["nope"])
    with pytest.raises(ValueError, match="already registered"):
        R.register_evaluation(name)(lambda *a: {})
    assert R.curve_groups(a)["noise"][0][1] == "noise/0.1"


def test_table_shows_the_spread_over_seeds_next_to_each_mean():
    means = {"erm": {"acc": 0.9, "noise/0.1": 0.5}, "mixup": {"acc": 0.8}}
    stds = {"erm": {"acc": 0.01, "noise/0.1": 0.02}, "mixup": {"acc": 0.03}}
    rows = R.robustness_table(means, label="method", stds=stds).splitlines()
    assert rows[2].split("|")[2].strip() == "0.900 ± 0.010" and rows[2].split("|")[3].strip() == "0.500 ± 0.020"
    assert rows[3].split("|")[2].strip() == "0.800 ± 0.030" and rows[3].split("|")[3].strip() == "-"
    assert "±" not in R.robustness_table(means, label="method")
