"""The shared engine: atomic checkpoints, resume equals an uninterrupted run, CLI, logging, seed summaries."""
import csv
import math
from dataclasses import dataclass
from typing import List

import pytest
import torch

from zoo.engine import (MetricLogger, arg, atomic_write, fit, load_checkpoint, parse_config, save_checkpoint,
                        seed_everything, summarize_seeds)


def test_atomic_write_keeps_old_file_when_writer_crashes(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, step=1)

    def crash(f):
        f.write(b"partial")
        raise RuntimeError("disk died")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert load_checkpoint(path)["step"] == 1                         # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]       # no temporary file left behind


def _run(tmp_path, steps, resume=False, seed=0):
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)) for _ in range(20)]
    batches = iter(data[steps - 10:] if resume else data)

    def step_fn(m, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(m(x), y), {}

    fit(model, opt, batches, step_fn, steps=steps, out_dir=tmp_path, resume=resume, progress=False, log_every=5)
    return model


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    full = _run(tmp_path / "full", 20)
    _run(tmp_path / "split", 10)
    resumed = _run(tmp_path / "split", 20, resume=True, seed=123)    # different seed: state comes from the file
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    rows = list(csv.DictReader((tmp_path / "split" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]


def test_fit_stops_on_non_finite_loss(tmp_path):
    model = torch.nn.Linear(2, 1)
    batches = iter([torch.ones(1, 2)] * 3)
    with pytest.raises(FloatingPointError, match="step 1"):
        fit(model, torch.optim.SGD(model.parameters(), 0.1), batches,
            lambda m, b: (m(b).sum() * float("nan"), {}), steps=3, progress=False)


@dataclass
class _Cfg:
    """A test config."""
    steps: int = arg(10, help="steps")
    lr: float = arg(1e-3, help="lr")
    models: List[str] = arg(["a", "b"], help="models")
    flag: bool = arg(True, help="a flag")
    mode: str = arg("x", help="mode", choices=["x", "y"])


def test_parse_config_types_lists_bools_choices():
    cfg = parse_config(_Cfg, ["--steps", "3", "--models", "m1", "m2", "m3", "--no-flag", "--lr", "0.5"])
    assert cfg == _Cfg(steps=3, lr=0.5, models=["m1", "m2", "m3"], flag=False, mode="x")
    assert parse_config(_Cfg, []) == _Cfg()
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--mode", "z"])


def test_summarize_seeds_mean_and_sample_std():
    s = summarize_seeds([{"acc": 1.0}, {"acc": 2.0}, {"acc": 3.0}])["acc"]
    assert s["mean"] == 2.0 and math.isclose(s["std"], 1.0) and s["n"] == 3
    assert summarize_seeds([{"acc": 0.5}])["acc"]["std"] == 0.0


def test_metric_logger_widens_header_for_new_metrics(tmp_path):
    log = MetricLogger(tmp_path)
    log.log(1, {"loss": 1.0})
    log.log(2, {"loss": 0.5, "acc": 0.9})
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert rows[0]["loss"] == "1.0" and rows[0]["acc"] == "" and rows[1]["acc"] == "0.9"
