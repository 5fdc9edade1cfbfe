"""Multi-digit MNIST (thesis 10.4.2): canvases, labels, the train/test digit split, the metrics, and the
harness's options and a short learning run."""
import json

import pytest
import torch

from zoo.data import embedded_mnist_split
from zoo.data.multi_digit import DigitPool, MultiDigitDataset, digit_sources, multi_digit_batch


@pytest.fixture(scope="module")
def pools():
    return digit_sources("embedded")


def _composite(pool, index, rows_cols, canvas=64):
    """Rebuild one canvas by hand from the digits placed (max over digits)."""
    x = torch.zeros(canvas, canvas)
    for i, (r, c) in zip(index, rows_cols):
        x[r:r + 28, c:c + 28] = torch.maximum(x[r:r + 28, c:c + 28], pool.images[i, 0])
    return x


def test_labels_are_the_digits_placed_and_classes_are_distinct(pools):
    g = torch.Generator().manual_seed(0)
    x, y, k, idx, _ = multi_digit_batch(pools["train"], [1, 3, 5], 400, generator=g, return_layout=True)
    assert x.shape == (400, 1, 64, 64) and y.shape == (400, 10) and idx.shape == (400, 5)
    assert set(k.tolist()) == {1, 3, 5}
    for n in range(400):
        placed = idx[n][idx[n] >= 0]
        assert len(placed) == k[n]
        classes = pools["train"].labels[placed]
        assert len(set(classes.tolist())) == k[n]                              # distinct classes
        assert torch.equal(torch.nonzero(y[n]).flatten().sort().values, classes.sort().values)
    assert ((x >= 0) & (x <= 1)).all()


def test_canvas_is_the_max_composite_of_the_placed_digits(pools):
    g = torch.Generator().manual_seed(1)
    x, y, k, idx, pos = multi_digit_batch(pools["test"], [2, 4, 5], 30, generator=g, return_layout=True)
    assert pos.min() >= 0 and pos.max() <= 64 - 28
    overlaps = 0
    for n in range(30):
        used = idx[n] >= 0
        placed, corners = idx[n][used].tolist(), pos[n][used].tolist()
        assert torch.equal(_composite(pools["test"], placed, corners), x[n, 0])
        overlaps += any(abs(a[0] - b[0]) < 28 and abs(a[1] - b[1]) < 28 for a, b in zip(corners, corners[1:]))
    assert overlaps > 0                                                      # overlap happens (by max)


def test_train_canvases_use_only_train_digits_and_test_only_test_digits(pools):
    split = embedded_mnist_split()
    assert torch.equal(pools["train"].images, split["train"][0])
    assert torch.equal(pools["test"].images, split["test"][0])
    g = torch.Generator().manual_seed(2)
    _, _, _, idx, _ = multi_digit_batch(pools["train"], [1, 3], 2000, generator=g, return_layout=True)
    used = idx[idx >= 0]
    assert used.max() < len(split["train"][0])
    # the digits drawn are the train split's images (not equal to any test digit)
    drawn = pools["train"].images[used[:300]].flatten(1)
    assert (torch.cdist(drawn, split["test"][0].flatten(1)).min(1).values > 0).all()
    assert len(used.unique()) > 1500                                         # the whole pool is used
    test = MultiDigitDataset(pools["test"], 2, 50, seed=0)
    assert test.index.max() < len(split["test"][0]) and test.index.min() >= 0


def test_batches_are_deterministic_per_generator(pools):
    a = multi_digit_batch(pools["train"], [1, 3], 8, generator=torch.Generator().manual_seed(5))
    b = multi_digit_batch(pools["train"], [1, 3], 8, generator=torch.Generator().manual_seed(5))
    c = multi_digit_batch(pools["train"], [1, 3], 8, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    d1, d2 = MultiDigitDataset(pools["test"], 3, 20, seed=7), MultiDigitDataset(pools["test"], 3, 20, seed=7)
    assert torch.equal(d1.x, d2.x) and torch.equal(d1.y, d2.y) and (d1.y.sum(1) == 3).all()


def test_bad_inputs_are_one_line_errors(pools):
    with pytest.raises(ValueError, match="1..10"):
        multi_digit_batch(pools["train"], [0, 3], 4)
    with pytest.raises(ValueError, match="1..10"):
        multi_digit_batch(pools["train"], [11], 4)
    with pytest.raises(ValueError, match="every class"):
        DigitPool(torch.zeros(3, 1, 28, 28), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="source"):
        digit_sources("svhn")


# -- metrics and harness ---------------------------------------------------------------------------------
from tasks import multi_digit as harness  # noqa: E402


def test_exact_set_metrics_by_hand():
    y = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0, 0, 0.]])
    logits = torch.full((2, 10), -5.0)
    logits[0, 0], logits[0, 1] = 4.0, 0.5                       # both right
    logits[1, 2], logits[1, 3] = 3.0, 2.0                        # an extra digit predicted
    m = harness.exact_set_metrics(logits, y)
    assert m["exact_acc"] == 0.5
    assert m["topk_acc"] == 1.0                                   # with k given, the top-1 of row 2 is right
    assert m["f1_per_label"][3] == 0.0 and m["f1_per_label"][0] == 1.0 and m["f1_per_label"][9] == 1.0
    assert m["f1"] == pytest.approx(0.9)
    assert (m["fewer"], m["more"]) == (0.0, 0.5)                  # row 2 names one digit too many
    logits[0, 1] = -0.5                                           # digit 1 now below the threshold
    assert harness.exact_set_metrics(logits, y)["exact_acc"] == 0.0
    assert harness.exact_set_metrics(logits, y, threshold=0.3)["exact_acc"] == 0.5
    m = harness.exact_set_metrics(logits, y)
    assert (m["fewer"], m["more"]) == (0.5, 0.5)                  # row 1 now one short, row 2 one over
    logits[0, 1], logits[0, 2] = -5.0, 0.5                        # row 1: digit 2 named instead of digit 1
    m = harness.exact_set_metrics(logits, y)
    assert m["exact_acc"] == 0.0 and (m["fewer"], m["more"]) == (0.0, 0.5)   # wrong digit, right count


