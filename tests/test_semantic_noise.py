"""Semantic noise modeling (semantic_noise_modeling.txt, eq. 5-9): tied decoders use the encoder's weights
(same storage, transposed use, one gradient), the perturbations of sec. 4.2 / eq. 9, the loss of eq. 6 / 8,
and the few-examples-per-class regime trained through the harness."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import zoo  # noqa: F401  (registers the snm models with timm)
from zoo.data import embedded_mnist_split
from zoo.engine import fit, seed_everything
from zoo.methods import create_method
from zoo.methods.semantic_noise import l2_loss, minmax_noise
from zoo.models.snm import SNMNet
from zoo.robustness import predict

MODELS = ("snm_mnist_convnet", "snm_mnist_mlp")


def _pairs(model):
    """(decoder layer, encoder weight-holding layer) for every tied layer."""
    pairs = [(d, e[0]) for d, e in zip(model.dec_fcs, model.enc_fcs)]
    pairs += [(d, e[0]) for d, e in zip(model.dec_convs, model.enc_convs)]
    return pairs + [(model.dec_fc, model.fc)]


@pytest.mark.parametrize("name", MODELS)
def test_decoder_weights_are_the_encoder_parameters(name):
    model = timm.create_model(name)
    for dec, enc in _pairs(model):
        assert dec.weight is enc.weight and dec.weight.data_ptr() == enc.weight.data_ptr()
    n_enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("enc_", "fc.")))
    assert n_enc == sum(p.numel() for p in model.parameters())          # the decoders add no parameters
    assert not any(k.startswith("dec_") for k in model.state_dict())
    twin = copy.deepcopy(model).double()                                 # tying survives copies and casts
    for dec, enc in _pairs(twin):
        assert dec.weight is enc.weight and dec.weight.dtype == torch.float64
    with_bias = timm.create_model(name, decoder_bias=True)
    assert all(d.bias is not None and d.weight is e.weight for d, e in _pairs(with_bias))


@pytest.mark.parametrize("name", MODELS)
def test_decoder_is_the_transpose_of_the_encoder(name):
    """Each (bias-free) decoder layer is the adjoint of its encoder layer: <W a, h> = <a, W^T h>."""
    torch.manual_seed(0)
    model = timm.create_model(name).double()
    for dec, enc in _pairs(model):
        if isinstance(enc, torch.nn.Conv2d):
            c, s, _ = model.sizes[list(model.dec_convs).index(dec)]
            a = torch.randn(2, c, s, s, dtype=torch.float64)
            wa = F.conv2d(a, enc.weight, None, enc.stride, enc.padding)
            h = torch.randn_like(wa)
            wth = dec(h, (s, s))
        else:
            a = torch.randn(2, enc.in_features, dtype=torch.float64)
            wa = F.linear(a, enc.weight)
            h = torch.randn_like(wa)
            wth = dec(h)
        assert wth.shape == a.shape
        assert torch.allclose((wa * h).sum(), (a * wth).sum(), rtol=1e-9)


@pytest.mark.parametrize("name", MODELS)
def test_reconstruction_gradients_flow_into_the_one_encoder_weight(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    x = torch.rand(3, 1, 28, 28)
    z = model.encode(x).detach()                                        # only the decoder path has a graph
    l2_loss(model.decode_x(z), x).backward()
    first = model.enc_convs[0][0] if model.enc_convs else model.enc_fcs[0][0]
    g = first.weight.grad
    assert g is not None and g.abs().sum() > 0
    # the same gradient through an explicit transposed use of a copy of that weight (the last decoder layer)
    w = first.weight.detach().clone().requires_grad_(True)
    with torch.no_grad():
        h = z
        for m in reversed(model.dec_fcs[1 if not model.enc_convs else 0:]):
            h = F.relu(m(h))
        if model.enc_convs:
            h = h.view(3, *model.sizes[-1])
            for i in reversed(range(1, len(model.dec_convs))):
                h = F.relu(model.dec_convs[i](h, model.sizes[i][1:]))
    if model.enc_convs:
        x_r = F.conv_transpose2d(h, w, None, 2, 1, output_padding=1)
    else:
        x_r = (h @ w).view(3, 1, 28, 28)
    assert torch.allclose(x_r, model.decode_x(z), atol=1e-5)
    l2_loss(x_r, x).backward()
    assert torch.allclose(w.grad, g, rtol=1e-4, atol=1e-6)
    # z_R path: the classifier weight gets the gradient of ||g2'(y) - z||^2
    model.zero_grad()
    y = torch.randn(3, 10)
    l2_loss(model.decode_z(y), z).backward()
    assert model.fc.weight.grad.abs().sum() > 0 and model.fc.bias.grad is None


def test_minmax_noise_is_the_papers_scale_add_descale():
    v = torch.randn(6, 20) * torch.arange(1, 7)[:, None]
    noise = minmax_noise(v, 0.2, torch.Generator().manual_seed(4))
    lo, hi = v.min(1, keepdim=True).values, v.max(1, keepdim=True).values
    scaled = (v - lo) / (hi - lo)                                       # base vector scaled to [0, 1]
    perturbed = scaled + 0.2 * torch.randn(v.shape, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(v + noise, perturbed * (hi - lo) + lo, atol=1e-5)


def _reference(model, x, t, perturb, lambda1, lambda2, sigma, seed, reduction="sum"):
    """Eq. 5-9 written out with the method's noise stream: (loss, metrics)."""
    def l2(a, b):
        sq = ((a - b) ** 2).flatten(1)
        return (sq.sum(1) if reduction == "sum" else sq.mean(1)).mean()
    z = model.encode(x)
    y = model.classify(z)
    nll = F.cross_entropy(y, t)
    rec_x, rec_z = l2(model.decode_x(z), x), l2(model.decode_z(y), z)
    loss = lambda1 * (rec_x + rec_z) + nll                                    # eq. 6
    m = {"acc": float((y.argmax(-1) == t).float().mean()), "nll": float(nll), "rec_x": float(rec_x),
         "rec_z": float(rec_z)}
    g = torch.Generator().manual_seed(seed)
    if perturb != "none" and lambda2 > 0:
        if perturb == "random":
            z_e = sigma * (z.max(1, keepdim=True).values - z.min(1, keepdim=True).values) * torch.randn(z.shape, generator=g)
        else:                                                                 # eq. 9
            y_e = sigma * (y.max(1, keepdim=True).values - y.min(1, keepdim=True).values) * torch.randn(y.shape, generator=g)
            z_e = model.decode_z(y + y_e) - model.decode_z(y)
        y_p = model.classify(z + z_e)                                         # eq. 7
        nll_p = F.cross_entropy(y_p, t)
        loss = loss + lambda2 * nll_p                                         # eq. 8
        m.update(nll_perturbed=float(nll_p), z_e=float(z_e.norm(dim=1).mean()),
                 acc_perturbed=float((y_p.argmax(-1) == t).float().mean()))
    return loss, m


