"""The method registry and interface (zoo/methods/base.py): hyperparameters are checked by name with one-line
messages, ``--method-kwargs`` objects resolve to per-method hyperparameters (shared or keyed by method),
every method receives the run length through ``setup(model, total_steps=...)``, and the step counter that
drives schedules survives checkpoints."""
import re

import pytest
import torch

from zoo.methods import (ERM, Method, check_hparams, create_method, get_method_class, list_methods,
                         method_hparam_names, register_method, resolve_method_kwargs)
from zoo.methods.base import MethodStepFn

ALL = ["dai", "erm", "ict", "input_mixup", "irl", "lipschitz", "manifold_mixup", "semantic_noise", "snm_base",
       "snm_random"]


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and err.type is ValueError
    return msg


def test_every_method_is_registered_with_its_hyperparameters():
    assert list_methods() == ALL
    assert method_hparam_names("erm") == []
    assert method_hparam_names("manifold_mixup") == ["alpha", "layers", "loss"]
    assert "target_mix" in method_hparam_names("ict") and "mixup_labeled" in method_hparam_names("ict")
    assert get_method_class("erm") is ERM and create_method("erm").name == "erm"
    assert repr(create_method("manifold_mixup", alpha=0.5)) == "ManifoldMixup(alpha=0.5, layers=None, loss='soft_ce')"


def test_misspelled_hyperparameter_is_a_one_line_value_error_naming_method_name_and_accepted():
    with pytest.raises(ValueError) as err:
        create_method("manifold_mixup", alpah=2.0)
    msg = _one_line(err)
    assert "'manifold_mixup'" in msg and "'alpah'" in msg and "did you mean 'alpha'" in msg
    assert "accepted: alpha, layers, loss" in msg
    with pytest.raises(ValueError) as err:
        create_method("ict", wmax=10)
    assert "'wmax'" in _one_line(err) and "w_max" in str(err.value)
    with pytest.raises(ValueError) as err:
        create_method("erm", alpha=1.0)
    assert _one_line(err) == "method 'erm' takes no hyperparameters, got 'alpha'"
    with pytest.raises(ValueError) as err:
        create_method("manifld_mixup")
    assert "did you mean 'manifold_mixup'" in _one_line(err) and "registered methods: dai, erm" in str(err.value)
    check_hparams("irl", {"noise_kwargs": {"std": 0.1}, "K": 2})              # accepted names pass


def test_user_methods_with_kwargs_are_not_checked_by_name():
    @register_method("test_free_kwargs")
    class Free(Method):
        def __init__(self, **kw):
            super().__init__()
            self.hparams = kw

    try:
        assert method_hparam_names("test_free_kwargs") is None
        assert create_method("test_free_kwargs", anything=1).hparams == {"anything": 1}
        with pytest.raises(ValueError, match="already registered"):
            register_method("erm")(Free)
        assert Free.name == "test_free_kwargs"
        with pytest.raises(ValueError, match="name must be a non-empty string"):
            register_method("")(Free)
        with pytest.raises(ValueError, match="Method subclasses"):
            register_method("test_not_a_method")(int)
    finally:
        from zoo.methods import base
        base._METHODS.pop("test_free_kwargs", None)


