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


def _run(tmp_path, steps, stop_at=None, resume=False, seed=0, log_every=5):
    """A small regression run on a SeededStream; ``stop_at`` interrupts it (as SIGINT would) at that step."""
    from zoo.engine import Interrupted, SeededStream, request_stop

    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 4, 0.5)
    stream = SeededStream(lambda g: (torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)), seed=1)

    def step_fn(m, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(m(x), y), {"noise": float(torch.rand(()))}   # global RNG too

    def stop(step, m):
        if step == stop_at:
            request_stop()

    try:
        return fit(model, opt, stream, step_fn, steps=steps, out_dir=tmp_path, resume=resume, progress=False,
                   log_every=log_every, scheduler=sched, callbacks=(stop,), eval_fn=lambda m: {"w": float(m[0].weight.sum())},
                   eval_every=3, ckpt_every=0), model
    except Interrupted:
        return None, model


def test_resume_after_an_interrupt_is_bit_identical(tmp_path):
    full, ref = _run(tmp_path / "full", 20)
    cut, _ = _run(tmp_path / "split", 20, stop_at=13)                  # mid log window, after an eval
    assert cut is None and load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 13
    res, resumed = _run(tmp_path / "split", 20, resume=True, seed=123)  # other seed: state comes from the file
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert res.eval_history == full.eval_history                       # the whole curve, not the tail
    assert (tmp_path / "split" / "metrics.csv").read_text() == (tmp_path / "full" / "metrics.csv").read_text()
    again, _ = _run(tmp_path / "split", 20, resume=True)                # a finished run is not trained again
    assert again.resumed_from == 20 and again.eval_history == full.eval_history
    assert (tmp_path / "split" / "metrics.csv").read_text() == (tmp_path / "full" / "metrics.csv").read_text()


def test_streams_restore_their_position():
    from zoo.engine import MapStream, SeededStream, ShuffledBatches, ZipStream

    def make():
        lab = ShuffledBatches(torch.arange(10), torch.arange(10) * 2, batch_size=3, seed=0)
        unl = SeededStream(lambda g: g.integers(0, 100, 2), seed=5, backend="numpy")
        return MapStream(ZipStream(lab, unl), lambda b: (b[0][0].tolist(), b[1].tolist()))

    a = make()
    head = [next(a) for _ in range(7)]                                  # crosses two epochs of 3 batches
    state = a.state_dict()
    tail = [next(a) for _ in range(7)]
    b = make()
    b.load_state_dict(state)
    assert [next(b) for _ in range(7)] == tail
    c = make()
    assert [next(c) for _ in range(7)] == head
    epochs = [sorted(sum((x for x, _ in head[i:i + 3]), [])) for i in (0, 3)]
    assert all(len(set(e)) == 9 for e in epochs)                        # each epoch: 3 distinct batches of 3


def test_divergence_and_non_finite_evaluations_are_errors(tmp_path):
    from zoo.engine import NonFiniteError

    model = torch.nn.Linear(2, 1)
    losses = iter([1.0, 2.0, 5e6])
    with pytest.raises(NonFiniteError, match="over 1e\\+06 times its first value"):
        fit(model, torch.optim.SGD(model.parameters(), 0.0), iter(lambda: torch.ones(1, 2), None),
            lambda m, b: (m(b).sum() * 0 + next(losses), {}), steps=3, progress=False)
    with pytest.raises(NonFiniteError, match="evaluation at step 2 gave non-finite"):
        fit(model, torch.optim.SGD(model.parameters(), 0.0), iter(lambda: torch.ones(1, 2), None),
            lambda m, b: (m(b).sum(), {}), steps=4, progress=False, eval_every=2, eval_fn=lambda m: {"acc": math.nan})
    with torch.no_grad():
        model.weight.fill_(math.inf)
    with pytest.raises(NonFiniteError, match="weight 'weight' became non-finite"):
        fit(model, torch.optim.SGD(model.parameters(), 0.0), iter(lambda: torch.zeros(1, 2), None),
            lambda m, b: ((m.bias * 0).sum(), {}), steps=1, progress=False, out_dir=tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_fit_stops_on_non_finite_loss(tmp_path):
    model = torch.nn.Linear(2, 1)
    batches = iter([torch.ones(1, 2)] * 3)
    with pytest.raises(FloatingPointError, match="step 1"):
        fit(model, torch.optim.SGD(model.parameters(), 0.1), batches,
            lambda m, b: (m(b).sum() * float("nan"), {}), steps=3, progress=False)


def _spiky_run(out_dir, steps, skip_spikes, stop_at=None, resume=False, rise_at=None):
    """Linear regression by plain SGD (no momentum: a step that is not taken leaves the weights as they were);
    one batch in ten scales its loss by 1e6 (a gradient spike), drawn from the stream, so the spikes fall on
    the same steps in a resumed run. ``rise_at``: from this step on every batch is scaled by 100 (a lasting
    rise). Returns ``(steps_that_spiked, steps_that_moved_the_weights, model)``."""
    from zoo.engine import Interrupted, SeededStream, request_stop

    seed_everything(0)
    model = torch.nn.Linear(4, 1)
    spiked, moved, last = [], [], [p.detach().clone() for p in model.parameters()]

    def batch(g):
        x = torch.randn(16, 4, generator=g)
        y = x.sum(1, keepdim=True) + torch.randn(16, 1, generator=g)     # noise: the gradient never vanishes
        return x, y, torch.rand((), generator=g) < 0.1

    def step_fn(m, b):
        x, y, spike = b
        step = len(seen) + 1 + start[0]
        seen.append(step)
        scale = 1e6 if spike else 100.0 if rise_at is not None and step >= rise_at else 1.0
        if spike:
            spiked.append(step)
        return torch.nn.functional.mse_loss(m(x), y) * scale, {}

    def after(step, m):
        now = [p.detach().clone() for p in m.parameters()]
        if any(not torch.equal(a, b) for a, b in zip(now, last)):
            moved.append(step)
        last[:] = now
        if step == stop_at:
            request_stop()

    seen: list = []
    start = [load_checkpoint(out_dir / "checkpoint.pt")["step"] if resume else 0]
    try:
        fit(model, torch.optim.SGD(model.parameters(), 1e-3), SeededStream(batch, seed=4), step_fn, steps=steps,
            out_dir=out_dir, resume=resume, progress=False, log_every=1, skip_spikes=skip_spikes, clip_grad=1.0, divergence=None,
            callbacks=(after,))
    except Interrupted:
        pass
    return spiked, moved, model


def test_skip_spikes_skips_exactly_the_spiking_steps_after_the_warm_up(tmp_path):
    from zoo.engine.loop import SPIKE_WARMUP

    spiked, moved, _ = _spiky_run(tmp_path / "skip", 80, skip_spikes=10.0)
    late = [s for s in spiked if s > SPIKE_WARMUP]
    assert late and any(s <= SPIKE_WARMUP for s in spiked)          # the seed puts spikes on both sides
    assert sorted(set(range(1, 81)) - set(moved)) == late          # every late spike skipped, nothing else
    rows = list(csv.DictReader(open(tmp_path / "skip" / "metrics.csv")))
    assert [int(r["step"]) for r in rows if r.get("train/skipped") == "1.0"] == late
    _, moved_all, _ = _spiky_run(tmp_path / "off", 80, skip_spikes=None)
    assert moved_all == list(range(1, 81))                           # off: every step moves the weights


def test_skip_spikes_resumes_exactly_and_lets_a_lasting_rise_through(tmp_path):
    _, _, ref = _spiky_run(tmp_path / "full", 60, skip_spikes=10.0)
    _spiky_run(tmp_path / "split", 60, skip_spikes=10.0, stop_at=30)
    spiked, _, resumed = _spiky_run(tmp_path / "split", 60, skip_spikes=10.0, resume=True)
    assert any(30 < s <= 50 for s in spiked)      # a spike within the warm-up a resume without the window would have
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    spiked, moved, _ = _spiky_run(tmp_path / "rise", 200, skip_spikes=10.0, rise_at=40)
    held = [s for s in range(40, 201) if s not in moved and s not in spiked]
    assert held and max(held) < 120                  # the norm rose 100x for good: held back for a while, not forever


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


def test_seed_curves_average_the_steps_every_seed_evaluated_and_plot_only_real_curves(tmp_path):
    from zoo.engine.results import plot_seed_curves, seed_curve
    a = [{"step": 10, "acc": 0.2}, {"step": 20, "acc": 0.4}, {"step": 30, "acc": 0.9}]
    b = [{"step": 10, "acc": 0.4, "loss": 1.0}, {"step": 20, "acc": 0.8}]         # stopped early: no step 30
    steps, mean, std = seed_curve([a, b], "acc")
    assert steps == [10, 20]
    assert mean == pytest.approx([0.3, 0.6]) and std == pytest.approx([0.2 / 2 ** 0.5, 0.4 / 2 ** 0.5])
    assert seed_curve([a, b], "loss") == ([], [], [])                          # seed a never logged it
    runs = [{"model": "m", "curve": a}, {"model": "m", "curve": b}, {"model": "n", "curve": a[:1]}]
    path = plot_seed_curves(runs, ["m", "n"], [("acc", "accuracy")], tmp_path / "c.png", reference={"acc": 0.5})
    assert path == tmp_path / "c.png" and path.stat().st_size > 0
    assert seed_curve([], "acc") == ([], [], []) and seed_curve([a, []], "acc") == ([], [], [])
    one_point = [{"model": "m", "curve": a[:1]}, {"model": "m", "curve": b[:1]}]     # evaluated at the end only
    assert plot_seed_curves(one_point, ["m"], [("acc", "accuracy")], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


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


def test_per_model_kwargs_shared_or_per_model_and_one_line_errors():
    from zoo.engine import ConfigError, per_model_kwargs
    models = ["rim_lstm_seq_small", "lstm_seq_small"]
    assert per_model_kwargs('{"hidden_size": 8}', models) == {m: {"hidden_size": 8} for m in models}
    kw = per_model_kwargs('{"*": {"hidden_size": 8, "embed_dim": 4}, "lstm_seq_small": {"hidden_size": 6}}', models)
    assert kw == {"rim_lstm_seq_small": {"hidden_size": 8, "embed_dim": 4},
                  "lstm_seq_small": {"hidden_size": 6, "embed_dim": 4}}           # own entry overrides "*"
    with pytest.raises(ConfigError, match="mixes per-model objects"):
        per_model_kwargs('{"lstm_seq_small": {}, "hidden_size": 8}', models)
    with pytest.raises(ConfigError, match="did you mean lstm_seq_small"):
        per_model_kwargs('{"lstm_seq_smal": {}}', models)
    with pytest.raises(ConfigError, match="not in --models"):
        per_model_kwargs('{"gru_seq": {}}', models)
    default = '{"gru_seq": {"hidden_size": 4}}'                        # a default may cover models left out
    assert per_model_kwargs(default, models, default=default) == {m: {} for m in models}


def test_cosine_schedule_decays_to_zero_and_constant_is_none():
    from zoo.engine import lr_schedule
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=2.0)
    sched = lr_schedule(opt, "cosine", 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 2.0 and lrs[50] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_schedule(opt, "constant", 100) is None
    with pytest.raises(ValueError, match="cosine"):
        lr_schedule(opt, "linear", 100)


def _lrs(sched_opt, steps):
    sched, opt = sched_opt
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_ramps_linearly_then_cosine_or_constant():
    from zoo.engine import lr_schedule
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=2.0)
    lrs = _lrs((lr_schedule(opt, "cosine", 110, warmup=10), opt), 110)
    assert lrs[:10] == pytest.approx([2.0 * (t + 1) / 10 for t in range(10)])
    assert lrs[10] == pytest.approx(2.0) and lrs[60] == pytest.approx(1.0) and lrs[-1] < 0.01
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=2.0)
    lrs = _lrs((lr_schedule(opt, "constant", 50, warmup=4), opt), 50)
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0]) and set(lrs[4:]) == {2.0}
    for bad in (-1, 50):
        with pytest.raises(ValueError, match="warmup"):
            lr_schedule(opt, "constant", 50, warmup=bad)