@pytest.mark.parametrize("perturb, reduction, lambda2", [("none", "sum", 0.7), ("random", "sum", 0.7),
                                                         ("semantic", "sum", 0.7), ("semantic", "mean", 0.7),
                                                         ("semantic", "sum", 0.0)])
def test_loss_and_metrics_are_eq_6_and_eq_8(perturb, reduction, lambda2):
    torch.manual_seed(0)
    model = timm.create_model("snm_mnist_convnet")
    x, t = torch.rand(5, 1, 28, 28), torch.randint(0, 10, (5,))
    method = create_method("semantic_noise", perturb=perturb, lambda1=0.03, lambda2=lambda2, sigma=0.3, seed=11,
                           rec_reduction=reduction)
    method.setup(model)
    loss, m = method.loss(model, {"x": x, "y": t}, 0)
    with torch.no_grad():
        ref, ref_m = _reference(model, x, t, perturb, 0.03, lambda2, 0.3, 11, reduction)
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)
    assert set(m) == set(ref_m)                                   # perturbed metrics only when perturbing
    for k, v in ref_m.items():
        assert m[k] == pytest.approx(v, rel=1e-4, abs=1e-7), k


def test_semantic_noise_gradient_through_the_decoder_only_without_detach():
    """``detach_noise=True`` (default) treats ``z_e`` as sampled noise; ``False`` lets the perturbed NLL
    train ``g2'`` (the classifier weight, tied) through ``z_e = g2'(y + y_e) - g2'(y)``."""
    x, t = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 2, 3, 4])
    grads = {}
    for detach in (True, False):
        torch.manual_seed(0)
        model = timm.create_model("snm_mnist_mlp")
        method = create_method("semantic_noise", lambda1=0.0, seed=3, detach_noise=detach)
        method.setup(model)
        z = model.encode(x)
        y = model.classify(z)
        z_e = method.latent_noise(model, z, y)
        assert z_e.requires_grad is (not detach)
        F.cross_entropy(model.classify(z.detach() + z_e), t).backward()
        grads[detach] = model.fc.weight.grad.clone()
    assert not torch.allclose(grads[True], grads[False], atol=1e-6)


