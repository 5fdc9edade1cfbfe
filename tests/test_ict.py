"""ICT (thesis ch. 6, Algorithm 1): ramp-up and EMA against their formulas, the consistency loss against
eq. 6.1 written by hand, and a teacher that never receives a gradient."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import zoo  # noqa: F401
from zoo.methods import create_method
from zoo.methods.ict import sigmoid_rampup
from zoo.methods.mixup import sample_lambda
from zoo.taps import LayerTaps

torch.set_num_threads(1)


def model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", in_chans=1, num_classes=10)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.rand(8, 1, 28, 28, generator=g), "y": torch.randint(10, (8,), generator=g),
            "x_u": torch.rand(12, 1, 28, 28, generator=g)}


def test_sigmoid_rampup_formula_over_first_quarter():
    ict = create_method("ict", w_max=30.0)
    ict.total_steps = 400
    assert ict.rampup_steps == 100
    for t in (0, 1, 17, 50, 99):
        assert math.isclose(ict.weight(t), 30.0 * math.exp(-5 * (1 - t / 100) ** 2), rel_tol=1e-12)
    assert ict.weight(100) == ict.weight(399) == 30.0
    assert all(ict.weight(t) <= ict.weight(t + 1) for t in range(120))
    assert sigmoid_rampup(5, 0) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        create_method("ict").weight(3)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_teacher_follows_the_formula(warmup):
    student = model()
    ict = create_method("ict", ema_decay=0.9, ema_warmup=warmup)
    ict.setup(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    expected = [p.detach().clone() for p in ict.teacher.parameters()]
    for step in range(1, 5):
        with torch.no_grad():
            for p in student.parameters():                        # any change of the student
                p.add_(0.01 * torch.randn_like(p))
        (cb,) = ict.callbacks()
        cb(step, student)
        a = min(1 - 1 / (step + 1), 0.9) if warmup else 0.9
        expected = [a * e + (1 - a) * s.detach() for e, s in zip(expected, student.parameters())]
        for e, t in zip(expected, ict.teacher.parameters()):
            assert torch.allclose(e, t, atol=1e-6)
    del opt


def test_consistency_loss_matches_eq_6_1_and_teacher_gets_no_gradient():
    student = model()
    with LayerTaps(student, ["layer1"]):                         # student hooks must not reach the teacher
        ict = create_method("ict", alpha=0.5, w_max=10.0, rampup_steps=100)
        ict.setup(student)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ict.teacher.modules())
    with torch.no_grad():                                        # make the teacher differ from the student
        for p in ict.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = batch()
    torch.manual_seed(3)
    loss, metrics = ict.loss(student, b, step=40)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in ict.teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())

    torch.manual_seed(3)
    lam = sample_lambda(0.5)
    perm = torch.randperm(12)
    with torch.no_grad():
        loss_s = F.cross_entropy(student(b["x"]), b["y"])
        pt = F.softmax(ict.teacher.train()(b["x_u"]), -1)
        target = lam * pt + (1 - lam) * pt[perm]
        ps = F.softmax(student(lam * b["x_u"] + (1 - lam) * b["x_u"][perm]), -1)
        l_us = ((ps - target) ** 2).mean()
    w = 10.0 * math.exp(-5 * (1 - 40 / 100) ** 2)
    assert math.isclose(metrics["w"], w, rel_tol=1e-9)
    assert math.isclose(metrics["loss_us"], float(l_us), rel_tol=1e-4)
    assert math.isclose(float(loss.detach()), float(loss_s + w * l_us), rel_tol=1e-4)


def test_ict_needs_unlabeled_and_evaluates_teacher():
    student = model()
    ict = create_method("ict", rampup_steps=10)
    assert ict.needs_unlabeled
    ict.setup(student)
    with pytest.raises(ValueError, match="x_u"):
        ict.loss(student, {"x": torch.rand(2, 1, 28, 28), "y": torch.tensor([0, 1])}, 0)
    assert ict.eval_model(student) is ict.teacher
    assert create_method("ict", eval_teacher=False).eval_model(student) is student
    assert "ict_teacher" in ict.extra_state()