def test_per_run_keys_each_run_by_name_and_seed_and_skips_runs_without_the_value():
    from zoo.engine import per_run
    runs = [{"model": "a", "seed": 0, "seconds": 1.5}, {"model": "a", "seed": 1, "seconds": 2.0},
            {"model": "b", "seed": 0}]
    assert per_run(runs) == {"a/seed0": 1.5, "a/seed1": 2.0}
    assert per_run([{"core": "rim", "seed": 3, "cpu": 4}], "cpu", key="core") == {"rim/seed3": 4}


def test_default_workers_share_the_cores_among_a_grids_single_threaded_runs(monkeypatch):
    from zoo.engine import jobs
    monkeypatch.setattr(jobs, "cpu_cores", lambda: 2)
    cpu = torch.device("cpu")
    assert jobs.default_workers(6, cpu, share_cores=True) == 6        # 3 slow + 3 fast seeds: all at once
    assert jobs.default_workers(3, cpu, share_cores=True) == 3        # not 2 rounds of 2 + 1
    assert jobs.default_workers(9, cpu, share_cores=True) == 2 * jobs.RUNS_PER_CORE
    assert jobs.default_workers(6, cpu, threads=2, share_cores=True) == 1    # multi-threaded runs never share
    assert jobs.default_workers(6, cpu) == 2                          # reproduce: one per core, longest first
    assert jobs.default_workers(6, cpu, threads=2) == 1
    assert jobs.default_workers(6, torch.device("cuda"), share_cores=True) == 1


