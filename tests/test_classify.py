"""The classification harness end to end on the embedded digits: every method trains a small timm model
and an own network above chance, results files are written, --eval-only reproduces the numbers."""
import json

import pytest
import torch
from torch import nn

import zoo  # noqa: F401
from tasks import classify
from zoo.engine import ConfigError, fit, load_checkpoint, seed_everything
from zoo.methods import create_method, list_methods

torch.set_num_threads(1)
CHANCE = 0.1


@pytest.mark.slow
def test_harness_trains_mixup_family_beats_chance_and_eval_only_matches(tmp_path):
    out = tmp_path / "run"
    args = ["--method", "erm", "input_mixup", "manifold_mixup", "--steps", "80", "--eval-every", "0",
            "--eval-size", "200", "--workers", "1", "--no-progress", "--out", str(out),
            "--fgsm-eps", "0.1", "--noise-std", "0.3"]
    res = classify.main(args)
    for m in ("erm", "input_mixup", "manifold_mixup"):
        assert res[m]["acc"] > 3 * CHANCE, (m, res[m]["acc"])
        assert {"nll", "ece", "fgsm/0.1", "noise/0.3", "rot/20", "zoom/1.2", "occl16"} <= set(res[m])
        assert (out / m / "seed0" / "checkpoint.pt").exists() and (out / m / "seed0" / "metrics.csv").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["manifold_mixup"]["_hparams"]["alpha"] == 2.0
    md = (out / "results.md").read_text()
    assert "manifold_mixup" in md and "fgsm/0.1" in md and (out / "robustness.png").exists()
    payload = load_checkpoint(out / "manifold_mixup" / "seed0" / "checkpoint.pt")
    assert payload["step"] == 80 and payload["extra"]["method_step"]["step"] == 80
    ev = classify.main(["--eval-only", str(out / "erm" / "seed0"), "--out", str(tmp_path / "ev"),
                        "--eval-size", "200", "--fgsm-eps", "0.1", "--noise-std", "0.3"])
    (row,) = [v for k, v in ev.items() if not k.startswith("_")]
    assert row["acc"] == pytest.approx(res["erm"]["acc"]) and row["occl16"] == pytest.approx(res["erm"]["occl16"])


@pytest.mark.slow
def test_harness_ict_semi_supervised_beats_chance(tmp_path):
    res = classify.main(["--method", "ict", "--labels-per-class", "20", "--steps", "80", "--eval-every", "0",
                         "--evaluations", "clean", "--batch-size", "32", "--unlabeled-batch-size", "32",
                         "--method-kwargs", '{"ict": {"w_max": 10.0, "alpha": 1.0}}',
                         "--workers", "1", "--no-progress", "--out", str(tmp_path)])
    assert res["ict"]["acc"] > 3 * CHANCE
    assert res["ict"]["_hparams"]["w_max"] == 10.0


def test_method_kwargs_shared_or_per_method_and_unknown_names():
    cfg = classify.parse_config(classify.Config, ["--method", "manifold_mixup", "--method-kwargs", '{"alpha": 0.5}'])
    assert classify.method_hparams(cfg, "manifold_mixup") == {"alpha": 0.5}
    cfg = classify.parse_config(classify.Config, ["--method", "input_mixup", "erm",
                                                  "--method-kwargs", '{"input_mixup": {"alpha": 0.2}}'])
    assert classify.method_hparams(cfg, "input_mixup") == {"alpha": 0.2}
    assert classify.method_hparams(cfg, "erm") == {}
    with pytest.raises(ConfigError, match="registered methods"):
        classify.Config(method=["nope"])
    with pytest.raises(ConfigError, match="neither a registered method"):
        classify.Config(method_kwargs='{"manifold_mixpu": {"alpha": 0.5}}')


def test_few_labels_split_and_unlabeled_batches():
    data = classify.load_dataset("digits", labels_per_class=5)
    assert len(data["train"][0]) == 50 and len(data["unlabeled"][0]) == 3950
    b = next(classify.method_batches(data, 8, 16, True, seed=0))
    assert b["x"].shape == (8, 1, 28, 28) and b["x_u"].shape == (16, 1, 28, 28) and b["y"].shape == (8,)


class OwnNet(nn.Module):
    """A small user network without timm's feature_info: taps default to its top-level children."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.block1 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                    nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["erm", "input_mixup", "manifold_mixup", "ict"])
def test_every_method_trains_own_network_above_chance(name):
    data = classify.load_dataset("digits", labels_per_class=50 if name == "ict" else 0)
    seed_everything(0)
    model = OwnNet()
    method = create_method(name)
    method.setup(model, total_steps=120)
    if name == "manifold_mixup":
        assert method.layers == ["input", "stem", "block1"]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    stream = classify.method_batches(data, 32, 32, method.needs_unlabeled, seed=0)
    fit(model, opt, stream, steps=120, progress=False, **method.fit_kwargs())
    net = method.eval_model(model)
    x, y = data["test"]
    acc = classify.test_accuracy(net, x, y, torch.device("cpu"))["acc"]
    assert acc > 3 * CHANCE, (name, acc)
    assert set(list_methods()) >= {"erm", "input_mixup", "manifold_mixup", "ict"}


def test_results_table_shows_mean_and_std_over_seeds(tmp_path):
    """With several seeds every cell of results.md is the mean ± sample std that results.json holds."""
    out = tmp_path / "run"
    res = classify.main(["--method", "erm", "--seeds", "2", "--steps", "2", "--eval-every", "0", "--eval-size", "50",
                         "--evaluations", "clean", "--workers", "1", "--no-progress", "--out", str(out)])
    md = (out / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| erm "))
    assert f"{res['erm']['acc']:.3f} ± {res['erm']['_std']['acc']:.3f}" in row
    assert "mean ± std over 2 seeds" in md
