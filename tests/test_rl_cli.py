"""The RL commands' reliability: every option validated at parse time (one line, exit 2, nothing written),
one-line errors for bad agent files, other games and mismatched resumes, ``progress.csv`` kept on resume,
and importing ``rl`` without the RL extra naming the extra to install."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py")
pytest.importorskip("sb3_contrib")

from stable_baselines3.common.logger import Logger  # noqa: E402

from rl.envs import make_atari  # noqa: E402
from rl.train import Config, ResumableCSV, build_model, check_resume, read_agent_data  # noqa: E402
from zoo.engine import CheckpointError, ConfigError, config_to_dict, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _one_line_error(capsys, main, argv, code):
    """``main(argv)`` as the command line runs it: exit status ``code`` and one line on stderr."""
    try:
        status = run_cli(main, argv)
    except SystemExit as e:                                       # argparse's exit 2 for bad options
        status = e.code
    assert status == code
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------
# parse-time validation
# ---------------------------------------------------------------------------------------------------
BAD_TRAIN = [
    (["--env", "CartPole-v1"], "--env 'CartPole-v1'", "not an Atari game"),
    (["--env", "ALE/NoSuchGame-v5"], "--env", "not registered"),
    (["--n-minibatches", "0"], "--n-minibatches 0", ">= 1"),
    (["--n-epochs", "0"], "--n-epochs 0", ">= 1"),
    (["--sticky", "2.0"], "--sticky 2.0", "[0, 1]"),
    (["--sticky", "-0.5"], "--sticky -0.5", "[0, 1]"),
    (["--steps", "-5"], "--steps -5", ">= 1"),
    (["--n-envs", "0"], "--n-envs 0", ">= 1"),
    (["--lr", "inf"], "--lr inf", "finite"),
    (["--lr", "0"], "--lr 0", "> 0"),
    (["--gamma", "1.5"], "--gamma 1.5", "<= 1"),
    (["--eval-episodes", "0"], "--eval-episodes 0", ">= 1"),
    (["--threads", "0"], "--threads 0", ">= 1"),
    (["--frame-stack", "0"], "--frame-stack 0", ">= 1"),
    (["--device", "bogus"], "--device 'bogus'", "torch device"),
    (["--n-envs", "3", "--n-steps", "5", "--n-minibatches", "2"], "not divisible", "--n-minibatches 2"),
    (["--n-envs", "1", "--n-steps", "4", "--n-minibatches", "4"], "minibatches of 1 step", "at least 2"),
    (["--core", "rim", "--num-units", "4", "--k-active", "5", "--hidden-size", "64"], "--k-active 5", "--num-units 4"),
    (["--core", "rim", "--hidden-size", "100"], "--hidden-size 100", "multiple"),
    (["--core", "lstm", "--compile"], "--compile", "RIM core only"),
    (["--core", "transformer"], "--core", "invalid choice"),
]


@pytest.mark.parametrize("argv,names,allowed", BAD_TRAIN, ids=[" ".join(a) for a, _, _ in BAD_TRAIN])
def test_train_rejects_bad_options_at_parse_time(argv, names, allowed, tmp_path, capsys):
    from rl.train import main

    out = tmp_path / "run"
    err = _one_line_error(capsys, main, argv + ["--out", str(out)], 2)
    assert names in err and allowed in err, err
    assert not out.exists()                                        # nothing written


def test_train_rejects_unwritable_out(tmp_path, capsys):
    from rl.train import main

    (tmp_path / "afile").write_text("x")
    err = _one_line_error(capsys, main, ["--out", str(tmp_path / "afile" / "run")], 2)
    assert "--out" in err and "is a file" in err


def test_config_in_code_is_validated_too():
    with pytest.raises(ConfigError, match="--n-epochs 0"):
        Config(n_epochs=0)
    with pytest.raises(ConfigError, match="--sticky"):
        Config(sticky=2.0)
    assert Config(sticky=-1).atari_spec().repeat_action_probability is None
    assert Config(sticky=0.0).atari_spec().repeat_action_probability == 0.0


@pytest.mark.parametrize("compile", [False, True])
def test_compile_reaches_the_rim_cores(compile):
    """``--compile`` gives both RIM cores (actor and critic) the compiled step in chunks of 8; without it they
    stay eager (the agent's options, hence ``--resume``, do not change)."""
    cfg = Config(env="ALE/Pong-v5", core="rim", compile=compile, hidden_size=48, num_units=4, k_active=2,
                 n_envs=1, n_steps=8, n_minibatches=1, progress=False)
    env = make_atari(cfg.atari_spec(), 1, seed=0)
    policy = build_model(cfg, env).policy
    env.close()
    cells = [c for core in (policy.lstm_actor, policy.lstm_critic) if core is not None for c in core.cells]
    assert cells and all(c.compile_step == compile and c.compile_chunk == (8 if compile else 1) for c in cells)
    assert "compile" not in cfg.agent_options()


# ---------------------------------------------------------------------------------------------------
# agent files: bad files, other games, resume of another agent
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pong_agent(tmp_path_factory):
    """An untrained rl.train agent for Pong (PPO, Nature CNN), saved as rl.train saves it."""
    folder = tmp_path_factory.mktemp("agent")
    cfg = Config(env="ALE/Pong-v5", core="none", n_envs=1, n_steps=8, n_minibatches=1, progress=False)
    env = make_atari(cfg.atari_spec(), 1, seed=0)
    model = build_model(cfg, env)
    model.save(folder / "agent.zip")
    env.close()
    return folder / "agent.zip"


def test_bad_agent_files_give_one_line(pong_agent, tmp_path, capsys):
    from rl.evaluate import main

    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip at all" * 10)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(pong_agent.read_bytes()[: pong_agent.stat().st_size // 2])
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "agent.zip").write_bytes(pong_agent.read_bytes())
    cases = [(garbage, "not an agent file"), (truncated, "not an agent file"), (folder, "is a folder"),
             (tmp_path / "missing.zip", "not found")]
    for path, why in cases:
        err = _one_line_error(capsys, main, [str(path), "--episodes", "1"], 1)
        assert why in err and str(path) in err, err
    assert "did you mean" in _one_line_error(capsys, main, [str(folder)], 1)
    assert read_agent_data(pong_agent)["atari_spec"]["env_id"] == "ALE/Pong-v5"