def test_a_harness_grid_runs_every_run_at_once_by_default(monkeypatch, tmp_path):
    from tasks import copying
    from zoo.engine import jobs
    seen = {}

    def in_process(fn, job_list, workers=1, threads=1):
        seen["workers"], seen["jobs"] = workers, len(job_list)
        return [fn(*job) for job in job_list]

    monkeypatch.setattr(jobs, "cpu_cores", lambda: 2)
    monkeypatch.setattr(jobs, "run_jobs", in_process)
    copying.main(["--models", "lstm_seq_small", "--model-kwargs", '{"hidden_size": 8, "embed_dim": 4}',
                  "--seeds", "3", "--steps", "2", "--train-len", "3", "--test-lens", "3", "--symbols", "2",
                  "--batch-size", "4", "--eval-size", "8", "--eval-every", "0", "--no-progress",
                  "--out", str(tmp_path / "c")])
    assert seen == {"workers": 3, "jobs": 3}                          # one per core would be 2


def _precision_run(out_dir, precision, steps=30, stop_at=None, resume=False):
    """A small regression run under ``fit(precision=...)``; records the dtype the step and the evaluation see."""
    from zoo.engine import Interrupted, SeededStream, request_stop

    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    stream = SeededStream(lambda g: (lambda x: (x, x.sum(1, keepdim=True)))(torch.randn(32, 4, generator=g)), seed=1)
    seen = {"step": set(), "eval": set()}

    def step_fn(m, batch):
        x, y = batch
        out = m(x)
        seen["step"].add(out.dtype)
        return torch.nn.functional.mse_loss(out.float(), y), {}

    def eval_fn(m):
        seen["eval"].add(m(torch.ones(2, 4)).dtype)
        return {"one": 1.0}

    def stop(step, m):
        if step == stop_at:
            request_stop()

    try:
        res = fit(model, opt, stream, step_fn, steps=steps, out_dir=out_dir, resume=resume, progress=False,
                  log_every=5, eval_fn=eval_fn, eval_every=10, callbacks=(stop,), precision=precision)
    except Interrupted:
        res = None
    return res, model, seen


