"""Scale-out (issue 21): ``torchrun`` data parallelism inside ``zoo.engine.fit`` and grids on Ray.

The 2-process gloo run must equal the 1-process run with the same global batch (to float tolerance): each
process trains on its shard of the same global batch and gradients are averaged.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.engine import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
COPYING = ["-m", "tasks.copying", "--models", "lstm_seq_small", "--model-kwargs",
           '{"hidden_size": 16, "embed_dim": 8}', "--train-len", "3", "--test-lens", "3", "6", "--symbols", "2",
           "--batch-size", "8", "--eval-size", "32", "--eval-every", "10", "--steps", "30", "--log-every", "5",
           "--checkpoint-every", "10", "--workers", "1", "--threads", "1", "--no-progress"]


def run(args, timeout=600):
    res = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def assert_close_runs(a: Path, b: Path, run_dir: str, atol: float = 1e-5) -> None:
    wa = load_checkpoint(a / run_dir / "checkpoint.pt")["model"]
    wb = load_checkpoint(b / run_dir / "checkpoint.pt")["model"]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=1e-4), (k, (wa[k] - wb[k]).abs().max())
    ra, rb = json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text())
    for T in ("3", "6"):
        for metric in ("ce_all", "ce_recall"):
            assert abs(ra["lstm_seq_small"][T][metric] - rb["lstm_seq_small"][T][metric]) < 1e-4


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    run(COPYING + ["--out", str(tmp_path / "one")])
    res = run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *COPYING,
               "--out", str(tmp_path / "two")])
    assert "2 processes (torchrun)" in res.stdout
    assert_close_runs(tmp_path / "one", tmp_path / "two", "lstm_seq_small/seed0")
    rows = (tmp_path / "two" / "lstm_seq_small" / "seed0" / "metrics.csv").read_text().splitlines()
    assert len(rows) == len((tmp_path / "one" / "lstm_seq_small" / "seed0" / "metrics.csv").read_text().splitlines())


@pytest.mark.slow
def test_ray_backend_runs_the_grid_and_gives_the_local_results(tmp_path):
    pytest.importorskip("ray")
    args = COPYING + ["--seeds", "2"]
    run(args + ["--out", str(tmp_path / "local")])
    run(args + ["--backend", "ray", "--out", str(tmp_path / "ray")])
    assert (tmp_path / "local" / "results.json").read_bytes() == (tmp_path / "ray" / "results.json").read_bytes()


def test_a_global_batch_that_does_not_divide_is_a_clear_error():
    from zoo.engine.distributed import shard

    x = torch.arange(10)
    assert shard({"x": x, "y": (x, x)}, 1, 2)["y"][0].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="multiple of 3"):
        shard(x, 0, 3)