def test_summarize_averages_every_scalar_over_seeds_miscounts_included():
    cfg = harness.Config(models=["mnist_convnet"], train_counts=[1], test_counts=[2], seeds=2)
    def run(seed, fewer, more):
        tests = {k: {"exact_acc": 0.5, "topk_acc": 0.6, "f1": 0.7, "fewer": fewer, "more": more,
                     "f1_per_label": [1.0] * 10} for k in ("1", "2")}
        return {"model": "mnist_convnet", "seed": seed, "tests": tests}
    res = harness.summarize(cfg, [run(0, 0.2, 0.0), run(1, 0.4, 0.1)])["mnist_convnet"]["2"]
    assert res["fewer"] == pytest.approx(0.3) and res["fewer_per_seed"] == [0.2, 0.4]
    assert res["more"] == pytest.approx(0.05) and res["more_std"] > 0
    assert res["exact_acc"] == pytest.approx(0.5) and not res["seen"]


@pytest.mark.parametrize("argv, message", [
    (["--train-counts", "0", "3"], "--train-counts 0 is out of range"),
    (["--test-counts", "11"], "--test-counts 11 is out of range"),
    (["--models", "nope_net"], "not a registered model"),
    (["--model-kwargs", '{"mnist_convnet": {"d_k": 8}}'], "cannot be built"),
    (["--data", "svhn"], "invalid choice"),
    (["--threshold", "1.5"], "--threshold 1.5 is out of range"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        harness.parse_config(harness.Config, argv + ["--out", str(tmp_path / "o")], prog="python -m tasks.multi_digit")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_missing_mnist_is_a_config_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        harness.parse_config(harness.Config, ["--data", "mnist", "--data-root", str(tmp_path), "--out",
                                              str(tmp_path / "o")])
    assert e.value.code == 2 and "--download" in capsys.readouterr().err


def test_counts_and_timm_models():
    cfg = harness.Config(train_counts=[1, 5], test_counts=[2, 3, 4], models=["resnet18"], model_kwargs="{}")
    assert cfg.counts == [1, 2, 3, 4, 5]
    assert harness.build_model("resnet18", {})(torch.zeros(2, 1, 64, 64)).shape == (2, 10)


@pytest.mark.slow
def test_short_run_learns_above_the_majority_set_and_writes_every_output(tmp_path):
    # learning: the default baseline alone (600 steps, ~35 s on 1 thread under load; at 400 steps the 1-digit
    # exact-set accuracy is still about 0.3)
    learn = harness.main(["--models", "mnist_convnet", "--train-counts", "1", "2", "--test-counts", "3",
                          "--steps", "600", "--test-size", "200", "--seeds", "1", "--workers", "1",
                          "--samples", "0", "--out", str(tmp_path / "learn"), "--no-progress"])
    # the most common set of one digit is right on 1 canvas in 10
    assert learn["mnist_convnet"]["1"]["exact_acc"] > 0.3
    # outputs: both models, the NFM one (about 10x the baseline's step cost) for a few steps only
    out = tmp_path / "run"
    harness.main(["--models", "mnist_convnet", "nfm_mnist_convnet", "--train-counts", "1", "2",
                  "--test-counts", "3", "--steps", "5", "--test-size", "50", "--seeds", "1", "--workers", "2",
                  "--samples", "3", "--attention-images", "12", "--eval-every", "2", "--out", str(out),
                  "--no-progress"])
    saved = json.loads((out / "results.json").read_text())
    for name in ("mnist_convnet", "nfm_mnist_convnet"):
        assert set(saved[name]) == {"1", "2", "3"}
        assert {"exact_acc", "exact_acc_std", "exact_acc_per_seed", "f1", "f1_per_label"} <= set(saved[name]["2"])
        assert saved[name]["1"]["seen"] and not saved[name]["3"]["seen"]
    assert (out / "accuracy_vs_count.png").stat().st_size > 0 and (out / "samples.png").exists()
    assert (out / "attention_nfm_mnist_convnet.png").exists()
    assert (out / "curves.png").stat().st_size > 0 and not (tmp_path / "learn" / "curves.png").exists()