@pytest.mark.filterwarnings("ignore:precision='bf16'")
def test_bf16_precision_autocasts_the_step_only_and_keeps_float32_weights(tmp_path):
    """``precision="bf16"``: the step's matmuls run in bfloat16 (so the run differs from fp32 by rounding), the
    weights, the optimizer and the evaluation stay float32, the model still learns, and resuming is exact."""
    res32, m32, seen32 = _precision_run(tmp_path / "fp32", "fp32")
    res16, m16, seen16 = _precision_run(tmp_path / "bf16", "bf16")
    assert seen32 == {"step": {torch.float32}, "eval": {torch.float32}}
    assert seen16 == {"step": {torch.bfloat16}, "eval": {torch.float32}}
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(m32.parameters(), m16.parameters()))   # bf16 really used
    first = float(next(csv.DictReader(open(tmp_path / "bf16" / "metrics.csv")))["train/loss"])
    assert res16.last_metrics["loss"] < 0.5 * first                                      # it learns
    cut, _, _ = _precision_run(tmp_path / "cut", "bf16", stop_at=17)
    assert cut is None
    _, resumed, _ = _precision_run(tmp_path / "cut", "bf16", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(m16.parameters(), resumed.parameters()))


def test_precision_is_checked_before_training_and_recorded_by_the_harnesses(tmp_path, capsys):
    """An unknown precision is a one-line error, in ``fit`` and on every harness's command line; every harness
    that trains with ``fit`` hands it ``precision=cfg.precision`` (so ``--precision`` reaches the loop)."""
    import ast
    from pathlib import Path

    from tasks import classify
    from zoo.engine import ConfigError

    with pytest.raises(ValueError, match=r"precision='fp16' is not supported; allowed values: 'fp32', 'bf16'"):
        _precision_run(tmp_path / "x", "fp16")
    assert not (tmp_path / "x" / "metrics.csv").exists()
    with pytest.raises(SystemExit):
        parse_config(classify.Config, ["--precision", "fp16"])
    err = capsys.readouterr().err.strip()
    assert "--precision: invalid choice: 'fp16'" in err and "\n" not in err
    with pytest.raises(ConfigError, match="--precision"):
        classify.Config(precision="fp16")
    assert parse_config(classify.Config, ["--precision", "bf16"]).precision == "bf16"
    tasks = Path(__file__).resolve().parents[1] / "tasks"
    callers = []
    for path in sorted(tasks.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "fit":
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("precision") == "cfg.precision", f"{path.name}: fit(...) without precision=cfg.precision"
                callers.append(path.stem)
    assert set(callers) >= {"bouncing_balls", "classify", "copying", "multi_digit", "seq_mnist", "sort_of_clevr"}


def test_native_bf16_follows_the_cpu_flags_and_fit_warns_only_where_bf16_is_emulated(tmp_path, monkeypatch):
    """``native_bf16`` is True exactly on CPUs with AVX512-BF16 or AMX (``/proc/cpuinfo`` on Linux), and ``fit``
    warns about a bf16 run only where it is emulated (there it is slower than fp32)."""
    import warnings
    from pathlib import Path

    from zoo.engine import loop, native_bf16

    cpu = torch.device("cpu")
    info = Path("/proc/cpuinfo")
    if info.exists():
        flags = set(next(line for line in info.read_text().splitlines() if line.startswith("flags")).split())
        assert native_bf16(cpu) == bool(flags & {"avx512_bf16", "amx_tile"})
    assert native_bf16(torch.device("meta")) is False
    for native in (False, True):
        monkeypatch.setattr(loop, "native_bf16", lambda device, native=native: native)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _precision_run(tmp_path / str(native), "bf16", steps=2)
        emulated = [w for w in caught if "no native bfloat16" in str(w.message)]
        assert len(emulated) == (0 if native else 1)


@pytest.mark.parametrize("name, kwargs, make_input", [
    ("rim_gru_seq_small", dict(num_tokens=10, num_classes=10), lambda: torch.randint(0, 10, (4, 12))),
    ("rim_lstm_seq_official", dict(num_tokens=10, num_classes=10, hidden_size=60), lambda: torch.randint(0, 10, (4, 12))),
    ("nfm_mnist_convnet", dict(num_classes=10, in_chans=1), lambda: torch.rand(4, 1, 28, 28)),
])
def test_the_layers_train_under_bf16_autocast(name, kwargs, make_input):
    """RIM (general and official paths) and NFM models run forward and backward under ``fit``'s bf16 autocast
    with no dtype clash in their own ops (``baddbmm`` with float32 biases, ``addcmul``, the rescaling's custom
    backward), give finite float32 gradients and outputs close to fp32's."""
    import zoo
    from zoo.engine import autocast_context

    torch.manual_seed(0)
    model = zoo.create_model(name, **kwargs).eval()                         # no dropout for the comparison
    x = make_input()
    amp = autocast_context("bf16", torch.device("cpu"))
    with torch.no_grad():
        ref = model(x)
        with amp:
            low = model(x).float()
    # bf16 rounding, not garbage: close on average (a rounding can flip a RIM competition at some step, which
    # moves a few outputs by more)
    assert (low - ref).abs().mean() < 0.05 * ref.abs().mean()
    model.train()
    with amp:
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_check_run_options_names_every_change_in_one_line():
    """Tuples and lists are the same option (JSON round trip); an option only one side has is a change even
    where the other side's value is None, and the refusal names it instead of an empty list."""
    from zoo.engine import CheckpointError, check_run_options

    check_run_options("ckpt", {"sizes": [1, 2], "lr": 1e-3}, {"sizes": (1, 2), "lr": 1e-3})
    with pytest.raises(CheckpointError) as err:
        check_run_options("ckpt", {"lr": 1e-3}, {"lr": 1e-3, "warmup": None})
    assert "(warmup: <unset> -> None)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"lr: 0.001 -> 0.5; steps: 10 -> <unset>"):
        check_run_options("ckpt", {"lr": 1e-3, "steps": 10}, {"lr": 0.5})
