"""ICT (thesis ch. 6, Algorithm 1): ramp-up and EMA against their formulas, the consistency loss against
eq. 6.1 written by hand (and the authors' logits mix as an option), the labeled-mixup path of the paper's
runs against a hand-mixed batch, and a teacher that never receives a gradient."""
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.methods import create_method
from zoo.methods.ict import ema_update, sigmoid_rampup
from zoo.methods.mixup import sample_lambda
from zoo.taps import LayerTaps


def _perturb_teacher(ict):
    """Make the teacher differ from the student (else student and teacher outputs coincide)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in ict.teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_defaults_are_the_papers_protocol():
    ict = create_method("ict")
    assert ict.mixup_labeled is True and ict.target_mix == "probs"          # sec. 6.3.3 and eq. 6.1
    assert ict.ema_decay == 0.999 and ict.rampup_fraction == 0.25 and ict.mixup_alpha == 1.0
    for bad in (dict(target_mix="softmax"), dict(ema_decay=1.0), dict(w_max=-1), dict(alpha=-1),
                dict(rampup_fraction=1.5), dict(rampup_steps=-1)):
        with pytest.raises(ValueError):
            create_method("ict", **bad)


def test_sigmoid_rampup_formula_over_first_quarter(make_resnet):
    ict = create_method("ict", w_max=30.0)
    with pytest.raises(ValueError, match="total_steps"):
        ict.weight(3)                                          # the ramp needs the run's length
    ict.setup(make_resnet(), total_steps=400)
    assert ict.total_steps == 400 and ict.rampup_steps == 100
    for t in (0, 1, 17, 50, 99):
        assert math.isclose(ict.weight(t), 30.0 * math.exp(-5 * (1 - t / 100) ** 2), rel_tol=1e-12)
    assert ict.weight(100) == ict.weight(399) == 30.0
    assert all(ict.weight(t) <= ict.weight(t + 1) for t in range(120))
    assert sigmoid_rampup(5, 0) == 1.0 and sigmoid_rampup(-3, 10) == math.exp(-5)
    assert sigmoid_rampup(0, 1) == math.exp(-5) and sigmoid_rampup(1, 1) == 1.0            # a one-step ramp
    explicit = create_method("ict", rampup_steps=10, rampup_fraction=0.5)
    explicit.setup(make_resnet(), total_steps=400)                       # rampup_steps wins over the fraction
    assert explicit.rampup_steps == 10 and explicit.weight(10) == 10.0
    half = create_method("ict", rampup_fraction=0.5)
    half.setup(make_resnet(), total_steps=30)
    assert half.rampup_steps == 15


def test_setup_needs_the_run_length_and_checks_it(make_resnet):
    with pytest.raises(ValueError, match="total_steps"):
        create_method("ict").setup(make_resnet())
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="total_steps"):
            create_method("ict").setup(make_resnet(), total_steps=bad)
    create_method("ict", rampup_steps=5).setup(make_resnet())            # an explicit ramp needs no length


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_teacher_follows_the_formula(warmup, make_resnet):
    student = make_resnet()
    ict = create_method("ict", ema_decay=0.9, ema_warmup=warmup, rampup_steps=10)
    ict.setup(student)
    expected = [p.detach().clone() for p in ict.teacher.parameters()]
    for step in range(1, 5):
        with torch.no_grad():
            for p in student.parameters():                        # any change of the student
                p.add_(0.01 * torch.randn_like(p))
        (cb,) = ict.callbacks()
        cb(step, student)
        a = min(1 - 1 / (step + 1), 0.9) if warmup else 0.9
        assert ict.decay(step) == a
        expected = [a * e + (1 - a) * s.detach() for e, s in zip(expected, student.parameters())]
        for e, t in zip(expected, ict.teacher.parameters()):
            assert torch.allclose(e, t, atol=1e-6)
    teacher, student = make_resnet(seed=1), make_resnet(seed=2)
    ema_update(teacher, student, 0.0)                             # decay 0: the teacher becomes the student
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))


def _hand_loss(ict, student, b, seed, step, labeled_mix, target_mix="probs", alpha=0.5, mixup_alpha=0.7):
    """ICT's loss written out (Algorithm 1), drawing the random numbers in the method's order."""
    torch.manual_seed(seed)
    with torch.no_grad():
        if labeled_mix:
            lam_s, perm_s = sample_lambda(mixup_alpha), torch.randperm(len(b["x"]))
            z = student(lam_s * b["x"] + (1 - lam_s) * b["x"][perm_s])
            loss_s = lam_s * F.cross_entropy(z, b["y"]) + (1 - lam_s) * F.cross_entropy(z, b["y"][perm_s])
        else:
            loss_s = F.cross_entropy(student(b["x"]), b["y"])
        zt = ict.teacher.train()(b["x_u"])
        lam, perm = sample_lambda(alpha), torch.randperm(len(b["x_u"]))
        if target_mix == "probs":                                 # eq. 6.1: mix the predictions
            target = lam * F.softmax(zt, -1) + (1 - lam) * F.softmax(zt, -1)[perm]
        else:                                                     # authors' code: mix logits, then softmax
            target = F.softmax(lam * zt + (1 - lam) * zt[perm], -1)
        ps = F.softmax(student(lam * b["x_u"] + (1 - lam) * b["x_u"][perm]), -1)
        l_us = ((ps - target) ** 2).mean()
    w = ict.weight(step)
    return loss_s, l_us, w


def test_consistency_loss_matches_eq_6_1_and_teacher_gets_no_gradient(make_resnet, image_batch):
    student = make_resnet()
    with LayerTaps(student, ["layer1"]):                         # student hooks must not reach the teacher
        ict = create_method("ict", alpha=0.5, w_max=10.0, rampup_steps=100, mixup_labeled=False)
        ict.setup(student)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ict.teacher.modules())
    _perturb_teacher(ict)
    b = image_batch(8, unlabeled=12)
    torch.manual_seed(3)
    loss, metrics = ict.loss(student, b, step=40)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in ict.teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    loss_s, l_us, w = _hand_loss(ict, student, b, 3, 40, labeled_mix=False)
    assert math.isclose(w, 10.0 * math.exp(-5 * (1 - 40 / 100) ** 2), rel_tol=1e-12)
    assert math.isclose(metrics["w"], w, rel_tol=1e-9)
    assert math.isclose(metrics["loss_s"], float(loss_s), rel_tol=1e-5)
    assert math.isclose(metrics["loss_us"], float(l_us), rel_tol=1e-4)
    assert math.isclose(float(loss.detach()), float(loss_s + w * l_us), rel_tol=1e-4)


def test_labeled_batch_is_mixed_with_one_lambda_for_inputs_and_labels(make_resnet, image_batch):
    """The paper's runs (sec. 6.3.3): ``L_S = lam CE(f(Mix(x, x[pi])), y) + (1 - lam) CE(.., y[pi])`` with
    ``lam ~ Beta(mixup_alpha)``, drawn before the unlabeled mix's ``lam ~ Beta(alpha)``."""
    student = make_resnet()
    ict = create_method("ict", alpha=0.5, mixup_alpha=0.7, w_max=10.0, rampup_steps=100)
    ict.setup(student)
    _perturb_teacher(ict)
    b = image_batch(8, unlabeled=12)
    for seed in (3, 4, 5):
        torch.manual_seed(seed)
        loss, metrics = ict.loss(student, b, step=40)
        loss_s, l_us, w = _hand_loss(ict, student, b, seed, 40, labeled_mix=True)
        assert math.isclose(metrics["loss_s"], float(loss_s), rel_tol=1e-5), seed
        assert math.isclose(metrics["loss_us"], float(l_us), rel_tol=1e-4), seed
        assert math.isclose(float(loss.detach()), float(loss_s + w * l_us), rel_tol=1e-4), seed
        plain, _, _ = _hand_loss(ict, student, b, seed, 40, labeled_mix=False)
        assert not math.isclose(metrics["loss_s"], float(plain), rel_tol=1e-3)      # the mix is not a no-op
    # the labels are mixed with the inputs' lambda, not 1 - lambda
    torch.manual_seed(3)
    lam_s, perm_s = sample_lambda(0.7), torch.randperm(8)
    assert abs(lam_s - 0.5) > 0.05
    torch.manual_seed(3)
    _, metrics = ict.loss(student, b, step=40)
    with torch.no_grad():
        z = student(lam_s * b["x"] + (1 - lam_s) * b["x"][perm_s])
        swapped = (1 - lam_s) * F.cross_entropy(z, b["y"]) + lam_s * F.cross_entropy(z, b["y"][perm_s])
    assert not math.isclose(metrics["loss_s"], float(swapped), rel_tol=1e-3)


