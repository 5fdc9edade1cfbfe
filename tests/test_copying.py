"""The copying task: the reference data format, and a short run that actually learns."""
import json
import math

import pytest
import torch

from tasks import copying
from zoo.engine import ConfigError


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


def test_curriculum_grows_the_dormant_length_linearly_then_holds_it():
    lengths = [copying.curriculum_length(50, s, (10, 8)) for s in range(12)]
    assert lengths == [10, 15, 20, 25, 30, 35, 40, 45, 50, 50, 50, 50]
    assert [copying.curriculum_length(50, s) for s in (0, 7, 10_000)] == [50, 50, 50]     # off: T throughout
    stream = copying.copying_batches(50, 4, seed=0, curriculum=(10, 8))
    widths = [next(stream)[0].shape[1] for _ in range(10)]           # T + 20 tokens per sequence
    assert widths == [length + 20 for length in lengths[:10]]
    resumed = copying.copying_batches(50, 4, seed=0, curriculum=(10, 8))
    state = copying.copying_batches(50, 4, seed=0, curriculum=(10, 8))
    for _ in range(3):
        next(state)
    resumed.load_state_dict(state.state_dict())                        # a checkpoint's stream state
    x_resumed, x_state = next(resumed)[0], next(state)[0]
    assert torch.equal(x_resumed, x_state) and x_resumed.shape[1] == lengths[3] + 20


def test_compile_option_reaches_the_rim_and_model_kwargs_override_it():
    cfg = copying.Config(models=["rim_lstm_seq_small", "lstm_seq_small"], model_kwargs='{"hidden_size": 96}')
    assert copying.model_kwargs(cfg, "rim_lstm_seq_small") == {"compile": True, "hidden_size": 96}   # the default
    cfg = copying.Config(models=["rim_lstm_seq_small"], compile=False)
    assert copying.model_kwargs(cfg, "rim_lstm_seq_small") == {"compile": False}
    cfg = copying.Config(models=["rim_lstm_seq_small"], compile=True, model_kwargs='{"compile": false}')
    assert copying.model_kwargs(cfg, "rim_lstm_seq_small")["compile"] is False


def test_each_model_gets_its_familys_learning_rate_or_its_own():
    """Issue 17: the LSTM baseline gets its own best learning rate (docs/copying.md's sweep), not the RIM's."""
    cfg = copying.Config()
    assert [copying.model_lr(cfg, m) for m in cfg.models] == [copying.DEFAULT_LR["rim"], copying.DEFAULT_LR["baseline"]]
    assert copying.DEFAULT_LR["rim"] != copying.DEFAULT_LR["baseline"]
    cfg = copying.Config(models=["rim_gru_seq_small", "lstm_seq_small"], lr=[1e-3])
    assert [copying.model_lr(cfg, m) for m in cfg.models] == [1e-3, 1e-3]
    cfg = copying.Config(models=["lstm_seq_small", "rim_gru_seq_small"], lr=[1e-3, 5e-3])
    assert [copying.model_lr(cfg, m) for m in cfg.models] == [1e-3, 5e-3]
    with pytest.raises(ConfigError, match="--lr takes one value for every model or one per model"):
        copying.Config(models=["lstm_seq_small", "rim_gru_seq_small"], lr=[1e-3, 2e-3, 3e-3])
    cfg = copying.Config()                    # schedules the same way: cosine for the RIM, constant for the LSTM
    assert [copying.model_schedule(cfg, m) for m in cfg.models] == ["cosine", "constant"]
    cfg = copying.Config(models=["rim_gru_seq_small", "lstm_seq_small"], schedule=["constant", "cosine"])
    assert [copying.model_schedule(cfg, m) for m in cfg.models] == ["constant", "cosine"]
    with pytest.raises(ConfigError, match="--schedule takes one value"):
        copying.Config(models=["lstm_seq_small"], schedule=["cosine", "constant"])


def test_schedule_warmup_and_curriculum_reach_the_training_loop(tmp_path, monkeypatch):
    import csv
    lengths = []
    batch = copying.copying_batch

    def recording(T, batch_size, generator=None, n_sequence=copying.NUM_RECALL):
        if batch_size == 2:                                            # training batches (tests use 4)
            lengths.append(T)
        return batch(T, batch_size, generator, n_sequence)

    monkeypatch.setattr(copying, "copying_batch", recording)
    built = []
    create = copying.zoo.create_model
    monkeypatch.setattr(copying.zoo, "create_model", lambda name, **kw: built.append(kw) or create(name, **kw))
    copying.main(["--compile","--models", "lstm_seq_small", "--model-kwargs", '{"hidden_size": 8, "embed_dim": 4}',
                  "--steps", "10", "--batch-size", "2", "--lr", "0.01", "--schedule", "cosine", "--warmup", "0.2",
                  "--curriculum", "1", "5", "--train-len", "6", "--test-lens", "6", "--eval-size", "4",
                  "--eval-every", "0", "--log-every", "1", "--workers", "1", "--out", str(tmp_path), "--no-progress"])
    rows = list(csv.DictReader(open(tmp_path / "lstm_seq_small" / "seed0" / "metrics.csv")))
    lrs = [float(r["train/lr"]) for r in rows if r.get("train/lr")]
    # the lr logged after step s is the one for step s: warm-up 0.005, 0.01 (2 steps), then cosine over 8
    expected = [0.01 * (s + 1) / 2 if s < 2 else 0.005 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(1, 11)]
    assert lrs == pytest.approx(expected[:len(lrs)], abs=1e-9) and len(lrs) == 10
    assert lengths == [1, 2, 3, 4, 5, 6, 6, 6, 6, 6]                    # --curriculum 1 5 up to --train-len 6
    assert built and all(kw["compile"] is True for kw in built)          # --compile reaches the model


@pytest.mark.slow
def test_short_run_learns_and_writes_results(tmp_path):
    out = tmp_path / "copy"
    results = copying.main([
        "--models", "rim_lstm_seq_small", "--train-len", "4", "--test-lens", "4", "12", "--symbols", "3",
        "--steps", "250", "--batch-size", "32", "--lr", "1e-2", "--eval-every", "0", "--eval-size", "256",
        "--workers", "1", "--out", str(out), "--no-progress", "--no-compile",
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


def test_the_documented_default_table_is_the_default_commands_and_drift_fails(tmp_path):
    """``benchmarks/check_copying_numbers.py`` (issue 17: a check that fails when a documented default command's
    numbers drift) reads the first table of ``docs/results.md#copying``: it must be the default command's, with
    a row for every default model and tested T; the documented numbers pass, one moved number fails."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "check_copying_numbers.py"
    spec = importlib.util.spec_from_file_location("check_copying_numbers", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    command, rows = check.documented("default")
    cfg = copying.Config()
    assert command == "python -m tasks.copying"
    assert set(rows) == {(m, str(T)) for m in cfg.models for T in cfg.test_lens}
    results = {m: {T: dict(rows[(m, T)]) for (mm, T) in rows if mm == m} for m in cfg.models}
    out = tmp_path / "results.json"
    out.write_text(json.dumps(results))
    assert check.main(["--results", str(out)]) == 0
    results[cfg.models[0]]["200"]["acc_recall"] -= 0.05
    out.write_text(json.dumps(results))
    assert check.main(["--results", str(out)]) == 1