def test_defaults_are_the_papers_and_bad_options_name_themselves():
    m = create_method("semantic_noise")
    assert m.hparams == dict(perturb="semantic", lambda1=0.03, lambda2=1.0, sigma=0.2, rec_reduction="sum",
                             detach_noise=True, seed=None)
    create_method("semantic_noise", lambda1=0.0, lambda2=0.0, sigma=0.0)           # 0 is allowed
    for kwargs, match in [(dict(perturb="gaussian"), "perturb must be one of"),
                          (dict(lambda1=-0.1), "lambda1, lambda2, sigma must be >= 0"),
                          (dict(lambda2=-0.1), "lambda1, lambda2, sigma must be >= 0"),
                          (dict(sigma=-0.1), "lambda1, lambda2, sigma must be >= 0"),
                          (dict(rec_reduction="max"), "rec_reduction must be 'sum' or 'mean'")]:
        with pytest.raises(ValueError, match=match):
            create_method("semantic_noise", **kwargs)
    assert create_method("semantic_noise").extra_state() == {}
    model = timm.create_model("snm_mnist_mlp")
    m.setup(model)
    assert list(m.extra_state()) == ["snm_rng"]


@pytest.mark.slow
def test_harness_few_labels_semantic_noise_beats_chance(run_classify, tmp_path, chance):
    res = run_classify("--model", "snm_mnist_convnet", "--method", "semantic_noise", "--labels-per-class", "20",
                       "--steps", "150", "--evaluations", "clean", "noise", "--noise-std", "0.3", "--eval-size", "300")
    assert res["semantic_noise"]["acc"] > 3 * chance, res["semantic_noise"]["acc"]
    header = (tmp_path / "semantic_noise" / "seed0" / "metrics.csv").read_text().splitlines()[0]
    assert all(k in header for k in ("train/rec_x", "train/rec_z", "train/nll_perturbed"))


@pytest.mark.slow
def test_mlp_with_random_perturbation_learns_from_few_labels(chance):
    seed_everything(0)
    data = embedded_mnist_split(labels_per_class=20)
    (x, y), (xt, yt) = data["train"], data["test"]
    model = timm.create_model("snm_mnist_mlp")
    assert isinstance(model, SNMNet)
    method = create_method("snm_random", seed=0)
    method.setup(model, total_steps=120)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batches = ({"x": x[i], "y": y[i]} for i in iter(lambda: torch.randint(len(x), (50,), generator=g), None))
    fit(model, opt, batches, steps=120, progress=False, **method.fit_kwargs())
    acc = float((predict(model, xt).argmax(-1) == yt).float().mean())
    assert acc > 3 * chance, acc


def test_setup_names_what_a_plain_classifier_lacks(make_resnet):
    with pytest.raises(ValueError) as err:
        create_method("semantic_noise").setup(make_resnet())
    assert str(err.value) == ("semantic_noise needs an encoder / classifier / tied-decoder model with encode, "
                              "classify, decode_x, decode_z (missing encode, classify, decode_x, decode_z): use "
                              "snm_mnist_convnet or snm_mnist_mlp (zoo.models.snm), got ResNet")


def test_latent_noise_is_fresh_every_step_and_seeded_with_or_without_setup():
    torch.manual_seed(0)
    model = timm.create_model("snm_mnist_mlp")
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = model.encode(x)
        y = model.classify(z)
    m = create_method("semantic_noise", seed=5)
    m.setup(model)
    first, second = m.latent_noise(model, z, y), m.latent_noise(model, z, y)
    assert not torch.allclose(first, second)                          # a new draw per step
    a, b = create_method("semantic_noise", seed=5), create_method("semantic_noise", seed=5)   # no setup
    assert torch.equal(a.latent_noise(model, z, y), first) and torch.equal(b.latent_noise(model, z, y), first)
    assert minmax_noise(y.to(torch.bfloat16), 0.2, torch.Generator()).dtype == torch.bfloat16


def test_without_detach_the_perturbation_is_differentiable_in_the_prediction():
    torch.manual_seed(0)
    model = timm.create_model("snm_mnist_mlp")
    z = model.encode(torch.rand(4, 1, 28, 28))
    y = model.classify(z).detach().requires_grad_()
    m = create_method("semantic_noise", seed=3, detach_noise=False)
    m.setup(model)
    m.latent_noise(model, z, y).pow(2).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0               # z_e = g2'(y + y_e) - g2'(y) depends on y
    y.grad = None
    detached = create_method("semantic_noise", seed=3)                  # the default: a constant perturbation
    detached.setup(model)
    noise = detached.latent_noise(model, z, y)
    assert not noise.requires_grad


def test_accuracy_metric_and_per_example_squared_error():
    torch.manual_seed(0)
    model = timm.create_model("snm_mnist_convnet")
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        pred = model.classify(model.encode(x)).argmax(-1)
    t = torch.where(torch.arange(8) < 6, pred, (pred + 1) % 10)        # 6 of 8 right
    m = create_method("semantic_noise", seed=1)
    m.setup(model)
    assert m.loss(model, {"x": x, "y": t}, 0)[1]["acc"] == 0.75
    a, b = torch.rand(3, 2, 5), torch.rand(3, 2, 5)
    assert l2_loss(a, b).item() == pytest.approx(((a - b) ** 2).sum((1, 2)).mean().item())   # ||a - b||^2
