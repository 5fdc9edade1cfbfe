"""Every model the zoo registers builds through timm's registry and through zoo's, and trains."""
import pytest
import timm
import torch

import zoo


def _example_input(model):
    size = model.pretrained_cfg.get("input_size")
    if size is None:                                                  # sequence models: token ids
        return torch.randint(0, model.num_tokens or 10, (2, 12))
    if getattr(model, "input_kind", "image") == "video":                      # video models: (batch, time, C, H, W)
        return torch.rand(2, 3, *size)
    return torch.randn(2, *size)


def _total(out):
    if torch.is_tensor(out):
        return out.float().sum()
    if isinstance(out, dict):
        out = list(out.values())
    return sum(_total(o) for o in out if torch.is_tensor(o) or isinstance(o, (tuple, list, dict)))


def test_zoo_models_are_listed_and_filterable():
    names = zoo.list_models()
    assert {"rim_lstm_seq", "rim_gru_seq", "lstm_seq", "gru_seq", "rim_lstm_seq_official"} <= set(names)
    assert all(n.startswith("rim") for n in zoo.list_models("rim*"))
    assert set(zoo.list_models("rim*")) <= set(timm.list_models("rim*"))


@pytest.mark.parametrize("name", zoo.list_models())
def test_model_builds_through_timm_and_zoo_and_trains(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    assert type(model) is type(zoo.create_model(name))
    assert model.pretrained_cfg["architecture"] == name
    out = model(_example_input(model))
    loss = _total(out)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "some parameters got no gradient"


def test_create_model_unknown_name_lists_zoo_models():
    with pytest.raises(RuntimeError, match="rim_lstm_seq"):
        zoo.create_model("rim_does_not_exist")


def test_sequence_model_kwargs_reach_the_rim_core():
    m = timm.create_model("rim_lstm_seq", num_tokens=12, num_classes=7, k_active=3, hidden_size=120,
                          embed_dim=16, cell="gru")
    assert m.core.cells[0].k_active == 3 and m.core.cells[0].cell == "gru"
    assert m(torch.randint(0, 12, (2, 5))).shape == (2, 5, 7)
    vec = timm.create_model("lstm_seq_small", input_size=3, num_classes=2)
    assert vec(torch.randn(2, 5, 3)).shape == (2, 5, 2)
    with pytest.raises(ValueError, match="exactly one of num_tokens"):
        timm.create_model("lstm_seq", num_tokens=4, input_size=3)
