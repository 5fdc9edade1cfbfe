"""Sequential MNIST at other resolutions (thesis ch. 8.4.1): the reference's pixel sequences, the fixed
splits, selection at the best validation step, and short runs that learn and test at unseen sizes."""
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tasks import seq_mnist
from zoo.data import embedded_mnist_split
from zoo.data.seq_mnist import (binarize, nearest_indices, pixel_sequences, resize_nearest, seq_mnist_batches,
                                seq_mnist_splits)
from zoo.engine import ConfigError

TINY_RIM = {"hidden_size": 24, "embed_dim": 8, "num_units": 3, "k_active": 2}


# --- pixels -> sequences --------------------------------------------------------------------------------
def test_nearest_indices_on_known_arrays():
    # output i reads source floor(i * in / out): the top-left convention of F.interpolate(mode="nearest")
    assert nearest_indices(28, 14).tolist() == list(range(0, 28, 2))            # even rows, not the odd ones
    assert nearest_indices(28, 16).tolist() == [0, 1, 3, 5, 7, 8, 10, 12, 14, 15, 17, 19, 21, 22, 24, 26]
    assert nearest_indices(28, 19).tolist() == [0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 19, 20, 22, 23, 25, 26]
    assert nearest_indices(28, 24).tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19, 21,
                                                22, 23, 24, 25, 26]
    assert nearest_indices(28, 28).tolist() == list(range(28))
    assert nearest_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert nearest_indices(3, 7).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert nearest_indices(4, 3).tolist() == [0, 1, 2]
    # float32 like the reference: 23 * (28 / 46) rounds just below 14
    assert nearest_indices(28, 46)[23] == 13 and (23 * 28) // 46 == 14


def test_resize_matches_the_references_interpolate_at_every_size():
    img = torch.rand(3, 1, 28, 28)
    for size in range(1, 129):
        ref = F.interpolate(img, size=(size, size), mode="nearest")
        assert torch.equal(resize_nearest(img, size), ref), size
    wide = torch.rand(2, 5, 9)                                      # any leading dims, non-square source
    assert torch.equal(resize_nearest(wide, 4), F.interpolate(wide.unsqueeze(1), size=(4, 4), mode="nearest")[:, 0])


def test_pil_and_nearest_exact_use_pixel_centres_and_differ():
    from PIL import Image

    src = np.tile(np.arange(28, dtype=np.uint8)[:, None], (1, 28))          # pixel value = its row
    for size in (14, 16, 19, 24):
        pil = np.asarray(Image.fromarray(src).resize((size, size), Image.NEAREST))[:, 0]
        assert not np.array_equal(pil, nearest_indices(28, size).numpy()), size
    assert np.asarray(Image.fromarray(src).resize((14, 14), Image.NEAREST))[:, 0].tolist() == list(range(1, 28, 2))


def test_binarize_is_the_references_round_at_one_half():
    grey = torch.arange(256, dtype=torch.float32) / 255                       # every MNIST grey level
    assert torch.equal(binarize(grey), grey.round().long())
    assert binarize(torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0])).tolist() == [0, 0, 0, 1, 1]
    assert binarize(torch.tensor([127 / 255, 128 / 255])).tolist() == [0, 1]


def test_sequences_are_row_major_with_the_papers_lengths():
    rows = torch.arange(28.0).view(28, 1).expand(28, 28)
    cols = torch.arange(28.0).view(1, 28).expand(28, 28)
    img = ((rows * 28 + cols) / 1000).view(1, 1, 28, 28)                    # pixel value encodes its position
    for size, steps in ((14, 196), (16, 256), (19, 361), (24, 576)):
        seq = pixel_sequences(img, size, "pixels")
        assert seq.shape == (1, steps, 1) and seq.dtype == torch.float32
        idx = nearest_indices(28, size)
        expect = torch.tensor([(r * 28 + c) / 1000 for r in idx.tolist() for c in idx.tolist()])
        assert torch.allclose(seq[0, :, 0], expect)                  # step r * size + c is (row r, col c)
    x, _ = embedded_mnist_split()["test"]
    tok = pixel_sequences(x[:5], 19)
    assert tok.shape == (5, 361) and tok.dtype == torch.int64 and set(tok.unique().tolist()) == {0, 1}
    assert torch.equal(tok, binarize(F.interpolate(x[:5], size=(19, 19), mode="nearest")).view(5, 361))