def test_evaluate_refuses_another_game(pong_agent, capsys):
    from rl.evaluate import main

    err = _one_line_error(capsys, main, [str(pong_agent), "--env", "ALE/Breakout-v5"], 2)
    assert "trained on ALE/Pong-v5" in err and "6 actions" in err
    err = _one_line_error(capsys, main, [str(pong_agent), "--env", "CartPole-v1"], 2)
    assert "not an Atari game" in err
    assert "--episodes 0" in _one_line_error(capsys, main, [str(pong_agent), "--episodes", "0"], 2)


def test_resume_refuses_a_checkpoint_of_another_agent(pong_agent, tmp_path, capsys):
    from rl.train import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.zip").write_bytes(pong_agent.read_bytes())
    common = ["--out", str(run), "--resume", "--steps", "16", "--n-envs", "1", "--n-steps", "8", "--n-minibatches", "1"]
    err = _one_line_error(capsys, main, common + ["--core", "lstm"], 1)
    assert "--core none" in err and "--core lstm" in err and "another --out" in err
    err = _one_line_error(capsys, main, common + ["--core", "none", "--encoder", "nfm"], 1)
    assert "--encoder nature" in err and "--encoder nfm" in err
    err = _one_line_error(capsys, main, common + ["--core", "none", "--env", "ALE/Breakout-v5"], 1)
    assert "--env ALE/Pong-v5" in err
    # the same agent passes the check
    check_resume(Config(env="ALE/Pong-v5", core="none", out=str(run)), run / "checkpoint.zip")
    with pytest.raises(CheckpointError, match="not an agent file"):
        (run / "checkpoint.zip").write_bytes(b"\x00" * 100)
        check_resume(Config(core="none"), run / "checkpoint.zip")