def test_target_mix_logits_is_the_softmax_of_mixed_teacher_logits(make_resnet, image_batch):
    student = make_resnet()
    b = image_batch(8, unlabeled=12)
    losses = {}
    for target_mix in ("probs", "logits"):
        ict = create_method("ict", alpha=0.5, mixup_alpha=0.7, rampup_steps=100, target_mix=target_mix)
        ict.setup(student)
        _perturb_teacher(ict)
        torch.manual_seed(11)
        _, metrics = ict.loss(student, b, step=40)
        _, l_us, _ = _hand_loss(ict, student, b, 11, 40, labeled_mix=True, target_mix=target_mix)
        assert math.isclose(metrics["loss_us"], float(l_us), rel_tol=1e-4), target_mix
        losses[target_mix] = metrics["loss_us"]
    assert not math.isclose(losses["probs"], losses["logits"], rel_tol=1e-3)   # two different targets


def test_ict_needs_unlabeled_and_evaluates_teacher(make_resnet):
    student = make_resnet()
    ict = create_method("ict", rampup_steps=10)
    assert ict.needs_unlabeled
    with pytest.raises(ValueError, match="setup"):
        ict.loss(student, {"x": torch.rand(2, 1, 28, 28), "y": torch.tensor([0, 1]), "x_u": torch.rand(2, 1, 28, 28)}, 0)
    assert ict.eval_model(student) is student and ict.extra_state() == {}          # no teacher before setup
    ict.setup(student)
    with pytest.raises(ValueError, match="x_u"):
        ict.loss(student, {"x": torch.rand(2, 1, 28, 28), "y": torch.tensor([0, 1])}, 0)
    assert ict.eval_model(student) is ict.teacher
    assert create_method("ict", eval_teacher=False).eval_model(student) is student
    assert ict.extra_state() == {"ict_teacher": ict.teacher}