def test_method_kwargs_resolve_shared_or_per_method_with_clear_errors():
    assert resolve_method_kwargs({}, ["erm", "ict"]) == {"erm": {}, "ict": {}}
    assert resolve_method_kwargs({"alpha": 0.5}, ["input_mixup", "manifold_mixup"]) == {
        "input_mixup": {"alpha": 0.5}, "manifold_mixup": {"alpha": 0.5}}
    per = {"manifold_mixup": {"alpha": 2.0}, "ict": {"w_max": 10}}
    assert resolve_method_kwargs(per, ["erm", "manifold_mixup", "ict"]) == {
        "erm": {}, "manifold_mixup": {"alpha": 2.0}, "ict": {"w_max": 10}}
    # a dict-valued hyperparameter is shared, not a method name
    assert resolve_method_kwargs({"noise_kwargs": {"std": 0.3}}, ["irl"]) == {"irl": {"noise_kwargs": {"std": 0.3}}}
    cases = {
        "neither a registered method (did you mean 'manifold_mixup'?)": ({"manifld_mixup": {"alpha": 2}}, ["manifold_mixup"]),
        "not being run": ({"ict": {"w_max": 1}}, ["erm"]),
        "mix per-method entries ('ict') with shared hyperparameters ('alpha')": ({"ict": {}, "alpha": 1}, ["ict"]),
        "method 'erm' takes no hyperparameters, got 'alpha' (shared method kwargs go to every method":
            ({"alpha": 2.0}, ["erm", "manifold_mixup"]),
        "method 'ict' has no hyperparameter 'wmax' (did you mean 'w_max'?)": ({"ict": {"wmax": 1}}, ["ict"]),
        "method 'irl' has no hyperparameter 'gama'": ({"gama": 1}, ["irl"]),
        "unknown method 'nope'; registered methods: dai, erm, ict": ({}, ["nope"]),
        "must be an object (a dict), got list": ([1, 2], ["erm"]),
        "neither a registered method nor a hyperparameter of erm, ict; registered methods: dai, erm, ict,":
            ({"zzz": {}}, ["erm", "ict"]),
        "is not being run (methods: erm, input_mixup)": ({"ict": {}}, ["erm", "input_mixup"]),
        "mix per-method entries ('ict', 'irl') with shared hyperparameters ('alpha', 'K')":
            ({"ict": {}, "irl": {}, "alpha": 1, "K": 2}, ["ict", "irl"]),
        "method 'erm' takes no hyperparameters, got 'alpha', 'beta'": ({"erm": {"alpha": 1, "beta": 2}}, ["erm"]),
    }
    for expected, (kwargs, methods) in cases.items():
        with pytest.raises(ValueError) as err:
            resolve_method_kwargs(kwargs, methods)
        assert expected in _one_line(err), (expected, str(err.value))
        if len(methods) == 1:                         # the shared-kwargs hint only when several methods run
            assert "shared method kwargs go to every method" not in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_every_method_receives_the_run_length_in_setup(name, make_resnet):
    from zoo.models.snm import SNMNet  # noqa: F401  (semantic noise needs its encoder / decoder model)
    import timm
    model = timm.create_model("snm_mnist_mlp") if name.startswith(("semantic", "snm")) else make_resnet()
    method = create_method(name)
    assert method.total_steps is None
    method.setup(model, total_steps=37)
    assert method.total_steps == 37
    for bad in (0, -1, 1.5, "10", True):
        with pytest.raises(ValueError, match="total_steps must be a positive integer"):
            create_method(name).setup(model, total_steps=bad)
    method.remove()


def test_step_counter_drives_the_loss_and_survives_a_checkpoint(image_batch, make_resnet):
    seen = []

    class Counting(Method):
        def loss(self, model, batch, step):
            seen.append(step)
            return super().loss(model, batch, step)

    method = Counting()
    model, b = make_resnet(), image_batch(4)
    kw = method.fit_kwargs()
    assert set(kw) == {"step_fn", "callbacks", "extra_state"} and kw["extra_state"]["method_step"] is kw["step_fn"]
    fn = kw["step_fn"]
    loss, metrics = fn(model, b)
    fn(model, b)
    assert seen == [0, 1] and 0 <= metrics["acc"] <= 1
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(model(b["x"]), b["y"]))
    state = fn.state_dict()
    again = MethodStepFn(method)
    again.load_state_dict(state)
    again(model, b)
    assert seen[-1] == 2 and method.step_fn(start=5).step == 5
    assert method.callbacks() == () and method.extra_state() == {} and method.eval_model(model) is model


