"""The copying task: the reference data format, and a short run that actually learns."""
import json
import math

import pytest
import torch

from tasks import copying


def test_batch_follows_reference_format():
    T = 7
    x, y = copying.copying_batch(T, 32, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (32, T + 20) and x.dtype == torch.long
    seq = x[:, :10]
    assert ((seq >= 1) & (seq <= 8)).all()                           # data symbols 1..8
    assert (x[:, 10:10 + T - 1] == 0).all()                          # T-1 blanks
    assert (x[:, 10 + T - 1] == copying.MARKER).all()                # then the marker
    assert (x[:, T + 10:] == 0).all()                                # then 10 blanks
    assert (y[:, :T + 10] == 0).all() and torch.equal(y[:, T + 10:], seq)   # recall the symbols


def test_metrics_separate_recall_from_blanks():
    x, y = copying.copying_batch(5, 16, torch.Generator().manual_seed(0))
    perfect = torch.nn.functional.one_hot(y, 10).float() * 50
    m = copying.copying_metrics(perfect, y)
    assert m["acc_recall"] == 1.0 and m["ce_recall"] < 1e-6
    uniform_recall = perfect.clone()
    uniform_recall[:, -10:] = 0                                      # blanks right, recall uniform over 10
    m = copying.copying_metrics(uniform_recall, y)
    assert math.isclose(m["ce_recall"], math.log(10), rel_tol=1e-5)
    assert math.isclose(m["ce_all"], math.log(10) * 10 / 25, rel_tol=1e-4)   # diluted by the blanks


@pytest.mark.slow
def test_short_run_learns_and_writes_results(tmp_path):
    out = tmp_path / "copy"
    results = copying.main([
        "--models", "rim_lstm_seq_small", "--train-len", "4", "--test-lens", "4", "12", "--symbols", "3",
        "--steps", "250", "--batch-size", "32", "--lr", "1e-2", "--eval-every", "0", "--eval-size", "256",
        "--workers", "1", "--out", str(out), "--no-progress",
        "--model-kwargs", '{"hidden_size": 96, "embed_dim": 32}'])
    r = results["rim_lstm_seq_small"]["4"]
    assert r["ce_recall"] < 0.5 * copying.CHANCE_CE                  # well below chance (ln 8)
    assert r["acc_recall"] > 0.6                                      # chance is 1/8
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["rim_lstm_seq_small"]["12"]) >= {"ce_all", "ce_recall", "acc_recall"}
    assert (out / "results.md").read_text().count("| rim_lstm_seq_small") == 2       # one row per tested T
    assert (out / "activations.png").stat().st_size > 0 and (out / "curves.png").exists()
    run = out / "rim_lstm_seq_small" / "seed0"
    assert (run / "checkpoint.pt").exists() and (run / "metrics.csv").exists()
    assert not list(run.glob("*.tmp"))                                # atomic writes left no temp files