def test_every_size_comes_directly_from_28x28():
    x, _ = embedded_mnist_split()["test"]
    x = x[:50]
    direct = pixel_sequences(x, 24)
    via_14 = pixel_sequences(resize_nearest(x, 14), 24)                       # 28 -> 14 -> 24 loses detail
    assert torch.equal(direct, binarize(F.interpolate(x, size=(24, 24), mode="nearest")).view(50, 576))
    assert not torch.equal(direct, via_14)


# --- splits and streams ---------------------------------------------------------------------------------
def test_embedded_split_is_fixed_and_disjoint():
    a, b = seq_mnist_splits("digits"), seq_mnist_splits("digits")
    for k in ("train", "val", "test"):
        assert torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1])
    assert [len(a[k][0]) for k in ("train", "val", "test")] == [3200, 800, 1000]
    ref = embedded_mnist_split()
    assert torch.equal(a["test"][0], ref["test"][0])                           # zoo.data's fixed test split
    assert torch.bincount(a["test"][1]).tolist() == [100] * 10
    flat = lambda t: {bytes(r) for r in (t.view(len(t), -1) * 255).round().to(torch.uint8).numpy()}  # noqa: E731
    assert not flat(a["train"][0]) & flat(a["val"][0])
    assert flat(a["train"][0]) | flat(a["val"][0]) == flat(ref["train"][0])
    assert seq_mnist_splits("digits", val_fraction=0)["val"] is None


def _write_idx(root: Path, n_train: int = 50, n_test: int = 10) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + g.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())


def test_full_mnist_from_a_local_idx_folder_gets_the_papers_4_to_1_split(tmp_path):
    _write_idx(tmp_path)
    s = seq_mnist_splits("mnist", tmp_path)
    assert [len(s[k][0]) for k in ("train", "val", "test")] == [40, 10, 10]      # 60k -> 48k / 12k
    assert s["train"][0].shape[1:] == (1, 28, 28) and 0 <= s["train"][0].min() and s["train"][0].max() <= 1
    with pytest.raises(FileNotFoundError, match="download"):
        seq_mnist_splits("mnist", tmp_path / "nothing")
    cfg = seq_mnist.Config(dataset="mnist", data_root=str(tmp_path), out=str(tmp_path / "out"))
    assert cfg.dataset == "mnist"                                              # the folder is found: no error
    with pytest.raises(ConfigError, match="add --download"):
        seq_mnist.Config(dataset="mnist", data_root=str(tmp_path / "nothing"))


def test_training_stream_is_checkpointable_and_yields_token_sequences():
    train = seq_mnist_splits("digits")["train"]
    s = seq_mnist_batches(train, 14, 16, seed=3)
    x, y = next(s)
    assert x.shape == (16, 196) and x.dtype == torch.int64 and y.shape == (16,)
    for _ in range(250):                                                       # past an epoch boundary
        next(s)
    state = s.state_dict()
    ahead = [next(s) for _ in range(3)]
    t = seq_mnist_batches(train, 14, 16, seed=3)
    t.load_state_dict(state)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ahead, (next(t) for _ in range(3))))
    xp, _ = next(seq_mnist_batches(train, 16, 4, seed=0, input="pixels"))
    assert xp.shape == (4, 256, 1) and xp.dtype == torch.float32


# --- model pieces ---------------------------------------------------------------------------------------
def test_classification_reads_the_last_step():
    torch.manual_seed(0)
    for name, kw in (("rim_lstm_seq_small", TINY_RIM), ("lstm_seq_small", {"hidden_size": 16, "embed_dim": 8})):
        m = seq_mnist.build_model(name, "tokens", kw).eval()
        x = torch.randint(0, 2, (3, 30))
        assert torch.allclose(seq_mnist.classify(m, x), m(x)[:, -1], atol=1e-6)
        x2 = x.clone()
        x2[:, -1] = 1 - x2[:, -1]                                              # the last pixel matters
        assert not torch.allclose(seq_mnist.classify(m, x2), seq_mnist.classify(m, x))
    m = seq_mnist.build_model("lstm_seq_small", "pixels", {"hidden_size": 16, "embed_dim": 8})
    assert seq_mnist.classify(m, torch.rand(2, 25, 1)).shape == (2, 10)


