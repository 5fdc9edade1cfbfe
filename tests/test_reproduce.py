"""The one-command reproduction (issue 21): its smoke mode runs every wired part, the report has the paper's
number, ours, the direction and the command for each claim, a rerun reuses finished runs, and the docs block
is generated from the report."""
from __future__ import annotations

import json

import pytest

from tasks import paper_results, reproduce
from zoo.engine import ConfigError


@pytest.mark.slow
def test_smoke_run_writes_a_complete_report_and_reruns_reuse_finished_runs(tmp_path):
    out = tmp_path / "rep"
    args = ["--smoke", "--only", "copying", "nfm_random_attention", "--workers", "1", "--no-progress", "--out", str(out)]
    report = reproduce.main(args)
    assert [p["id"] for p in report["parts"]] == ["copying", "nfm_random_attention"]
    for part in report["parts"]:
        assert part["claims"] and part["commands"] and part["wall_seconds"] > 0
        for claim in part["claims"]:
            assert set(claim) == {"claim", "paper", "ours", "holds"} and claim["holds"] in (True, False, None)
        for cmd in part["commands"].values():
            assert cmd.startswith("python -m tasks.")
    saved = json.loads((out / "report.json").read_text())
    assert saved["parts"] == json.loads(json.dumps(report["parts"]))
    md = (out / "report.md").read_text()
    assert "| result | paper's claim | paper | ours | direction holds |" in md and "python -m tasks.copying" in md
    assert "data:image/png;base64," in (out / "report.html").read_text()     # figures inline, no server
    stamp = (out / "copying" / "main" / "results.json").stat().st_mtime_ns
    docs = tmp_path / "results.md"
    docs.write_text("# Results\n\nhand-written intro\n")
    reproduce.main(args + ["--report-only", "--docs", str(docs)])           # nothing retrained
    assert (out / "copying" / "main" / "results.json").stat().st_mtime_ns == stamp
    text = docs.read_text()
    assert text.startswith("# Results\n\nhand-written intro") and reproduce.DOCS_BEGIN in text
    reproduce.main(args + ["--report-only", "--docs", str(docs)])           # the block is replaced, not appended
    assert docs.read_text().count(reproduce.DOCS_BEGIN) == 1
    assert json.loads((out / "report.json").read_text())["side_by_side"] == 1  # kept from the run that trained

    # the same runs side by side (two processes, each run's output in its log): the same results, byte for byte
    out2 = tmp_path / "rep2"
    report2 = reproduce.main([*args[:-5], "--workers", "2", "--no-progress", "--out", str(out2)])
    assert report2["side_by_side"] == 2 and report2["command_seconds"] > 0
    for run in ("copying/main", "nfm_random_attention/main"):
        assert (out2 / run / "results.json").read_bytes() == (out / run / "results.json").read_bytes(), run
        assert "wall time" in (out2 / f"{run}.log").read_text()
    assert [p["claims"] for p in report2["parts"]] == [p["claims"] for p in report["parts"]]


@pytest.mark.slow
@pytest.mark.timeout(900)                      # ten harnesses, a few steps each: about 3 min on 2 idle cores
def test_smoke_of_every_other_part_states_its_claims(tmp_path):
    """The smoke mode of the parts not covered above: every harness runs, and every claim is stated."""
    others = [p for p in reproduce.PARTS if p not in ("copying", "nfm_random_attention")]
    report = reproduce.main(["--smoke", "--only", *others, "--no-progress", "--out", str(tmp_path / "rep")])
    assert [p["id"] for p in report["parts"]] == others
    for part in report["parts"]:
        assert part["claims"], part["id"]
        assert all(c["holds"] in (True, False, None) for c in part["claims"])
        assert all(cmd.startswith(("python -m tasks.", "python -m rl.")) for cmd in part["commands"].values())


def test_every_part_builds_its_configs_at_every_scale():
    for part in paper_results.PARTS.values():
        for scale, smoke in (("cpu", False), ("paper", False), ("cpu", True)):
            runs = part.runs(scale, smoke)
            assert runs, part.id


def test_options_are_validated():
    with pytest.raises(ConfigError, match="parts:"):
        reproduce.Config(only=["copyng"])
    with pytest.raises(ConfigError, match="exclude each other"):
        reproduce.Config(smoke=True, scale="paper")


def test_copying_claims_follow_the_numbers():
    def res(rim200, lstm200):
        cell = lambda a: {"acc_recall": a, "std": {"acc_recall": 0.0}, "per_seed": [{}]}  # noqa: E731
        return {"main": {"rim": {"50": cell(0.99), "200": cell(rim200)}, "lstm": {"50": cell(0.95), "200": cell(lstm200)},
                         "_meta": {"config": {"train_len": 50, "test_lens": [50, 200]}}}}

    good = paper_results.PARTS["copying"].claims(res(0.985, 0.40))
    assert [c.holds for c in good] == [True, True, True]
    bad = paper_results.PARTS["copying"].claims(res(0.50, 0.95))
    assert [c.holds for c in bad] == [False, False, False]