# Every hyperparameter at a value other than its default (and valid), per method.
NON_DEFAULT = {
    "irl": dict(alpha=0.2, beta=0.7, gamma=1.5, preset="irl_batching", K=2, layers=["layer2", "logits"],
                layer_weights=[0.3, 2.0], lam=0.4, dist_reduction="sum", noise="gaussian",
                noise_kwargs={"std": 0.2}, eps=0.05, semi_supervised=True, seed=3),
    "dai": dict(alpha=0.2, M=3, layers=["layer1", "layer2"], layer_weights=[0.05, 0.15], ratio=5.0,
                seed_reduction="sum", augment="gaussian", augment_kwargs={"std": 0.1}, keep_batch_size=True,
                seed=4),
    "ict": dict(alpha=0.5, w_max=30.0, ema_decay=0.99, ema_warmup=False, rampup_fraction=0.5, rampup_steps=7,
                mixup_labeled=False, mixup_alpha=0.3, target_mix="logits", eval_teacher=False),
    "manifold_mixup": dict(alpha=0.5, layers=[0, "layer1"], loss="bce"),
    "input_mixup": dict(alpha=0.5, layers=["layer1"], loss="bce"),
    "lipschitz": dict(sigma=0.05, beta=2.0, K=3.0, output="probs", clip=True, seed=5),
    "semantic_noise": dict(perturb="random", lambda1=0.1, lambda2=0.5, sigma=0.3, rec_reduction="mean",
                           detach_noise=False, seed=6),
}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_recorded_hparams_name_every_hyperparameter_and_rebuild_the_method(name):
    """``method.hparams`` is what a run reports (results ``_hparams``, ``repr``): every hyperparameter with
    the value given, JSON-serialisable, and enough to build the same method again."""
    import json
    kw = NON_DEFAULT[name]
    assert set(kw) == set(method_hparam_names(name))                  # the table covers every hyperparameter
    m = create_method(name, **kw)
    assert m.hparams == kw
    json.dumps(m.hparams)
    assert create_method(name, **m.hparams).hparams == m.hparams


@pytest.mark.parametrize("name, key", [("irl", "noise"), ("dai", "augment")])
def test_a_noise_function_is_recorded_by_its_name(name, key):
    import functools

    def my_noise(x, g, scale=0.5):
        return scale * x

    assert create_method(name, **{key: my_noise}).hparams[key] == "my_noise"
    partial = create_method(name, **{key: functools.partial(my_noise, scale=0.3)}).hparams[key]
    assert isinstance(partial, str) and partial                        # no __name__: still a readable label


def test_erm_accuracy_metric_and_errors(image_batch, make_resnet):
    model, b = make_resnet().eval(), image_batch(8)
    with torch.no_grad():
        pred = model(b["x"]).argmax(-1)
    y = torch.where(torch.arange(8) < 6, pred, (pred + 1) % 10)        # 6 of 8 right
    _, metrics = create_method("erm").loss(model, {"x": b["x"], "y": y}, 0)
    assert metrics["acc"] == 0.75
    assert create_method("erm").hparams == {} and repr(create_method("erm")) == "Method()"
    with pytest.raises(ValueError, match=r"Method takes no hyperparameters, got \['alpha'\]"):
        Method(alpha=1.0)
    assert MethodStepFn(create_method("erm")).step == 0                # a fresh counter starts at step 0
    create_method("erm").setup(model, total_steps=1)                   # a one-step run is a run


@pytest.mark.parametrize("name, call, what", [
    ("dai", lambda m: m.augment_batch(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)), "augment_batch()"),
    ("irl", lambda m: m.noisy_copies(torch.nn.Linear(4, 2), torch.rand(2, 4), None), "noisy_copies()"),
    ("manifold_mixup", lambda m: m.set_mix(0, 0.5, torch.tensor([1, 0])), "set_mix()"),
])
def test_calls_before_setup_say_to_call_setup_first(name, call, what):
    m = create_method(name)
    with pytest.raises(ValueError, match=rf"^{type(m).__name__}\.setup\(model\) must be called before {re.escape(what)}$"):
        call(m)