def test_best_weights_keep_the_best_validation_step_across_a_checkpoint():
    m = torch.nn.Linear(2, 2)
    best = seq_mnist.BestWeights(m)
    for step, acc in ((10, 0.3), (20, 0.6), (30, 0.6), (40, 0.5)):
        best.track(step, m)
        with torch.no_grad():
            m.weight.fill_(step)
        best.offer(acc)
    assert (best.step, best.acc) == (20, 0.6)                                  # the earliest of the ties
    state = best.state_dict()
    other = seq_mnist.BestWeights(m)
    other.load_state_dict(state)
    other.restore()
    assert (m.weight == 20).all() and other.step == 20


def test_per_model_kwargs_and_their_errors():
    cfg = seq_mnist.Config(compile=False,
                           model_kwargs=json.dumps({"rim_lstm_seq_small": TINY_RIM, "lstm_seq_small": {}}))
    assert seq_mnist.model_kwargs(cfg, "rim_lstm_seq_small") == {"compile": False, **TINY_RIM}
    assert seq_mnist.model_kwargs(cfg, "lstm_seq_small") == {"compile": False}
    # the default: both models at hidden 96, compiled RIM step; '{}' gives the registered sizes
    cfg = seq_mnist.Config()
    assert seq_mnist.model_kwargs(cfg, "rim_lstm_seq_small") == {"compile": True, "hidden_size": 96}
    assert seq_mnist.model_kwargs(cfg, "lstm_seq_small") == {"compile": True, "hidden_size": 96}
    assert seq_mnist.model_kwargs(seq_mnist.Config(model_kwargs="{}"), "lstm_seq_small") == {"compile": True}
    cfg = seq_mnist.Config(models=["rim_gru_seq", "gru_seq"])          # default entries of other models ignored
    assert seq_mnist.model_kwargs(cfg, "gru_seq") == {"compile": True}
    cfg = seq_mnist.Config(compile=True, model_kwargs='{"rim_lstm_seq_small": {"compile": false}}')
    assert seq_mnist.model_kwargs(cfg, "rim_lstm_seq_small") == {"compile": False}     # --model-kwargs override
    assert seq_mnist.model_kwargs(cfg, "lstm_seq_small") == {"compile": True}
    with pytest.raises(ConfigError, match="not in --models"):
        seq_mnist.Config(model_kwargs='{"gru_seq": {}}')
    with pytest.raises(ConfigError, match="mixes"):
        seq_mnist.Config(model_kwargs='{"lstm_seq_small": {}, "hidden_size": 8}')
    with pytest.raises(ConfigError, match="k_active"):
        seq_mnist.Config(model_kwargs='{"rim_lstm_seq_small": {"k_active": 9}}')