def test_boundary_values_are_accepted_and_bad_ones_name_themselves(make_resnet):
    """0 is a valid setting of every weight and schedule (no mixing, teacher = student, no consistency, no
    ramp); the paper's alpha search range holds the default."""
    assert 0.1 <= create_method("ict").alpha <= 1.0
    for ok in (dict(alpha=0.0), dict(mixup_alpha=0.0), dict(ema_decay=0.0), dict(w_max=0.0), dict(w_max=0.5),
               dict(rampup_fraction=0.0), dict(rampup_fraction=1.0), dict(rampup_steps=0)):
        create_method("ict", **ok)
    for bad, match in [(dict(alpha=-1), "alpha and mixup_alpha must be >= 0"),
                       (dict(mixup_alpha=-1), "alpha and mixup_alpha must be >= 0"),
                       (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\)"), (dict(w_max=-1), "w_max must be >= 0"),
                       (dict(rampup_fraction=1.5), r"rampup_fraction must be in \[0, 1\]"),
                       (dict(rampup_steps=-1), "rampup_steps must be >= 0 or None"),
                       (dict(target_mix="softmax"), "target_mix must be one of")]:
        with pytest.raises(ValueError, match=match):
            create_method("ict", **bad)
    with pytest.raises(ValueError, match="setup"):
        create_method("ict").update_teacher(1, make_resnet())


def test_teacher_follows_the_student_to_its_device(make_resnet):
    student = make_resnet()
    ict = create_method("ict", rampup_steps=10, ema_decay=0.5, ema_warmup=False)
    ict.setup(student)
    student.to("meta")                                         # moved after setup (e.g. to the GPU)
    ict.update_teacher(1, student)
    assert all(p.device.type == "meta" for p in ict.teacher.parameters())
