"""The method registry and interface (zoo/methods/base.py): hyperparameters are checked by name with one-line
messages, ``--method-kwargs`` objects resolve to per-method hyperparameters (shared or keyed by method),
every method receives the run length through ``setup(model, total_steps=...)``, and the step counter that
drives schedules survives checkpoints."""
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
        with pytest.raises(ValueError):
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
        "unknown method 'nope'": ({}, ["nope"]),
        "must be an object": ([1, 2], ["erm"]),
    }
    for expected, (kwargs, methods) in cases.items():
        with pytest.raises(ValueError) as err:
            resolve_method_kwargs(kwargs, methods)
        assert expected in _one_line(err), (expected, str(err.value))


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