def test_one_learning_rate_per_model_and_the_schedule_reach_each_run(tmp_path):
    import csv
    import math
    kwargs = {"rim_lstm_seq_small": TINY_RIM, "lstm_seq_small": {"hidden_size": 8, "embed_dim": 4}}
    seq_mnist.main(["--models", "rim_lstm_seq_small", "lstm_seq_small", "--lr", "0.02", "0.01",
                    "--schedule", "cosine", "--warmup", "0.25", "--steps", "8", "--batch-size", "4",
                    "--train-resolution", "4", "--test-resolutions", "4", "--eval-every", "0", "--val-size", "8",
                    "--test-size", "8", "--log-every", "1", "--workers", "1", "--no-progress", "--no-compile",
                    "--model-kwargs", json.dumps(kwargs), "--out", str(tmp_path)])
    for name, peak in (("rim_lstm_seq_small", 0.02), ("lstm_seq_small", 0.01)):
        rows = csv.DictReader(open(tmp_path / name / "seed0" / "metrics.csv"))
        lrs = [float(r["train/lr"]) for r in rows if r.get("train/lr")]
        # the lr logged after step s is the one for step s: warm-up over 2 steps, then cosine over 6
        expected = [peak * (s + 1) / 2 if s < 2 else peak / 2 * (1 + math.cos(math.pi * (s - 2) / 6)) for s in range(1, 9)]
        assert lrs == pytest.approx(expected, abs=1e-9)
    cfg = seq_mnist.Config(models=["rim_lstm_seq_small", "lstm_seq_small"], lr=[3e-3])
    assert [seq_mnist.model_lr(cfg, n) for n in cfg.models] == [3e-3, 3e-3]          # one value: every model
    cfg = seq_mnist.Config()
    assert [seq_mnist.model_lr(cfg, n) for n in cfg.models] == [4e-3, 2e-3]          # the default, per model
    with pytest.raises(ConfigError, match="one per model"):
        seq_mnist.Config(models=["rim_lstm_seq_small", "lstm_seq_small"], lr=[1e-3, 2e-3, 3e-3])
    cfg = seq_mnist.Config(models=["gru_seq", "rim_gru_seq", "lstm_seq"])          # no --lr: per family
    assert [seq_mnist.model_lr(cfg, n) for n in cfg.models] == [2e-3, 4e-3, 2e-3]


# --- runs -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_run_learns_above_chance_and_tests_unseen_resolutions(tmp_path):
    out = tmp_path / "sm"
    kwargs = {"rim_lstm_seq_small": {"hidden_size": 48, "embed_dim": 16, "num_units": 3, "k_active": 2},
              "lstm_seq_small": {"hidden_size": 48, "embed_dim": 16}}
    results = seq_mnist.main([
        "--train-resolution", "7", "--test-resolutions", "7", "9", "5", "--steps", "300", "--batch-size", "32",
        "--lr", "3e-3", "--schedule", "constant", "--eval-every", "100", "--val-size", "200", "--test-size", "300",
        "--workers", "1", "--seeds", "1",
        "--model-kwargs", json.dumps(kwargs), "--out", str(out), "--no-progress", "--no-compile"])
    saved = json.loads((out / "results.json").read_text())
    for name in ("rim_lstm_seq_small", "lstm_seq_small"):
        assert set(saved[name]) == {"7", "9", "5"}
        for size in ("7", "9", "5"):
            assert set(saved[name][size]) == {"acc", "acc_std", "per_seed"}
            assert 0 <= saved[name][size]["acc"] <= 1 and len(saved[name][size]["per_seed"]) == 1
        assert results[name]["7"]["acc"] > 0.3                                 # chance is 0.1
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "activity.png").stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "7x7 (train)" in md and "9x9" in md and "| rim_lstm_seq_small" in md
    assert "ink" in md                                                          # the unit activity rates
    run = out / "rim_lstm_seq_small" / "seed0"
    assert (run / "checkpoint.pt").exists() and "eval/val_acc" in (run / "metrics.csv").read_text()


@pytest.mark.slow
def test_unit_activity_masks_follow_the_digit():
    torch.manual_seed(0)
    m = seq_mnist.build_model("rim_lstm_seq_small", "tokens", TINY_RIM)
    x, _ = embedded_mnist_split()["test"]
    act = seq_mnist.unit_activity(m, x[:20], [6, 9], "tokens", torch.device("cpu"))
    assert set(act["digit"]) == {"6", "9"}
    assert np.asarray(act["digit"]["9"]).shape == (3, 81)
    assert act["ink"]["9"] == pixel_sequences(x[:1], 9)[0].float().tolist()
    on = np.asarray(act["digit"]["9"]).sum(0)
    assert (on == 2).all()                                                      # k_active units at every pixel
    for rate in (act["ink_rate"]["6"], act["background_rate"]["6"]):
        assert len(rate) == 3 and all(0 <= r <= 1 for r in rate)
    assert abs(sum(act["ink_rate"]["6"]) - 2) < 1e-5                              # k_active per ink pixel
