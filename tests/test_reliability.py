"""Harnesses that never lie (issue 12), tried the way a user would: real subprocesses killed with SIGKILL and
SIGINT and resumed, bad options, diverging runs, a second run on the same folder, a killed parent.

Each harness family gets the same checks: copying (generated data, ``SeededStream``) and classification
(tensors, ``ShuffledBatches``; ICT's unlabeled ``ZipStream`` and teacher state).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch

from tasks import bouncing_balls, classify, copying, multi_digit, nfm_attention, seq_mnist, sort_of_clevr
from zoo.engine import ConfigError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

TINY_RIM = '{"hidden_size": 12, "embed_dim": 8, "num_units": 3, "k_active": 2}'
COPYING = ["-m", "tasks.copying", "--models", "rim_lstm_seq_small", "--model-kwargs", TINY_RIM, "--train-len", "3",
           "--test-lens", "3", "5", "--symbols", "2", "--batch-size", "4", "--eval-size", "16", "--eval-every", "30",
           "--checkpoint-every", "10", "--log-every", "7", "--threads", "1", "--no-progress", "--no-compile"]
CLASSIFY = ["-m", "tasks.classify", "--method", "ict", "--labels-per-class", "10", "--batch-size", "8",
            "--unlabeled-batch-size", "8", "--evaluations", "clean", "--eval-size", "50", "--eval-every", "40",
            "--checkpoint-every", "10", "--log-every", "7", "--threads", "1", "--no-progress"]
SEQ_MNIST = ["-m", "tasks.seq_mnist", "--models", "rim_lstm_seq_small", "--model-kwargs", TINY_RIM,
             "--train-resolution", "5", "--test-resolutions", "5", "7", "--batch-size", "8", "--val-size", "40",
             "--test-size", "40", "--eval-every", "30", "--checkpoint-every", "10", "--log-every", "7", "--threads", "1",
             "--no-progress", "--no-compile"]
BALLS = ["-m", "tasks.bouncing_balls", "--models", "lstm_balls_small", "--model-kwargs", '{"hidden_size": 16}',
         "--train-sequences", "16", "--test-sequences", "4", "--frames", "9", "--context", "3", "--resolution", "16",
         "--batch-size", "4", "--seeds", "1", "--eval-every", "30", "--checkpoint-every", "10", "--log-every", "7",
         "--threads", "1", "--no-progress"]
SORT_OF_CLEVR = ["-m", "tasks.sort_of_clevr", "--models", "sortclevr_cnn", "--model-kwargs",
                 '{"width": 8, "hidden": 16}', "--train-images", "40", "--test-images", "8", "--data-dir", "{tmp}/data",
                 "--batch-size", "8", "--seeds", "1", "--eval-every", "30", "--checkpoint-every", "10", "--log-every",
                 "7", "--samples", "2", "--threads", "1", "--no-progress"]
MULTI_DIGIT = ["-m", "tasks.multi_digit", "--models", "mnist_convnet", "--model-kwargs",
               '{"widths": [4, 8], "strides": [4, 4]}', "--train-counts", "1", "--test-counts", "2", "--test-size", "16",
               "--batch-size", "8", "--seeds", "1", "--eval-every", "30", "--checkpoint-every", "10", "--log-every", "7",
               "--samples", "2", "--threads", "1", "--no-progress"]


def run(args: List[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def start(args: List[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(pred, timeout: float = 300.0, what: str = "condition") -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def checkpoint_step(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["step"])
    except Exception:                                                 # being written: try again
        return -1


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def assert_same_run(a: Path, b: Path, runs: List[str]) -> None:
    """Bit-identical weights, results.json and metrics.csv (every logged row, no duplicates)."""
    assert (a / "results.json").read_bytes() == (b / "results.json").read_bytes()
    for r in runs:
        wa, wb = weights(a / r / "checkpoint.pt"), weights(b / r / "checkpoint.pt")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), r
        assert (a / r / "metrics.csv").read_text() == (b / r / "metrics.csv").read_text(), r


def kill_after_checkpoint(args: List[str], ckpt: Path, sig: int) -> subprocess.CompletedProcess:
    proc = start(args)
    wait_for(lambda: checkpoint_step(ckpt) > 0 or proc.poll() is not None, what="the first checkpoint")
    assert proc.poll() is None, f"the run finished before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --- kill and resume ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("harness,steps,run_dir", [(COPYING, 300, "rim_lstm_seq_small/seed0"),
                                                   (CLASSIFY, 160, "ict/seed0"),
                                                   (SEQ_MNIST, 200, "rim_lstm_seq_small/seed0"),
                                                   (BALLS, 200, "lstm_balls_small/seed0"),
                                                   (SORT_OF_CLEVR, 200, "sortclevr_cnn/seed0"),
                                                   (MULTI_DIGIT, 200, "mnist_convnet/seed0")],
                         ids=["copying", "classify", "seq_mnist", "bouncing_balls", "sort_of_clevr", "multi_digit"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, harness, steps, run_dir):
    args = [a.replace("{tmp}", str(tmp_path)) for a in harness] + ["--steps", str(steps), "--workers", "1"]
    full = run(args + ["--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr
    killed = kill_after_checkpoint(args + ["--out", str(tmp_path / "cut")], tmp_path / "cut" / run_dir / "checkpoint.pt",
                                   signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(tmp_path / "cut" / run_dir / "checkpoint.pt")
    assert 0 < ckpt["step"] < steps and not ckpt["finished"]
    assert not (tmp_path / "cut" / "results.json").exists()
    # a kill during a save leaves a temporary file: the next start removes it
    (tmp_path / "cut" / run_dir / ".checkpoint.pt.abc123.tmp").write_bytes(b"torn")
    resumed = run(args + ["--out", str(tmp_path / "cut"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert not list((tmp_path / "cut").rglob("*.tmp"))
    assert_same_run(tmp_path / "full", tmp_path / "cut", [run_dir])
    # resuming a finished run changes nothing: no second training, no duplicate evaluation row
    again = run(args + ["--out", str(tmp_path / "cut"), "--resume"])
    assert again.returncode == 0, again.stderr
    assert_same_run(tmp_path / "full", tmp_path / "cut", [run_dir])
    # the record names the whole command, without the run-control flag
    md = (tmp_path / "cut" / "results.md").read_text()
    assert f"--steps {steps}" in md and "--resume" not in md


@pytest.mark.slow
def test_sigint_with_two_workers_checkpoints_prints_one_line_and_resumes_exactly(tmp_path):
    args = COPYING + ["--steps", "300", "--seeds", "2", "--workers", "2"]
    runs = ["rim_lstm_seq_small/seed0", "rim_lstm_seq_small/seed1"]
    full = run(args + ["--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr
    cut = tmp_path / "cut"
    proc = start(args + ["--out", str(cut)])
    wait_for(lambda: all(checkpoint_step(cut / r / "checkpoint.pt") > 0 for r in runs) or proc.poll() is not None,
             what="both workers' first checkpoints")
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGINT)                                   # the parent only; it tells its workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted") and "--resume" in last and str(cut) in last
    for r in runs:
        ckpt = load_checkpoint(cut / r / "checkpoint.pt")
        assert 0 < ckpt["step"] < 300 and not ckpt["finished"]
    resumed = run(args + ["--out", str(cut), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "full", cut, runs)


@pytest.mark.slow
def test_killing_the_parent_kills_its_workers_and_frees_the_folder(tmp_path):
    out = tmp_path / "run"
    proc = start(COPYING + ["--steps", "100000", "--seeds", "2", "--workers", "2", "--out", str(out)])
    runs = [out / "rim_lstm_seq_small" / f"seed{s}" / "metrics.csv" for s in (0, 1)]
    wait_for(lambda: all(p.exists() for p in runs) or proc.poll() is not None, what="both workers to start")
    assert proc.poll() is None, proc.communicate()

    def descendants(pid: int) -> List[int]:
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(stat.parent.name))
        return kids

    workers = descendants(proc.pid)
    assert len(workers) >= 2
    # while it runs, a second run on the same folder is refused in one line naming the first
    second = run(COPYING + ["--steps", "10", "--out", str(out)])
    assert second.returncode == 1 and f"pid {proc.pid}" in second.stderr and "Traceback" not in second.stderr
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    wait_for(lambda: not any(alive(p) for p in workers), timeout=30, what="the workers to exit")
    from zoo.engine import RunLock

    RunLock(out).acquire().release()                                   # the kernel freed the dead run's lock


# --- runs that diverge ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["-m", "tasks.classify", "--method", "erm", "--lr", "1e30", "--clip-grad", "0", "--steps", "30",
     "--evaluations", "clean", "--eval-every", "0", "--workers", "1", "--no-progress"],
    ["-m", "tasks.copying", "--models", "lstm_seq_small", "--lr", "1e30", "--clip-grad", "0", "--steps", "30",
     "--train-len", "3", "--test-lens", "3", "--eval-size", "8", "--workers", "1", "--no-progress"],
], ids=["classify", "copying"])
def test_a_diverging_run_fails_in_one_line_without_results(tmp_path, args):
    res = run(args + ["--out", str(tmp_path)])
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert "diverged" in line and ("loss became" in line or "non-finite" in line)
    assert line.startswith(("error: erm/seed0: ", "error: lstm_seq_small/seed0: ")), line   # names the run
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "results.md").exists()


def test_non_finite_metrics_never_reach_a_results_file(tmp_path):
    from zoo.engine import NonFiniteError, RunConfig, write_report

    cfg = RunConfig(out=str(tmp_path))
    with pytest.raises(NonFiniteError, match=r"results\['lstm'\]\['acc'\] is nan"):
        write_report(tmp_path, cfg, {"lstm": {"acc": float("nan")}}, 1.0, "t", "cmd", "table")
    assert not (tmp_path / "results.json").exists()


def test_a_resumed_report_says_its_wall_time_is_only_this_invocations(tmp_path):
    from zoo.engine import RunConfig, write_report

    for resume in (False, True):
        write_report(tmp_path, RunConfig(out=str(tmp_path), resume=resume), {"m": {"acc": 0.5}}, 19.0, "t", "cmd", "tab")
        line = (tmp_path / "results.md").read_text().splitlines()[3]
        assert line.startswith("Wall time: 19 s") and ("reused, not retrained" in line) == resume, line


# --- bad options: one line, exit 2, nothing written -------------------------------------------------------
BAD_OPTIONS = [
    (copying, ["--batch-size", "-1"], "--batch-size -1 is out of range"),
    (copying, ["--steps", "0"], "--steps 0"),
    (copying, ["--steps", "-5"], "--steps -5"),
    (copying, ["--symbols", "0"], "--symbols 0"),
    (copying, ["--seeds", "0"], "--seeds 0"),
    (copying, ["--log-every", "0"], "--log-every 0"),
    (copying, ["--workers", "-1"], "--workers -1"),
    (copying, ["--threads", "0"], "--threads 0"),
    (copying, ["--eval-size", "0"], "--eval-size 0"),
    (copying, ["--eval-size", "-1"], "--eval-size -1"),
    (copying, ["--test-lens", "50", "-3"], "--test-lens -3"),
    (copying, ["--lr", "inf"], "--lr inf is not a finite number"),
    (copying, ["--lr", "nan"], "--lr nan is not a finite number"),
    (copying, ["--curriculum", "10"], "--curriculum takes two numbers"),
    (copying, ["--curriculum", "0", "100"], "--curriculum 0 is out of range"),
    (copying, ["--warmup", "1"], "--warmup 1.0 is out of range; allowed: >= 0 and < 1"),
    (copying, ["--schedule", "linear"], "--schedule: invalid choice: 'linear'"),
    (copying, ["--device", "bogus"], "--device 'bogus'"),
    (copying, ["--device", "cuda:7"], "--device 'cuda:7'"),
    (copying, ["--models", "rim_lstm_seq_smal"], "registered sequence model"),
    # a repeated model would share a run folder, and its per-model --lr is looked up by name (arg(unique=True))
    (copying, ["--models", "lstm_seq_small", "lstm_seq_small", "--lr", "1e-3", "2e-3"],
     "--models lists lstm_seq_small twice"),
    (seq_mnist, ["--models", "lstm_seq_small", "rim_lstm_seq_small", "lstm_seq_small"],
     "--models lists lstm_seq_small twice"),
    (copying, ["--model-kwargs", '{"k_active": 3'], "--model-kwargs '{\"k_active\": 3' is not valid JSON"),
    (copying, ["--model-kwargs", '[1, 2]'], "must be a JSON object"),
    (copying, ["--model-kwargs", '{"k_activ": 3}'], "k_activ"),
    (copying, ["--model-kwargs", '{"k_active": 9}'], "k_active"),
    (classify, ["--noise-std", "nan"], "--noise-std nan is not a finite number"),
    (classify, ["--eval-size", "-1"], "--eval-size -1"),
    (classify, ["--method", "erm", "mixup"], "registered methods"),
    (classify, ["--method", "manifold_mixup", "--method-kwargs", '{"alpah": 2}'], "alpah"),
    (classify, ["--method-kwargs", '{"manifold_mixpu": {"alpha": 2}}'], "'manifold_mixpu', which is neither a registered method"),
    (classify, ["--method-kwargs", "{alpha: 2}"], "is not valid JSON"),
    (classify, ["--model", "resnet81"], "--model 'resnet81' is not a registered model"),
    (classify, ["--model", "resnet18", "--model-kwargs", '{"depht": 3}'], "depht"),
    (classify, ["--dataset", "cifar10", "--data-root", "/nonexistent"], "add --download"),
    (classify, ["--evaluations", "clean", "fgsn"], "registered evaluations"),
    (classify, ["--eval-only", "/nonexistent/checkpoint.pt"], "does not exist"),
    (seq_mnist, ["--train-resolution", "1"], "--train-resolution 1 is out of range"),
    (seq_mnist, ["--test-resolutions", "14", "1"], "--test-resolutions 1"),
    (seq_mnist, ["--test-resolutions", "14", "-16"], "--test-resolutions -16"),
    (seq_mnist, ["--dataset", "cifar10"], "--dataset: invalid choice: 'cifar10'"),
    (seq_mnist, ["--dataset", "mnist", "--data-root", "/nonexistent"], "add --download"),
    (seq_mnist, ["--input", "rgb"], "--input: invalid choice: 'rgb'"),
    (seq_mnist, ["--steps", "0"], "--steps 0"),
    (seq_mnist, ["--batch-size", "0"], "--batch-size 0"),
    (seq_mnist, ["--lr", "0"], "--lr 0"),
    (seq_mnist, ["--lr", "nan"], "--lr nan is not a finite number"),
    (seq_mnist, ["--lr", "1e-3", "2e-3", "3e-3"], "--lr takes one value for every model or one per model"),
    (seq_mnist, ["--clip-grad", "-1"], "--clip-grad -1"),
    (seq_mnist, ["--val-fraction", "1"], "--val-fraction 1"),
    (seq_mnist, ["--val-fraction", "-0.1"], "--val-fraction -0.1"),
    (seq_mnist, ["--val-fraction", "0"], "--eval-every 250 needs a validation set"),
    (seq_mnist, ["--eval-every", "-1"], "--eval-every -1"),
    (seq_mnist, ["--val-size", "-1"], "--val-size -1"),
    (seq_mnist, ["--test-size", "-1"], "--test-size -1"),
    (seq_mnist, ["--seeds", "0"], "--seeds 0"),
    (seq_mnist, ["--models", "rim_lstm_seq_smal"], "registered sequence model"),
    (seq_mnist, ["--model-kwargs", '{"k_active": 3'], "is not valid JSON"),
    (seq_mnist, ["--model-kwargs", '{"lstm_seq_small": {"k_active": 3}}'], "do not fit lstm_seq_small"),
    (seq_mnist, ["--model-kwargs", '{"gru_seq": {}}'], "not in --models"),
    (nfm_attention, ["--model", "mnist_convnet"], "an NFM model"),
    (nfm_attention, ["--steps", "0"], "--steps 0"),
]


@pytest.mark.parametrize("module,args,message", BAD_OPTIONS, ids=[" ".join(a) for _, a, _ in BAD_OPTIONS])
def test_bad_option_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, module, args, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        module.main(args + ["--out", str(out)] + (["--figure", str(tmp_path / "f.png")] if module is nfm_attention else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert len(err) == 1 and message in err[0] and "see --help" in err[0], err
    assert not out.exists()


def test_output_paths_that_cannot_be_written_are_refused(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for module, args in [(copying, ["--out", str(afile)]), (copying, ["--out", str(afile / "sub")]),
                         (nfm_attention, ["--figure", str(afile / "x.png")])]:
        with pytest.raises(SystemExit) as exc:
            module.main(args)
        assert exc.value.code == 2
        line = capsys.readouterr().err.strip()
        assert "\n" not in line and str(afile) in line
    if os.geteuid() != 0:                                              # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(SystemExit):
            copying.main(["--out", str(ro / "x")])


def test_configs_built_in_code_are_validated_too():
    with pytest.raises(ConfigError, match="--steps 0"):
        copying.Config(steps=0)
    with pytest.raises(ConfigError, match="--batch-size -4"):
        classify.Config(batch_size=-4)
    with pytest.raises(ConfigError, match="--lr"):
        nfm_attention.Config(lr=0.0)


# --- checkpoints that are not ours ------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"garbage" * 10, None], ids=["empty", "garbage", "truncated"])
def test_unreadable_checkpoints_are_one_line_errors(tmp_path, capsys, content):
    from zoo.engine import run_cli

    good = tmp_path / "good.pt"
    torch.save({"model": {}, "step": 1}, good)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(good.read_bytes()[:50] if content is None else content)
    for args in (["--eval-only", str(path)], ["--eval-only", str(tmp_path / "adir")]):
        (tmp_path / "adir").mkdir(exist_ok=True)
        code = run_cli(classify.main, args + ["--out", str(tmp_path / "ev"), "--evaluations", "clean"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and err[0].startswith("error:"), err
    code = run_cli(nfm_attention.main, ["--checkpoint", str(path), "--out", str(tmp_path / "na"),
                                        "--figure", str(tmp_path / "na.png")])
    assert code == 1 and capsys.readouterr().err.startswith("error:")


def test_resume_refuses_a_checkpoint_of_other_options_or_another_architecture(tmp_path, capsys):
    from zoo.engine import run_cli

    base = COPYING[2:] + ["--steps", "12", "--workers", "1", "--out", str(tmp_path)]
    assert run_cli(copying.main, base) == 0
    capsys.readouterr()
    assert run_cli(copying.main, base + ["--lr", "0.01", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr: 0.002 -> 0.01" in err[0] and "another --out" in err[0]   # the run's lr
    # a checkpoint.pt of the right format but the wrong shapes (written by hand)
    ckpt = tmp_path / "rim_lstm_seq_small" / "seed0" / "checkpoint.pt"
    payload = load_checkpoint(ckpt)
    payload["model"] = {k: torch.zeros(1) for k in payload["model"]}
    payload["meta"] = None
    torch.save(payload, ckpt)
    assert run_cli(copying.main, base + ["--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit" in err[0]


def test_resume_with_more_seeds_reuses_the_finished_ones(tmp_path):
    """--seeds counts the grid's runs, it does not change one: --seeds 2 --resume over a 1-seed folder reuses
    seed 0's finished run (not retrained, same numbers) and trains seed 1."""
    import json

    from zoo.engine import run_cli

    base = COPYING[2:] + ["--steps", "12", "--workers", "1", "--out", str(tmp_path)]
    assert run_cli(copying.main, base) == 0
    first = json.loads((tmp_path / "results.json").read_text())["rim_lstm_seq_small"]
    ckpt = tmp_path / "rim_lstm_seq_small" / "seed0" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    assert run_cli(copying.main, base + ["--seeds", "2", "--resume"]) == 0
    both = json.loads((tmp_path / "results.json").read_text())["rim_lstm_seq_small"]
    assert ckpt.stat().st_mtime_ns == stamp                       # seed 0 was not trained again
    lengths = [k for k in first if isinstance(first[k], dict) and "per_seed" in first[k]]
    assert lengths
    for T in lengths:
        assert both[T]["per_seed"][0] == first[T]["per_seed"][0] and len(both[T]["per_seed"]) == 2
    assert (tmp_path / "rim_lstm_seq_small" / "seed1" / "checkpoint.pt").exists()


