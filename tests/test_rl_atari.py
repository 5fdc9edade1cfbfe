"""Atari agents: the NFM encoder, ``python -m rl.train`` end to end, ``python -m rl.evaluate``, and the
hand-written PPO example with ``zoo.RIM`` in place of ``nn.LSTM``. Everything runs on the CPU with the ROMs
of the ale-py wheel (no download); learning is not asserted here (too slow for CI)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("ale_py")
pytest.importorskip("sb3_contrib")

from sb3_contrib import RecurrentPPO  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.envs import FakeImageEnv  # noqa: E402

from rl.encoders import NFMNatureCNN, encoder_policy_kwargs  # noqa: E402
from rl.envs import AtariSpec, make_atari  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMG = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rows(path: Path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------------
def test_atari_preprocessing_frames_and_scores():
    env = make_atari(AtariSpec("ALE/Pong-v5", frame_stack=4), n_envs=2, seed=0)
    obs = env.reset()
    assert obs.shape == (2, 84, 84, 4) and obs.dtype == np.uint8
    # v5 games skip 4 frames themselves; the game must be built with frameskip=1 so the wrapper's max-pooled
    # action repeat is the only one (not 16 frames per step)
    assert AtariSpec("ALE/Pong-v5").env_kwargs()["frameskip"] == 1
    rewards = []
    for _ in range(300):
        obs, r, done, info = env.step(np.array([env.action_space.sample() for _ in range(2)]))
        rewards.append(r)
    assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}              # clipped
    # the newest frame of the stack is the last channel; the stack shifts by one frame per step
    obs2, *_ = env.step(np.zeros(2, dtype=int))
    np.testing.assert_array_equal(obs2[..., :3], obs[..., 1:])
    env.close()


@pytest.mark.slow
def test_subprocess_envs_match_in_process_envs():
    """One process per env (the ALE games registered in each) gives the same frames as in-process envs."""
    spec = AtariSpec("ALE/Pong-v5", frame_stack=2)
    envs = [make_atari(spec, n_envs=2, seed=5, vec_env=v) for v in ("dummy", "subproc")]
    obs = [e.reset() for e in envs]
    actions = np.random.default_rng(0).integers(0, 6, size=(20, 2))
    for a in actions:
        obs = [e.step(a)[0] for e in envs]
    np.testing.assert_array_equal(obs[0], obs[1])
    for e in envs:
        e.close()


# ---------------------------------------------------------------------------------------------------
# NFM encoder
# ---------------------------------------------------------------------------------------------------
def _plain_forward(enc: NFMNatureCNN, x: torch.Tensor) -> torch.Tensor:
    """The Nature CNN with the encoder's pass-1 conv weights: conv, conv, conv, linear."""
    h = x
    for m in enc.nfm.passes[0]:
        h = m(h)
    return enc.linear(h.flatten(1))


def test_nfm_encoder_shapes_and_nature_cnn_at_init():
    torch.manual_seed(0)
    enc = NFMNatureCNN(IMG)
    x = torch.rand(3, 4, 84, 84)
    y = enc(x)
    assert y.shape == (3, 512) and enc.features_dim == 512
    assert len(enc.nfm.attn) == 4                      # thesis Atari encoder: NFM at four places, 2 passes
    # gamma = 0 at init: the two-pass NFM network computes exactly the Nature CNN (same conv weights)
    torch.testing.assert_close(y, _plain_forward(enc, x))
    # with gamma != 0 the top-down reads change the features, and pass 2 depends on pass 1's last layer
    with torch.no_grad():
        for blk in enc.nfm.attn.values():
            blk.gamma.fill_(1.0)
    assert not torch.allclose(enc(x), _plain_forward(enc, x))
    trace = enc.nfm.run(x, return_attention=True)
    last = trace.attention[-1]                          # the block before conv 3 of pass 2
    assert last.sources[2] == (0, 2)                    # reads pass 1's conv 3 (top-down)
    w = last.weights
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
    assert int((w > 0).sum(-1).max()) <= 4              # top-k 4
    with pytest.raises(ValueError, match="image"):
        NFMNatureCNN(gym.spaces.Box(-1, 1, (8,), np.float32))
    with pytest.raises(ValueError, match="encoder"):
        encoder_policy_kwargs("resnet")