def test_shared_options_reach_every_harness_run_and_zero_keeps_each_parts_default():
    """``--seeds/--seed/--backend/...`` given to the reproduction must change every harness run it starts (a
    silently ignored ``--seeds 5`` would report 3-seed numbers as 5-seed ones); 0 keeps each part's own."""
    import dataclasses
    cfg = reproduce.Config(seeds=5, seed=7, log_every=11, checkpoint_every=13, backend="ray", threads=2,
                           precision="bf16")
    keep = reproduce.Config()
    with_precision = set()
    for part in paper_results.PARTS.values():
        for run_cfg in part.runs("cpu", False).values():
            over = dataclasses.replace(run_cfg, **reproduce.run_overrides(cfg, run_cfg))
            assert (over.seeds, over.seed, over.log_every, over.checkpoint_every, over.backend, over.threads) == \
                (5, 7, 11, 13, "ray", 2), part.id
            if hasattr(run_cfg, "precision"):                 # every harness that trains with zoo.engine.fit
                assert over.precision == "bf16", part.id
                with_precision.add(part.id)
            same = dataclasses.replace(run_cfg, **reproduce.run_overrides(keep, run_cfg))
            assert (same.seeds, same.log_every, same.checkpoint_every) == \
                (run_cfg.seeds, run_cfg.log_every, run_cfg.checkpoint_every), part.id
            assert getattr(same, "precision", "fp32") == "fp32"
    assert len(with_precision) >= 5                           # not a vacuous check: the fit harnesses have it


def test_train_hands_the_shared_options_to_the_harness(tmp_path, monkeypatch):
    """What ``train`` passes to the harness's ``run`` (a fake harness module records it)."""
    import json
    import types
    from tasks import copying
    from zoo.engine import config_to_dict
    seen = []

    def fake_run(run_cfg, command):
        seen.append((run_cfg, command))
        (tmp_path / "p" / "main").mkdir(parents=True, exist_ok=True)
        meta = {"_meta": {"config": config_to_dict(run_cfg, include_run_control=False)}}
        (tmp_path / "p" / "main" / "results.json").write_text(json.dumps(meta))

    monkeypatch.setattr(reproduce.importlib, "import_module", lambda name: types.SimpleNamespace(run=fake_run))
    part = paper_results.Part(id="p", title="t", paper="x", runs=lambda scale, smoke: {"main": copying.Config(steps=5)},
                              claims=lambda results: [])
    cfg = reproduce.Config(out=str(tmp_path), seeds=4, seed=2, threads=2)
    runs = reproduce.plan(part, cfg)
    reproduce.train(runs, cfg)
    reproduce.part_entry(part, runs)
    (run_cfg, command), = seen
    assert (run_cfg.seeds, run_cfg.seed, run_cfg.threads, run_cfg.steps) == (4, 2, 2, 5)
    assert "--seeds 4" in command and run_cfg.out == str(tmp_path / "p" / "main")


def _fake_part(name: str, minutes: float) -> "paper_results.Part":
    from tasks import copying
    return paper_results.Part(id=name, title=name, paper="x", runs=lambda scale, smoke: {"main": copying.Config(steps=5)},
                              claims=lambda results: [], cpu_minutes=minutes)


def test_runs_are_scheduled_longest_first_and_go_one_per_core():
    """LPT: the long runs start first, so the two cores finish together instead of one idling at the end."""
    cfg = reproduce.Config(out="/tmp/x")
    runs = [r for m in (3.0, 26.0, 9.0) for r in reproduce.plan(_fake_part(f"p{m:g}", m), cfg)]
    assert [r.part.id for r in reproduce.schedule(runs)] == ["p26", "p9", "p3"]
    assert reproduce.side_by_side(reproduce.Config(workers=2), 13) == 2
    assert reproduce.side_by_side(reproduce.Config(workers=2, backend="ray"), 13) == 1   # Ray schedules the jobs
    assert reproduce.side_by_side(reproduce.Config(workers=0, device="cpu"), 1) == 1


def test_a_failing_run_is_named_in_one_line(tmp_path, monkeypatch):
    import types
    from zoo.engine import RunError

    def fake_run(run_cfg, command):
        raise RunError("loss is nan at step 3")

    monkeypatch.setattr(reproduce.importlib, "import_module", lambda name: types.SimpleNamespace(run=fake_run))
    cfg = reproduce.Config(out=str(tmp_path))
    with pytest.raises(RunError, match=r"^p/main: loss is nan at step 3$"):
        reproduce.train(reproduce.plan(_fake_part("p", 1.0), cfg), cfg)


def test_a_win_smaller_than_the_seed_noise_is_not_reported_as_the_papers_direction():
    """Sort-of-CLEVR at CPU scale: NFM 0.442 ± 0.010 vs CNN 0.441 ± 0.014 over 3 seeds is a tie, not a win."""
    beats = paper_results.beats
    assert beats((0.442, 0.010, 3), (0.441, 0.014, 3)) is None
    assert beats((0.50, 0.01, 3), (0.44, 0.01, 3)) is True and beats((0.44, 0.01, 3), (0.50, 0.01, 3)) is False
    assert beats((1.0, 0.1, 3), (2.0, 0.1, 3), higher=False) is True                   # lower BCE is better
    assert beats((0.6, 0.0, 1), (0.5, 0.0, 1)) is True and beats((0.5, 0.0, 1), (0.5, 0.0, 1)) is None
    se = ((0.05 ** 2 + 0.05 ** 2) / 3) ** 0.5                                          # one standard error apart
    assert beats((0.5 + 1.01 * se, 0.05, 3), (0.5, 0.05, 3)) is True
    assert beats((0.5 + 0.99 * se, 0.05, 3), (0.5, 0.05, 3)) is None
    cell = {"rel": 0.442, "rel_std": 0.010, "rel_per_seed": [0, 0, 0], "nonrel": 0.5}
    base = {"rel": 0.441, "rel_std": 0.014, "rel_per_seed": [0, 0, 0], "nonrel": 0.5}
    claim, = paper_results.PARTS["sort_of_clevr"].claims({"main": {"sortclevr_cnn": base, "nfm_sortclevr_cnn": cell}})
    assert claim.holds is None and claim.ours.startswith("acc NFM 0.442")
    import dataclasses
    row = reproduce.report_table([{"title": "t", "paper": "p", "claims": [dataclasses.asdict(claim)]}])
    assert row.count("within noise") == 1
