"""Lipschitz-continuity training (lipschitz_continuity_robustness.txt, eq. 3-5): the finite-difference
estimate against a manual one, the loss of eq. 5, and training on the embedded digits through the harness."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.methods import create_method
from zoo.methods.lipschitz import finite_difference_lipschitz, lipschitz_estimate
from zoo.robustness import EvalContext, evaluate_robustness


@pytest.fixture
def few_digits(digits):
    """The first ``n`` training digits: ``few_digits(n=16) -> (x, y)``."""
    def take(n=16):
        x, y = digits["train"]
        return x[:n], y[:n]
    return take


def _manual_estimates(model, x, delta):
    """Eq. 4 one image at a time: ||f(x + delta) - f(x)|| / ||delta||."""
    out = []
    with torch.no_grad():
        for xi, di in zip(x, delta):
            fx, fxt = model(xi[None]), model((xi + di)[None])
            out.append(float((fxt - fx).norm() / di.norm()))
    return torch.tensor(out)


def test_training_metric_and_loss_equal_manual_finite_difference(make_resnet, few_digits):
    model = make_resnet().eval()                                        # BN in eval: per-image f
    x, y = few_digits()
    sigma, beta, seed = 0.1, 2.0, 123
    delta = sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))   # eq. 3, same stream
    manual = _manual_estimates(model, x, delta)
    K = float(manual.median())                                          # half of the batch is penalised
    method = create_method("lipschitz", sigma=sigma, beta=beta, K=K, seed=seed)
    method.setup(model)
    loss, m = method.loss(model, {"x": x, "y": y}, 0)
    assert m["lip"] == pytest.approx(float(manual.mean()), rel=1e-4)
    assert m["lip_max"] == pytest.approx(float(manual.max()), rel=1e-4)
    with torch.no_grad():
        task = F.cross_entropy(model(x), y)
    pen = beta * (manual - K).clamp_min(0).mean()                       # eq. 5
    assert m["lip_pen"] == pytest.approx(float(pen), rel=1e-4) and float(pen) > 0
    assert float(loss.detach()) == pytest.approx(float(task + pen), rel=1e-4)


def test_estimate_of_a_scaled_identity_is_the_scale_and_probs_output():
    x = torch.rand(8, 1, 28, 28)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(784, 784, bias=True))
    with torch.no_grad():
        lin[1].weight.copy_(3.0 * torch.eye(784))
        lin[1].bias.uniform_()
    est = lipschitz_estimate(lin, x, sigma=0.05, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(est, torch.full((8,), 3.0), rtol=1e-4)
    fx = torch.randn(5, 10)
    assert torch.allclose(finite_difference_lipschitz(fx, fx + 2.0, x[:5], x[:5] + 1.0),
                          torch.full((5,), (10 * 2.0 ** 2) ** 0.5 / 784 ** 0.5))
    probs = lipschitz_estimate(lin, x, sigma=0.05, output="probs", generator=torch.Generator().manual_seed(0))
    assert (probs <= 3.0 + 1e-4).all()                                  # softmax is 1-Lipschitz in L2


def test_beta_zero_is_standard_training_and_gradient_lowers_the_estimate(make_resnet, few_digits):
    model = make_resnet().eval()
    x, y = few_digits()
    plain = create_method("lipschitz", beta=0.0, seed=1)
    loss, m = plain.loss(model, {"x": x, "y": y}, 0)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-5)
    assert m["lip"] > 0 and m["lip_pen"] == 0
    # a dominant penalty (K = 0, large beta): gradient steps on eq. 5 reduce the estimate on fresh noise
    method = create_method("lipschitz", beta=50.0, K=0.0, seed=2)
    method.setup(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.002)
    before = float(lipschitz_estimate(model, x, 0.1, generator=torch.Generator().manual_seed(9)).mean())
    for step in range(10):
        loss, m = method.loss(model, {"x": x, "y": y}, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(lipschitz_estimate(model, x, 0.1, generator=torch.Generator().manual_seed(9)).mean())
    assert after < 0.7 * before, (before, after)


def test_defaults_and_bad_options_name_themselves():
    m = create_method("lipschitz")
    assert m.hparams == dict(sigma=0.1, beta=1.0, K=1.0, output="logits", clip=False, seed=None)
    create_method("lipschitz", beta=0.0, K=0.0)                                      # 0 is allowed
    for kw, match in [({"sigma": 0.0}, "sigma must be > 0"), ({"beta": -1.0}, "beta and K must be >= 0"),
                      ({"K": -0.5}, "beta and K must be >= 0"), ({"output": "softmax"}, "output must be one of")]:
        with pytest.raises(ValueError, match=match):
            create_method("lipschitz", **kw)
    x = torch.rand(3, 4)
    with pytest.raises(ValueError, match="shapes must pair up"):
        finite_difference_lipschitz(torch.rand(3, 2), torch.rand(2, 2), x, x)
    with pytest.raises(ValueError, match="output must be one of"):
        lipschitz_estimate(nn.Linear(4, 2), x, output="softmax")


def test_lipschitz_evaluation_column_is_the_mean_estimate(make_resnet, few_digits):
    model = make_resnet()
    x, y = few_digits(40)
    ctx = EvalContext(seed=3, options={"lipschitz": {"sigma": 0.2}})
    col = evaluate_robustness(model, x, y, ["lipschitz"], ctx)["lipschitz"]
    model.eval()
    ref = lipschitz_estimate(model, x, 0.2, generator=ctx.generator(61)).mean()
    assert col == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.slow
def test_harness_lipschitz_beats_chance_with_a_smaller_estimate_than_erm(run_classify, tmp_path, chance):
    res = run_classify("--method", "erm", "lipschitz", "--steps", "150", "--evaluations", "clean", "noise",
                       "lipschitz", "--noise-std", "0.3", "--eval-size", "300")
    for name in ("erm", "lipschitz"):
        assert res[name]["acc"] > 3 * chance, (name, res[name]["acc"])
    assert res["lipschitz"]["lipschitz"] < res["erm"]["lipschitz"]
    metrics = (tmp_path / "lipschitz" / "seed0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/lip" in metrics and "train/lip_pen" in metrics


def test_noise_is_seeded_resumable_and_optionally_clipped(make_resnet, few_digits):
    x, y = few_digits(8)
    method = create_method("lipschitz", sigma=0.5, seed=5)
    assert method.extra_state() == {}
    method.setup(make_resnet())
    (key, rng), = method.extra_state().items()
    assert key == "lipschitz_rng" and rng is method.rng
    state = rng.state_dict()
    first = method.perturb(x)
    assert torch.allclose(first, x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5)))
    assert first.min() < 0 or first.max() > 1                                   # unclipped by default
    rng.load_state_dict(state)
    assert torch.equal(method.perturb(x), first)                                # a checkpoint resumes the stream
    clipped = create_method("lipschitz", sigma=0.5, seed=5, clip=True)
    clipped.setup(make_resnet())
    xt = clipped.perturb(x)
    assert torch.equal(xt, first.clamp(0, 1))
    model = make_resnet().eval()
    clipped.setup(model)
    _, m = clipped.loss(model, {"x": x, "y": y}, 0)
    with torch.no_grad():                                                       # the estimate uses the clipped x~
        ref = finite_difference_lipschitz(model(x), model(xt), x, xt)
    assert m["lip"] == pytest.approx(float(ref.mean()), rel=1e-4)
    probs = create_method("lipschitz", sigma=0.5, seed=5, output="probs", beta=0.0)
    probs.setup(model)
    _, m = probs.loss(model, {"x": x, "y": y}, 0)
    with torch.no_grad():
        ref = finite_difference_lipschitz(model(x).softmax(-1), model(first).softmax(-1), x, first)
    assert m["lip"] == pytest.approx(float(ref.mean()), rel=1e-4)


def test_estimate_is_exact_for_tiny_perturbations_and_checks_the_batch():
    """Eq. 4 is a ratio: a perturbation of norm << 1 (small sigma, few pixels) gives the slope too."""
    x = torch.rand(5, 4)
    xt = x + 1e-3 * torch.randn(5, 4)
    assert torch.allclose(finite_difference_lipschitz(3 * x, 3 * xt, x, xt), torch.full((5,), 3.0), rtol=1e-3)
    with pytest.raises(ValueError, match="shapes must pair up"):
        finite_difference_lipschitz(torch.rand(4, 2), torch.rand(4, 2), x, xt)     # 4 outputs for 5 inputs
    from zoo.methods.lipschitz import gaussian_perturb
    for dtype in (torch.float64, torch.bfloat16):                     # x~ keeps the input's precision
        assert gaussian_perturb(x.to(dtype), 0.1, torch.Generator().manual_seed(0)).dtype == dtype


def test_seed_without_setup_metrics_and_evaluation_defaults(make_resnet, few_digits):
    x, y = few_digits(8)
    a, b = create_method("lipschitz", seed=3), create_method("lipschitz", seed=3)
    assert torch.equal(a.perturb(x), b.perturb(x))                   # seeded also when used without setup
    model = make_resnet().eval()
    with torch.no_grad():
        pred = model(x).argmax(-1)
    y = torch.where(torch.arange(8) < 6, pred, (pred + 1) % 10)       # 6 of 8 right
    _, m = create_method("lipschitz", seed=1).loss(model, {"x": x, "y": y}, 0)
    with torch.no_grad():
        assert m["acc"] == 0.75 and m["task"] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-5)
    # the evaluation: sigma 0.1 (the top of the paper's sweep) unless told, the output option honoured
    ctx = EvalContext(seed=3)
    col = evaluate_robustness(model, x, y, ["lipschitz"], ctx)["lipschitz"]
    assert col == pytest.approx(float(lipschitz_estimate(model, x, 0.1, generator=ctx.generator(61)).mean()), rel=1e-5)
    assert float(lipschitz_estimate(model, x, generator=ctx.generator(61)).mean()) == pytest.approx(col, rel=1e-5)
    ctx = EvalContext(seed=3, options={"lipschitz": {"output": "probs"}})
    col = evaluate_robustness(model, x, y, ["lipschitz"], ctx)["lipschitz"]
    ref = lipschitz_estimate(model, x, 0.1, output="probs", generator=ctx.generator(61)).mean()
    assert col == pytest.approx(float(ref), rel=1e-5)