@pytest.mark.parametrize("algo", ["ppo", "recurrent_ppo"])
def test_nfm_encoder_trains_inside_ppo(algo, tmp_path):
    """The NFM encoder inside PPO and RecurrentPPO: the attention blocks get gradients (their gammas leave
    0), and the saved agent reproduces its actions after loading."""
    env = FakeImageEnv(action_dim=3, n_channels=1)
    kw = dict(n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu",
              policy_kwargs=encoder_policy_kwargs("nfm", d_k=8, d_v=8))
    if algo == "ppo":
        model = PPO("CnnPolicy", env, **kw)
    else:
        kw["policy_kwargs"].update(lstm_hidden_size=32)
        model = RecurrentPPO("CnnLstmPolicy", env, **kw)
    enc = model.policy.features_extractor
    assert isinstance(enc, NFMNatureCNN)
    model.learn(32)
    gammas = torch.stack([b.gamma.detach() for b in enc.nfm.attn.values()])
    assert (gammas != 0).all()
    model.save(tmp_path / "agent.zip")
    loaded = type(model).load(tmp_path / "agent.zip", device="cpu")
    obs = np.stack([env.observation_space.sample() for _ in range(4)])
    start = np.ones(4, dtype=bool)
    a1, s1 = model.predict(obs, episode_start=start, deterministic=True)
    a2, s2 = loaded.predict(obs, episode_start=start, deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    if s1 is not None:
        np.testing.assert_allclose(s1[0], s2[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# python -m rl.train / python -m rl.evaluate
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The real command: 256 Pong steps (2 envs x 64 steps x 2 updates), evaluation and checkpoint at 128."""
    out = tmp_path_factory.mktemp("rl") / "pong"
    cmd = [sys.executable, "-m", "rl.train", "--env", "ALE/Pong-v5", "--core", "none", "--encoder", "nature",
           "--steps", "256", "--n-envs", "2", "--n-steps", "64", "--n-epochs", "2", "--eval-every", "128",
           "--eval-episodes", "1", "--random-episodes", "2", "--max-episode-frames", "800", "--checkpoint-every", "128",
           "--no-progress", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_train_command_writes_logs_checkpoint_and_plot(trained_run):
    out, stdout = trained_run
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 256 and "steps/s" in stdout
    progress = _rows(out / "progress.csv")
    assert [int(r["time/total_timesteps"]) for r in progress] == [128, 256]      # one row per update
    assert progress[-1]["train/approx_kl"] != ""                                  # PPO updates ran
    evals = _rows(out / "eval.csv")
    assert [int(r["step"]) for r in evals] == [0, 128, 256]                        # untrained, periodic, final
    cpu = [float(r["eval/cpu_seconds"]) for r in evals]
    assert 0 < cpu[0] < cpu[1] < cpu[2]                                            # CPU seconds so far
    random_agent = json.loads((out / "random_agent.json").read_text())
    assert len(random_agent["returns"]) == 2 and res["random_agent"] == random_agent
    for r in evals:                                    # a Pong score, over at most 800 frames (200 steps)
        assert -21 <= float(r["eval/mean_return"]) <= 21 and 0 < float(r["eval/mean_length"]) <= 800
    # checkpoint and final agent: complete zips (atomic writes leave no temporary files behind)
    assert not list(out.glob(".*.tmp"))
    ckpt, agent = PPO.load(out / "checkpoint.zip", device="cpu"), PPO.load(out / "agent.zip", device="cpu")
    for p, q in zip(ckpt.policy.parameters(), agent.policy.parameters()):
        torch.testing.assert_close(p, q)
    assert agent.atari_spec["env_id"] == "ALE/Pong-v5" and agent.atari_spec["frame_stack"] == 4
    png = (out / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.slow
def test_train_saves_a_checkpoint_on_sigterm_and_resumes(tmp_path):
    """SIGTERM (what Ctrl-C sends the foreground job as SIGINT) while training: the agent of the step reached is
    saved (periodic checkpoints are off here, so nothing else writes it), exit 130 with one line naming
    ``--resume``, and ``--resume`` finishes the run from that step."""
    import signal
    import time

    from rl.train import read_agent_data

    out = tmp_path / "pong"
    cmd = [sys.executable, "-m", "rl.train", "--env", "ALE/Pong-v5", "--core", "none", "--n-envs", "1",
           "--n-steps", "16", "--n-epochs", "1", "--n-minibatches", "1", "--eval-every", "0", "--eval-episodes", "1",
           "--random-episodes", "0", "--max-episode-frames", "200", "--checkpoint-every", "0", "--no-progress",
           "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd + ["--steps", "1000000"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(_rows(out / "progress.csv") if (out / "progress.csv").exists() else []) < 2:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    lines = [ln for ln in (stdout + stderr).splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and "--resume" in lines[0] and "checkpoint.zip" in lines[0], stdout + stderr
    saved = int(read_agent_data(out / "checkpoint.zip")["num_timesteps"])
    assert saved >= 32 and not (out / "results.json").exists()
    done = subprocess.run(cmd + ["--steps", str(saved + 32), "--resume"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["steps"] == saved + 32


@pytest.mark.slow
def test_train_recurrent_rim_nfm_runs(tmp_path):
    """The recurrent path: RecurrentPPO with a RIM core and the NFM encoder, no frame stacking."""
    from rl import RecurrentCorePolicy
    from rl.train import Config, load_agent, train

    cfg = Config(env="ALE/Pong-v5", core="rim", encoder="nfm", steps=64, n_envs=2, n_steps=32, n_minibatches=2,
                 n_epochs=1, hidden_size=48, num_units=4, k_active=2, frame_stack=1, eval_every=0,
                 eval_episodes=1, random_episodes=1, max_episode_frames=400, checkpoint_every=0, progress=False,
                 out=str(tmp_path))
    res = train(cfg)
    assert res["steps"] == 64 and [e["step"] for e in res["evaluations"]] == [0, 64]
    agent = load_agent(tmp_path / "agent.zip", device="cpu")
    assert isinstance(agent, RecurrentPPO) and isinstance(agent.policy, RecurrentCorePolicy)
    assert agent.policy.core_name == "rim" and isinstance(agent.policy.features_extractor, NFMNatureCNN)
    assert agent.observation_space.shape == (1, 84, 84)                 # one frame, channels first


@pytest.mark.slow
def test_evaluate_command_plays_saved_agent(trained_run, tmp_path):
    from rl.evaluate import main

    agent = str(trained_run[0] / "agent.zip")
    args = [agent, "--episodes", "2", "--max-episode-frames", "400", "--deterministic", "--seed", "3"]
    res = main(args + ["--video", str(tmp_path / "video"), "--out", str(tmp_path / "eval.json")])
    assert len(res["returns"]) == 2 and all(-21 <= r <= 21 for r in res["returns"])
    assert res["mean_return"] == pytest.approx(np.mean(res["returns"]))
    assert json.loads((tmp_path / "eval.json").read_text())["returns"] == res["returns"]
    assert main(args)["returns"] == res["returns"]           # same seed, greedy: the same games
    assert len(res["videos"]) == 2                           # one video per game, the restart's stub removed
    cv2 = pytest.importorskip("cv2")
    for path, length in zip(res["videos"], res["lengths"]):
        cap = cv2.VideoCapture(path)
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        assert frames == length + 1                          # every frame of the game, plus the reset frame
    from zoo.engine import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        main([str(tmp_path / "missing.zip")])


# ---------------------------------------------------------------------------------------------------
# the hand-written PPO example
# ---------------------------------------------------------------------------------------------------
def test_example_rim_core_one_call_equals_lstm_style_loop():
    """``zoo.RIM`` in the LSTM agent: the per-step loop that zeroes states at episode starts (written for
    ``nn.LSTM``) and the one call with ``episode_starts`` give the same outputs and final state, and a
    reset step's output equals a fresh start's."""
    from rl.examples.ppo_rim_atari import Agent

    torch.manual_seed(0)
    T, B = 6, 3
    agent = Agent(n_actions=6, core="rim", hidden_size=48, num_units=4, k_active=2)
    frames = torch.randint(0, 256, (T * B, 84, 84), dtype=torch.uint8)
    done = torch.zeros(T, B)
    done[0, :] = 1
    done[3, 1] = done[4, 2] = 1
    state = (torch.randn(1, B, 48), torch.randn(1, B, 48))
    out_loop, st_loop = agent.get_states(frames, state, done.flatten(), one_call=False)
    out_one, st_one = agent.get_states(frames, state, done.flatten(), one_call=True)
    torch.testing.assert_close(out_one, out_loop)
    torch.testing.assert_close(st_one[0], st_loop[0])
    torch.testing.assert_close(st_one[1], st_loop[1])
    # env 1 restarts at t=3: from there on it matches a fresh run over frames 3.. from the zero state
    fresh, _ = agent.get_states(frames.reshape(T, B, 84, 84)[3:, 1].contiguous(), agent.initial_state(1),
                                torch.zeros(T - 3), one_call=True)
    torch.testing.assert_close(out_one.reshape(T, B, -1)[3:, 1], fresh)
    # the LSTM agent has the same interface and shapes
    lstm = Agent(n_actions=6, core="lstm", hidden_size=48)
    out_lstm, st_lstm = lstm.get_states(frames, state, done.flatten())
    assert out_lstm.shape == out_one.shape and st_lstm[0].shape == st_one[0].shape


@pytest.mark.parametrize("core", ["rim", "lstm"])
def test_example_ppo_runs_a_few_iterations(core):
    from rl.examples.ppo_rim_atari import Args, train

    args = Args(core=core, num_envs=2, num_steps=32, num_minibatches=2, update_epochs=2, total_timesteps=192,
                hidden_size=48, num_units=4, k_active=2, max_episode_frames=200, progress=False)
    res = train(args)
    assert res["iterations"] == 3 and res["steps"] == 192
    for k in ("pg_loss", "v_loss", "entropy", "approx_kl"):
        assert len(res[k]) == 3 and np.isfinite(res[k]).all()
    assert all(0 < e <= np.log(6) + 1e-5 for e in res["entropy"])     # a distribution over Pong's 6 actions
    assert len(res["scores"]) >= 2                                     # 200-frame games end within the run
    assert all(-21 <= s <= 21 for s in res["scores"])