@pytest.mark.parametrize("flag,expected", [([], 1), (["--no-retain-memory"], 0), (["--device", "cpu"], 1)])
def test_train_keeps_freed_memory_on_the_cpu_unless_told_not_to(flag, expected, pong_agent, tmp_path, capsys,
                                                                 monkeypatch):
    """``rl.train`` calls zoo.engine.retain_freed_memory before training on the CPU (PPO's minibatches faulted
    7.5M pages in over a short Breakout run without it, docs/rl.md); ``--no-retain-memory`` keeps glibc's
    default. Checked on a run that stops at the resume check, right after the setting is made."""
    import rl.train as T

    calls = []
    monkeypatch.setattr(T, "retain_freed_memory", lambda device: calls.append(device) or True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.zip").write_bytes(pong_agent.read_bytes())
    _one_line_error(capsys, T.main, ["--out", str(run), "--resume", "--core", "lstm", "--steps", "16", "--n-envs", "1",
                                     "--n-steps", "8", "--n-minibatches", "1", *flag], 1)
    assert len(calls) == expected
    # how a run executes, not what it computes: not among the options results.json and checkpoints record
    assert "retain_memory" not in config_to_dict(Config(), include_run_control=False)


# ---------------------------------------------------------------------------------------------------
# progress.csv on resume
# ---------------------------------------------------------------------------------------------------
def _log(path: Path, keep_until, rows):
    logger = Logger(str(path.parent), [ResumableCSV(str(path), keep_until)])
    for row in rows:
        for k, v in row.items():
            logger.record(k, v)
        logger.dump(row["time/total_timesteps"])
    logger.close()


def test_progress_csv_keeps_every_row_on_resume(tmp_path):
    path = tmp_path / "progress.csv"
    _log(path, None, [{"time/total_timesteps": s, "train/loss": s / 10} for s in (128, 256, 384)])
    # resumed from the checkpoint at 256: the 384 row is logged again by the resumed run, with a new column
    _log(path, 256, [{"time/total_timesteps": s, "train/loss": s / 10, "eval/mean_return": 1.0} for s in (384, 512)])
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["time/total_timesteps"]) for r in rows] == [128, 256, 384, 512]
    assert [float(r["train/loss"]) for r in rows] == [12.8, 25.6, 38.4, 51.2]
    assert [r["eval/mean_return"] for r in rows] == ["", "", "1.0", "1.0"]
    # a fresh run (no resume) starts the file anew
    _log(path, None, [{"time/total_timesteps": 8, "train/loss": 0.5}])
    with path.open(newline="") as f:
        assert [r["time/total_timesteps"] for r in csv.DictReader(f)] == ["8"]


# ---------------------------------------------------------------------------------------------------
# without the RL extra
# ---------------------------------------------------------------------------------------------------
def _env_without(module: str, tmp_path: Path) -> dict:
    """A subprocess environment in which ``import module`` fails (as if it were not installed)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))


@pytest.mark.parametrize("hidden", ["gymnasium",                       # fails before torch is imported: fast
                                    pytest.param("stable_baselines3", marks=pytest.mark.slow),
                                    pytest.param("sb3_contrib", marks=pytest.mark.slow)])
def test_without_the_rl_extra_imports_say_which_extra(hidden, tmp_path):
    env = _env_without(hidden, tmp_path)
    for cmd in ([sys.executable, "-c", "import rl"], [sys.executable, "-m", "rl.train", "--help"]):
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert 'pip install "modular-zoo[rl]"' in last and repr(hidden) in last, proc.stderr
        if "-m" in cmd:
            assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_the_library_needs_no_rl_extra(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import zoo"], cwd=tmp_path, env=_env_without("gymnasium", tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr


def test_random_agent_baseline_scores_full_games():
    from rl.train import random_agent

    env = make_atari(Config(env="ALE/Pong-v5", max_episode_frames=400).atari_spec(), 1, seed=0, training=False)
    res = random_agent(env, 2, seed=0)
    env.close()
    assert len(res["returns"]) == 2 and all(-21 <= r <= 0 for r in res["returns"])
    assert res["mean_return"] == pytest.approx(np.mean(res["returns"]))


def test_curves_of_several_runs(tmp_path, capsys):
    """python -m rl.curves: one figure and a table from the files rl.train writes; bad folders refused."""
    from rl.curves import main

    runs = []
    for core, scores in (("lstm", [1.0, 3.0, 8.0]), ("rim", [1.5, 2.0, 6.0])):
        run = tmp_path / f"breakout-{core}"
        run.mkdir()
        (run / "config.json").write_text(f'{{"core": "{core}", "env": "ALE/Breakout-v5", "eval_episodes": 10}}')
        (run / "random_agent.json").write_text('{"mean_return": 1.3, "std_return": 1.2, "returns": [1.0, 1.6]}')
        (run / "eval.csv").write_text("step,eval/mean_return,eval/std_return,eval/cpu_seconds\n" + "".join(
            f"{i * 1000},{s},0.5,{i * 600.0}\n" for i, s in enumerate(scores)))
        (run / "episodes.csv").write_text("step,return,frames\n" + "".join(f"{i * 100},{i % 4},500\n" for i in range(30)))
        runs.append(str(run))
    fig = tmp_path / "fig" / "curves.png"
    assert run_cli(main, runs + ["--out", str(fig)]) == 0
    out = capsys.readouterr().out
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| breakout-lstm | 2000 | 0.33 | 8.0 ± 0.5 | 10 |" in out and "random agent" in out
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--out", str(fig)])
    assert e.value.code == 2 and "not an rl.train output folder" in capsys.readouterr().err