def test_resume_with_more_or_reordered_models_reuses_the_finished_runs(tmp_path, capsys):
    """--models lists the grid's runs, it does not change one: adding a model over a finished folder (first in
    the list, so every per-model --lr entry moves) reuses the finished run and trains the new model's; a --lr
    list that gives the finished model another learning rate is refused, whatever the order."""
    import json

    from zoo.engine import run_cli

    small = '{"hidden_size": 12, "embed_dim": 8}'
    base = COPYING[6:] + ["--steps", "12", "--workers", "1", "--out", str(tmp_path)]   # without --models and kwargs
    assert run_cli(copying.main, base + ["--models", "rim_lstm_seq_small", "--lr", "0.002",
                                         "--model-kwargs", f'{{"rim_lstm_seq_small": {TINY_RIM}}}']) == 0
    first = json.loads((tmp_path / "results.json").read_text())["rim_lstm_seq_small"]
    ckpt = tmp_path / "rim_lstm_seq_small" / "seed0" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    both = base + ["--models", "lstm_seq_small", "rim_lstm_seq_small",
                   "--model-kwargs", f'{{"rim_lstm_seq_small": {TINY_RIM}, "lstm_seq_small": {small}}}']
    capsys.readouterr()
    assert run_cli(copying.main, both + ["--lr", "0.003", "0.001", "--resume"]) == 1        # rim's lr: 0.001
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr: 0.002 -> 0.001" in err[0] and "models" not in err[0].split("(")[1], err
    assert run_cli(copying.main, both + ["--lr", "0.003", "0.002", "--resume"]) == 0
    assert ckpt.stat().st_mtime_ns == stamp                       # the RIM run was not trained again
    report = json.loads((tmp_path / "results.json").read_text())
    lengths = [k for k in first if isinstance(first[k], dict) and "per_seed" in first[k]]
    assert lengths and all(report["rim_lstm_seq_small"][T]["per_seed"] == first[T]["per_seed"] for T in lengths)
    assert (tmp_path / "lstm_seq_small" / "seed0" / "checkpoint.pt").exists()


@pytest.mark.parametrize("module, grid, member, other, own, theirs", [
    # (harness, grid field, the run's member, a sibling, an option change of the member's own, one of the sibling's)
    (copying, "models", "lstm_seq_small", "rim_gru_seq_small", {"lr": [0.003, 0.001]},
     {"model_kwargs": '{"rim_gru_seq_small": {"k_active": 3}}'}),
    (seq_mnist, "models", "lstm_seq_small", "rim_lstm_seq_small", {"lr": [0.004, 0.001]},
     {"model_kwargs": '{"lstm_seq_small": {"hidden_size": 96}, "rim_lstm_seq_small": {"hidden_size": 60}}'}),
    (bouncing_balls, "models", "lstm_balls_small", "rim_lstm_balls_small",
     {"model_kwargs": '{"lstm_balls_small": {"hidden_size": 32}}'},
     {"model_kwargs": '{"rim_lstm_balls_small": {"k_active": 3}}'}),
    (sort_of_clevr, "models", "sortclevr_cnn", "nfm_sortclevr_cnn", {"model_kwargs": '{"drop_rate": 0.1}'},
     {"model_kwargs": '{"*": {"drop_rate": 0.5}, "nfm_sortclevr_cnn": {"d_k": 8}}'}),
    (multi_digit, "models", "mnist_convnet", "nfm_mnist_convnet", {"model_kwargs": '{"widths": [8, 16]}'},
     {"model_kwargs": '{"mnist_convnet": {"widths": [16, 32, 64, 64], "strides": [2, 2, 2, 2]}, '
                      '"nfm_mnist_convnet": {"d_k": 4}}'}),
    (classify, "method", "input_mixup", "erm", {"method_kwargs": '{"input_mixup": {"alpha": 2.0}}'},
     {"method_kwargs": '{"erm": {}}'}),
])
def test_a_runs_options_do_not_depend_on_its_siblings(module, grid, member, other, own, theirs):
    """What one run is (run_meta, compared on --resume) is the same whether the grid lists it alone, after a
    sibling or before it, with per-member options (a --lr list, per-model kwargs) resolved for it, and
    whatever the sibling's own options; an option change of its own still changes it (mutation-checked:
    leaving the grid list in, or a --lr list or the kwargs raw)."""
    from zoo.engine import CheckpointError, check_run_options

    def meta(members, **kw):
        return module.run_meta(module.Config(**{grid: members}, **kw), member, 0)

    alone = meta([member])
    assert meta([member, other]) == alone == meta([other, member]) == meta([member, other], **theirs)
    changed = own
    if isinstance(own.get("lr"), list):               # a per-model list: member first, then member second
        assert meta([member, other], lr=own["lr"]) == meta([other, member], lr=own["lr"][::-1])
        assert meta([member], lr=own["lr"][:1]) == meta([member, other], lr=own["lr"])
        changed = {"lr": own["lr"][::-1]}
    with pytest.raises(CheckpointError):
        check_run_options("ckpt", alone, meta([member, other], **changed))
