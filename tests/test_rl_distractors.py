"""Object picking among seen and novel distractors (rl.gridworld) and its harness (python -m rl.distractors)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("minigrid")
pytest.importorskip("sb3_contrib")

from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX  # noqa: E402
from minigrid.minigrid_env import MiniGridEnv  # noqa: E402

from rl.gridworld import (DISTRACTOR_TYPES, NOVEL_COLORS, SEEN_COLORS, TARGET, DistractorPickupEnv,  # noqa: E402
                          OneHotView, make_distractor_env)
from zoo.engine import ConfigError, run_cli  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _objects(env) -> list:
    return [(o.type, o.color) for o in env.unwrapped.grid.grid if o is not None and o.type != "wall"]


@pytest.mark.parametrize("split, view", [("seen", 7), ("novel", 7), ("seen", 3), ("novel", 5)])
def test_fast_view_equals_minigrid_view(split, view):
    """The numpy observation equals MiniGrid's own gen_obs at every step (all headings, walls, the edge of
    the grid, objects behind objects), and the carried object shows at the agent's cell; at every view size."""
    env = make_distractor_env(split, num_distractors=6, agent_view_size=view)
    assert env.observation_space.shape == (view * view * sum(OneHotView.SIZES),)
    raw = env.unwrapped
    rng = np.random.default_rng(0)
    steps = 0
    for ep in range(12):
        env.reset(seed=ep)
        done = False
        while not done:
            np.testing.assert_array_equal(raw.gen_obs()["image"], MiniGridEnv.gen_obs(raw)["image"])
            _, _, term, trunc, _ = env.step(int(rng.integers(3)))     # no pickup: long episodes, all headings
            done, steps = term or trunc, steps + 1
    assert steps > 300
    raw.carrying = raw.grid.grid[[o is not None and o.type != "wall" for o in raw.grid.grid].index(True)]
    np.testing.assert_array_equal(raw.gen_obs()["image"], MiniGridEnv.gen_obs(raw)["image"])


def test_split_colours_and_the_target():
    """Seen rooms hold distractors in red/green/blue only, novel rooms in purple/yellow/grey only; every
    room holds exactly one red ball and never another."""
    assert not set(SEEN_COLORS) & set(NOVEL_COLORS)
    for split, colours in (("seen", SEEN_COLORS), ("novel", NOVEL_COLORS)):
        env = make_distractor_env(split, num_distractors=5)
        kinds = set()
        for ep in range(40):
            env.reset(seed=ep)
            objs = _objects(env)
            assert objs.count(TARGET) == 1 and len(objs) == 6
            distractors = [o for o in objs if o != TARGET]
            assert all(c in colours for _, c in distractors)
            kinds.update(distractors)
        assert {t for t, _ in kinds} == {"key", "ball", "box"}
    # the seen split includes the confusable ones: red non-balls and balls of other colours
    env = make_distractor_env("seen", num_distractors=8)
    seen = set()
    for ep in range(40):
        env.reset(seed=ep)
        seen.update(_objects(env))
    assert ("key", "red") in seen and ("box", "red") in seen and ("ball", "green") in seen


def _face(env, obj_type: str, obj_color: str):
    """Put the agent right in front of the first object of that kind, facing it."""
    raw = env.unwrapped
    for i, o in enumerate(raw.grid.grid):
        if o is not None and (o.type, o.color) == (obj_type, obj_color):
            x, y = i % raw.width, i // raw.width
            for d, (dx, dy) in enumerate([(1, 0), (0, 1), (-1, 0), (0, -1)]):
                if raw.grid.get(x - dx, y - dy) is None:
                    raw.agent_pos, raw.agent_dir = (x - dx, y - dy), d
                    return
    raise AssertionError("object not found")


def test_pickup_rewards_the_target_and_ends_on_a_distractor():
    env = make_distractor_env("seen", num_distractors=8)
    env.reset(seed=3)
    _face(env, *TARGET)
    env.unwrapped.step_count = 31
    _, r, term, trunc, info = env.step(3)                              # pick up
    assert term and not trunc and info["success"] and r == pytest.approx(1 - 0.9 * 32 / 64)
    env.reset(seed=3)
    wrong = next(o for o in _objects(env) if o != TARGET)
    _face(env, *wrong)
    _, r, term, _, info = env.step(3)
    assert term and r == 0 and not info["success"]                      # a distractor costs the episode
    env.reset(seed=3)
    for _ in range(64):
        _, r, term, trunc, info = env.step(0)                           # turning in place until the limit
    assert trunc and r == 0 and not info["success"]


def test_one_hot_view_and_action_space():
    env = make_distractor_env("novel")
    obs, _ = env.reset(seed=0)
    assert env.action_space.n == 4 and obs.shape == (7 * 7 * 20,) and obs.dtype == np.float32
    cells = obs.reshape(49, 20)
    sizes = OneHotView.SIZES
    for a, b in ((0, sizes[0]), (sizes[0], sizes[0] + sizes[1]), (sizes[0] + sizes[1], 20)):
        np.testing.assert_array_equal(cells[:, a:b].sum(1), 1)          # one object, colour, state per cell
    image = env.unwrapped.gen_obs()["image"].reshape(49, 3)
    np.testing.assert_array_equal(cells[:, :sizes[0]].argmax(1), image[:, 0])
    np.testing.assert_array_equal(cells[:, sizes[0]:sizes[0] + sizes[1]].argmax(1), image[:, 1])
    dict_env = make_distractor_env("novel", dict_obs=True)
    d, _ = dict_env.reset(seed=0)
    np.testing.assert_array_equal(d["image"], obs)
    assert d["direction"] == env.unwrapped.agent_dir and dict_env.observation_space["direction"].n == 4
    with pytest.raises(ValueError, match="split"):
        make_distractor_env("unseen")
    with pytest.raises(ValueError, match="colours"):
        DistractorPickupEnv(distractor_colors=("pink",))
    with pytest.raises(ValueError, match="does not fit"):
        DistractorPickupEnv(size=5, num_distractors=20)


def test_index_view_keeps_minigrids_indices_channels_first():
    """view="index": the raw (object, colour, state) indices as (3, V, V) float32; novel distractors are colour
    values 3-5 (purple, yellow, grey), never in a seen-split view."""
    colours_seen = {"seen": set(), "novel": set()}
    for split in ("seen", "novel"):
        env = make_distractor_env(split, view="index", num_distractors=6)
        assert env.observation_space.shape == (3, 7, 7) and env.observation_space.dtype == np.float32
        for ep in range(20):
            obs, _ = env.reset(seed=ep)
            image = env.unwrapped.gen_obs()["image"]
            assert obs.dtype == np.float32
            np.testing.assert_array_equal(obs, image.transpose(2, 0, 1))
            objects = np.isin(obs[0], [OBJECT_TO_IDX[t] for t in DISTRACTOR_TYPES])
            colours_seen[split] |= set(obs[1][objects].astype(int).tolist())
        d, _ = make_distractor_env(split, view="index", num_distractors=6, dict_obs=True).reset(seed=0)
        np.testing.assert_array_equal(d["image"], env.reset(seed=0)[0])
    novel = {COLOR_TO_IDX[c] for c in NOVEL_COLORS}
    assert novel <= colours_seen["novel"] and not novel & colours_seen["seen"]
    with pytest.raises(ValueError, match="view"):
        make_distractor_env("seen", view="pixels")


def test_grid_conv_encoder_is_the_reference_stack():
    """The rl-starter-files ACModel convs: (3, 7, 7) -> 64 features; 9x9 -> 64 * 2 * 2; narrower views fail."""
    from rl.encoders import GridConvEncoder

    enc = GridConvEncoder(make_distractor_env("seen", view="index").observation_space)
    assert enc.features_dim == 64
    assert [tuple(m.weight.shape) for m in enc.net if isinstance(m, torch.nn.Conv2d)] == \
        [(16, 3, 2, 2), (32, 16, 2, 2), (64, 32, 2, 2)]
    assert enc(torch.rand(5, 3, 7, 7) * 10).shape == (5, 64)
    wide = GridConvEncoder(make_distractor_env("seen", view="index", agent_view_size=9).observation_space)
    assert wide.features_dim == 256 and wide(torch.rand(2, 3, 9, 9)).shape == (2, 256)
    with pytest.raises(ValueError, match="V >= 7"):
        GridConvEncoder(make_distractor_env("seen", view="index", agent_view_size=5).observation_space)


def test_figure_titles_say_what_the_cores_read():
    from rl.distractors import Config, reads, room

    assert room(Config()) == ""
    assert room(Config(num_distractors=8, room_size=9)) == " among 8 distractors in a 9x9 room"
    assert room(Config(room_size=9)) == " among 4 distractors in a 9x9 room"
    assert reads(Config()) == ""
    assert reads(Config(encoder="cells")) == "; cores read 16-d cell embeddings, RIM over them as a set"
    assert reads(Config(encoder="conv")) == "; cores read the reference convs over raw indices"
    assert reads(Config(view_size=3)) == "; 3x3 view"


def test_curves_show_each_splits_chance_level(tmp_path, monkeypatch):
    """curves.png draws the random agent's success of each split as a dashed line at its own height."""
    import matplotlib.pyplot as plt

    from rl.distractors import Config, plot_curves

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    pts = [{"step": s, "seen_success": 0.5, "novel_success": 0.25} for s in (0, 100)]
    results = {core: {"curves": [{"points": pts}]} for core in ("rim", "lstm")}
    results["random"] = {"seen": 0.125, "novel": 0.0625}
    plot_curves(Config(num_distractors=8, room_size=9), results, tmp_path / "c.png")
    assert "Pick up the red ball among 8 distractors in a 9x9 room:" in figs[0]._suptitle.get_text()
    for ax, split in zip(figs[0].axes, ("seen", "novel")):
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert [tuple(ln.get_ydata()) for ln in dashed] == [(results["random"][split],) * 2]
        assert dashed[0].get_label() == "random agent"


def test_conv_encoder_agents_read_the_index_view():
    """--encoder conv: the envs give the index view and every core reads GridConvEncoder's 64 features."""
    from rl.distractors import Config, build_agent, make_vec

    cfg = Config(encoder="conv", hidden_size=16, n_envs=2, n_steps=16, n_minibatches=2, n_epochs=1)
    env = make_vec(cfg, "seen", 2, 0)
    assert env.observation_space.shape == (3, 7, 7)
    for core in ("rim", "lstm"):
        agent = build_agent(cfg, core, env, 0)
        policy = agent.policy
        assert type(policy.features_extractor).__name__ == "GridConvEncoder"
        assert policy.lstm_actor.input_size == 64
        before = [p.detach().clone() for p in policy.features_extractor.parameters()]
        agent.learn(32)
        assert any(not torch.equal(a, p) for a, p in zip(before, policy.features_extractor.parameters()))
    env.close()


def test_policies_take_the_raw_dict_observations():
    """The MultiInputLstmPolicy equivalent on the gridworld's dict observations (image + direction)."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    from rl import RIMMultiInputActorCriticPolicy

    env = make_vec_env(make_distractor_env, n_envs=2, seed=0, env_kwargs=dict(dict_obs=True))
    model = RecurrentPPO(RIMMultiInputActorCriticPolicy, env, n_steps=16, batch_size=16, n_epochs=1, seed=0,
                         device="cpu", policy_kwargs=dict(lstm_hidden_size=24, num_units=4, k_active=2))
    model.learn(32)
    assert model.policy.core_name == "rim"
    obs = env.reset()
    action, state = model.predict(obs, episode_start=np.ones(2, bool))
    assert action.shape == (2,) and state[0].shape == (1, 2, 24)


# ---------------------------------------------------------------------------------------------------
# the harness
# ---------------------------------------------------------------------------------------------------
BAD = [
    (["--n-minibatches", "0"], "--n-minibatches 0"),
    (["--n-epochs", "0"], "--n-epochs 0"),
    (["--steps", "0"], "--steps 0"),
    (["--num-units", "4", "--k-active", "5"], "--k-active 5"),
    (["--hidden-size", "65"], "--hidden-size 65"),
    (["--cores", "rim", "rim"], "twice"),
    (["--cores", "transformer"], "--cores"),
    (["--num-distractors", "30", "--room-size", "6"], "does not fit"),
    (["--n-envs", "3", "--n-steps", "5", "--n-minibatches", "2"], "not divisible"),
    (["--lr", "nan"], "--lr nan"),
    (["--seeds", "0"], "--seeds 0"),
    (["--encoder", "pixels"], "--encoder"),
    (["--cell-dim", "0"], "--cell-dim 0"),
    (["--rim-rows", "one"], "only with --encoder cells"),
    (["--encoder", "cells", "--features", "64"], "--cell-dim"),
    (["--view-size", "4"], "must be odd"),
    (["--view-size", "1"], "--view-size 1"),
    (["--encoder", "conv", "--view-size", "5"], "--view-size 7 or more"),
    (["--encoder", "conv", "--features", "32"], "own width"),
]


class _PickUpThenTurn:
    """A stand-in policy: pick up at the first step (ends the episode when an object is just ahead), then
    turn left until the time limit."""

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        return np.array([3 if episode_start[0] else 0]), state


def test_episode_gif_skips_layouts_that_end_at_once(tmp_path):
    from PIL import Image

    from rl.distractors import EVAL_SEED, Config, env_kwargs, record_gif

    cfg = Config(out=str(tmp_path))
    env = make_distractor_env("novel", **env_kwargs(cfg))
    env.reset(seed=EVAL_SEED["novel"])
    assert env.step(3)[2]                        # the first evaluation layout: the red ball just ahead
    path = record_gif(_PickUpThenTurn(), cfg, "novel", tmp_path / "episode.gif")
    assert Image.open(path).n_frames > 8         # a later layout, played to the time limit, not 1 step
    one = record_gif(_PickUpThenTurn(), cfg, "novel", tmp_path / "one.gif", tries=1)
    assert Image.open(one).n_frames <= 3         # one try: the 1-step episode (start, end, held end)


@pytest.mark.parametrize("argv,what", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_harness_rejects_bad_options(argv, what, tmp_path, capsys):
    from rl.distractors import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and what in err and "\n" not in err, err
    assert not out.exists()


def test_cells_encoder_gives_the_rim_one_row_per_view_cell():
    """--encoder cells: both cores read the same CellEncoder; the RIM attends over the 49 cells as rows."""
    from rl.distractors import Config, build_agent, make_vec

    cfg = Config(encoder="cells", cell_dim=8, hidden_size=16, n_envs=2, n_steps=16, n_minibatches=2, n_epochs=1)
    env = make_vec(cfg, "seen", 2, 0)
    for core, rows, size in (("rim", 49, 8), ("lstm", 1, 49 * 8)):
        agent = build_agent(cfg, core, env, 0)
        policy = agent.policy
        assert type(policy.features_extractor).__name__ == "CellEncoder"
        assert policy.input_rows == rows and policy.lstm_actor.input_size == size
        before = [p.detach().clone() for p in policy.lstm_actor.parameters()]
        agent.learn(32)                                      # rollouts (T = 1) and a PPO update (T = 16) run
        assert any(not torch.equal(a, p) for a, p in zip(before, policy.lstm_actor.parameters()))
    one = build_agent(Config(encoder="cells", cell_dim=8, hidden_size=16, rim_rows="one"), "rim", env, 0).policy
    assert one.input_rows == 1 and one.lstm_actor.input_size == 49 * 8
    env.close()


def test_view_size_reaches_the_envs_and_the_cells_encoder():
    """--view-size 3: the training envs see 3 x 3 cells (the agent at the bottom middle), and the RIM attends
    over 9 cell rows."""
    from rl.distractors import Config, build_agent, make_vec

    cfg = Config(view_size=3, encoder="cells", cell_dim=8, hidden_size=16)
    env = make_vec(cfg, "seen", 2, 0)
    assert env.observation_space.shape == (9 * sum(OneHotView.SIZES),) and env.reset().shape == (2, 9 * 20)
    assert env.envs[0].unwrapped.gen_obs()["image"].shape == (3, 3, 3)
    assert build_agent(cfg, "rim", env, 0).policy.input_rows == 9
    env.close()


def test_random_agent_success_is_the_chance_level():
    """random_success plays uniformly random actions: about 1 in 6 episodes in the 7-room (a hand count of
    returns > 0), fewer in a larger room, the same number for the same seed, and one env so short episodes
    are not over-counted."""
    from rl.distractors import Config, random_success

    small = random_success(Config(), 400)
    assert all(0.10 < v < 0.25 for v in small.values()), small
    assert random_success(Config(), 400) == small
    large = random_success(Config(room_size=12), 400)
    assert all(v < min(small.values()) for v in large.values()), (small, large)


def test_config_in_code_is_validated():
    from rl.distractors import Config

    with pytest.raises(ConfigError, match="--k-active"):
        Config(num_units=2, k_active=3, hidden_size=64)
    Config(cores=["lstm"], num_units=2, k_active=3)        # RIM options are checked only when RIM runs


@pytest.mark.slow
def test_harness_end_to_end_and_resume(tmp_path, capsys):
    """A tiny run: results.json has the documented keys, curves and GIFs are written, and --resume reuses
    finished runs (the same results)."""
    from rl.distractors import Config, main, random_success

    out = tmp_path / "d"
    argv = ["--steps", "256", "--seeds", "2", "--n-envs", "4", "--n-steps", "32", "--n-epochs", "1",
            "--eval-every", "128", "--curve-episodes", "4", "--eval-episodes", "6", "--hidden-size", "16",
            "--features", "16", "--head-size", "16", "--chance-episodes", "30", "--workers", "1", "--no-progress",
            "--out", str(out)]
    assert run_cli(main, argv) == 0
    res = json.loads((out / "results.json").read_text())
    for core in ("rim", "lstm"):
        for split in ("seen", "novel"):
            entry = res[core][split]
            assert set(entry) == {"success", "success_std", "return", "return_std", "per_seed"}
            assert [p["seed"] for p in entry["per_seed"]] == [0, 1]
            assert entry["success"] == pytest.approx(np.mean([p["success"] for p in entry["per_seed"]]))
            assert all(0 <= p["success"] <= 1 for p in entry["per_seed"])
        steps = [p["step"] for p in res[core]["curves"][0]["points"]]
        assert steps[0] == 0 and steps[-1] == 256 and len(steps) >= 3
        gif = (out / f"episode-{core}.gif").read_bytes()
        assert gif[:6] == b"GIF89a"
    assert res["random"] == random_success(Config(), 30)              # --chance-episodes, not --eval-episodes
    assert f"A uniformly random agent succeeds in {res['random']['seen']:.3f} (seen) / " \
           f"{res['random']['novel']:.3f} (novel) of 30 episodes" in (out / "results.md").read_text()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Command: `python -m rl.distractors --steps 256" in (out / "results.md").read_text()
    again = main(argv + ["--resume"])
    for core in ("rim", "lstm"):
        assert again[core]["novel"] == res[core]["novel"] and again[core]["seen"] == res[core]["seen"]


def test_resume_checks_each_runs_options(tmp_path, capsys):
    """--resume reuses a finished run or continues a checkpoint only under the options it was trained with
    (one-line refusal naming the change, for run.json and for a checkpoint alone, and for a run that recorded
    none); more seeds or fewer cores reuse the finished runs."""
    from rl.distractors import main

    out = tmp_path / "d"
    argv = ["--steps", "128", "--seeds", "1", "--n-envs", "2", "--n-steps", "32", "--n-epochs", "1",
            "--eval-every", "0", "--eval-episodes", "2", "--hidden-size", "8", "--features", "8", "--head-size",
            "8", "--chance-episodes", "2", "--workers", "1", "--no-progress", "--no-gif", "--out", str(out)]
    first = main(argv)
    capsys.readouterr()
    for tamper in ("none", "run.json", "options"):
        run = out / "lstm-s0"
        if tamper == "run.json":                      # a torn run: only the checkpoint and its options are left
            (run / "run.json").rename(run / "run.bak")
        if tamper == "options":                       # a run written before runs recorded their options
            (run / "run.bak").rename(run / "run.json")
            done = json.loads((run / "run.json").read_text())
            del done["options"]
            (run / "run.json").write_text(json.dumps(done))
        assert run_cli(main, argv + ["--cores", "lstm", "--lr", "0.5", "--resume"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        if tamper == "options":
            assert "does not record the options" in err[0] and "run.json" in err[0]
        else:
            assert "lr: 0.001 -> 0.5" in err[0] and ("checkpoint.zip" if tamper == "run.json" else "run.json") in err[0]
    done["options"] = json.loads((out / "lstm-s0" / "options.json").read_text())
    (out / "lstm-s0" / "run.json").write_text(json.dumps(done))
    more = main(argv[:3] + ["2"] + argv[4:] + ["--cores", "lstm", "--chance-episodes", "3", "--resume"])
    assert more["lstm"]["seen"]["per_seed"][0] == first["lstm"]["seen"]["per_seed"][0]
    assert [p["seed"] for p in more["lstm"]["novel"]["per_seed"]] == [0, 1]
    assert not (out / "rim-s1").exists()
    # a reused run that was the first seed of another report keeps its GIF, which is not this report's
    done = json.loads((out / "lstm-s1" / "run.json").read_text())
    (out / "lstm-s1" / "run.json").write_text(json.dumps({**done, "gif": str(tmp_path / "seed1.gif")}))
    capsys.readouterr()
    main(argv[:3] + ["2"] + argv[4:] + ["--cores", "lstm", "--resume"])
    printed = capsys.readouterr().out
    assert "wrote" in printed and "seed1.gif" not in printed


def test_cell_kinds_of_a_hand_made_view():
    """rl.attention sorts each view cell by what it shows: the red ball, a distractor, wall, floor, unseen."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    from rl.attention import KINDS, cell_kinds

    image = np.zeros((7, 7, 3), np.uint8)                        # object 0 = unseen everywhere
    cells = {(0, 0): ("ball", "red", "target"), (1, 0): ("ball", "green", "distractor"),
             (2, 0): ("key", "red", "distractor"), (3, 0): ("box", "purple", "distractor"),
             (4, 0): ("wall", "grey", "wall"), (5, 0): ("empty", "red", "empty")}
    for (i, j), (obj, colour, _) in cells.items():
        image[i, j] = (OBJECT_TO_IDX[obj], COLOR_TO_IDX[colour], 0)
    view = OneHotView.__new__(OneHotView)
    view.offsets = np.cumsum((0,) + OneHotView.SIZES[:-1])
    kinds = cell_kinds(view.encode(image)).reshape(7, 7)
    for (i, j), (_, _, want) in cells.items():
        assert KINDS[kinds[i, j]] == want, (i, j)
    assert KINDS[kinds[6, 6]] == "unseen"


def test_attention_by_kind_on_an_untrained_cells_agent():
    """An untrained RIM's input attention is near uniform (1/50 per row) for every kind of cell, exactly so with
    zero keys; an agent whose RIM reads one row has nothing to measure."""
    from rl.attention import KINDS, attention_by_kind
    from rl.distractors import Config, build_agent, make_vec

    torch.manual_seed(0)
    cfg = Config(encoder="cells", cell_dim=8, hidden_size=16, n_envs=2)
    env = make_vec(cfg, "seen", 2, 0)
    play = make_distractor_env("novel", num_distractors=4, size=7, max_steps=10)
    agent = build_agent(cfg, "rim", env, 0)
    res = attention_by_kind(agent, play, [0, 1])
    assert 0 <= res["success"] <= 1 and res["steps"] >= 2
    for kind in KINDS:
        if not np.isnan(res[kind]):
            assert 0.005 < res[kind] < 0.06, (kind, res[kind])
    with torch.no_grad():                      # keys all 0 (as the null row's): exactly uniform over 1 + 49 rows
        agent.policy.lstm_actor.cells[0].input_key.weight.zero_()
    res = attention_by_kind(agent, play, [0, 1])
    assert {k: round(res[k], 6) for k in ("target", "wall", "null") if not np.isnan(res[k])} == \
        {k: 0.02 for k in ("target", "wall", "null") if not np.isnan(res[k])}
    assert not np.isnan(res["wall"]) and not np.isnan(res["target"])
    one = build_agent(Config(encoder="cells", cell_dim=8, hidden_size=16, n_envs=2, rim_rows="one"), "rim", env, 0)
    with pytest.raises(ValueError, match="one input row"):
        attention_by_kind(one, play, [0])
    assert "forward" not in vars(agent.policy.lstm_actor)        # the hook is gone: the core's own forward again
    env.close()


def test_harness_with_cells_writes_the_attention_table(tmp_path):
    """--encoder cells: the harness measures its RIM agents' input attention (rl.attention) into the report."""
    from rl.distractors import main

    out = tmp_path / "c"
    argv = ["--encoder", "cells", "--cell-dim", "8", "--cores", "rim", "--steps", "64", "--seeds", "1",
            "--n-envs", "2", "--n-steps", "32", "--n-minibatches", "2", "--n-epochs", "1", "--eval-every", "0",
            "--curve-episodes", "2", "--eval-episodes", "2", "--hidden-size", "16", "--max-steps", "8",
            "--no-gif", "--workers", "1", "--no-progress", "--out", str(out)]
    assert run_cli(main, argv) == 0
    att = json.loads((out / "attention.json").read_text())
    assert att["episodes"] == 2 and set(att) >= {"seen", "novel"}
    assert att["novel"]["null"]["per_seed"] and 0 < att["novel"]["null"]["mean"] < 1
    assert "| novel |" in (out / "attention.md").read_text() and "null row" in (out / "results.md").read_text()


def test_training_keeps_freed_memory_on_the_cpu(tmp_path, monkeypatch):
    """Each agent's process keeps freed CPU memory (zoo.engine.retain_freed_memory) before it trains."""
    import rl.distractors as D

    class Called(Exception):
        pass

    def called(device):
        raise Called

    monkeypatch.setattr(D, "retain_freed_memory", called)
    n = torch.get_num_threads()
    try:
        with pytest.raises(Called):
            D.train_one(D.Config(out=str(tmp_path), device="cpu", steps=64, n_envs=2, n_steps=16, n_minibatches=1,
                                 n_epochs=1, eval_episodes=2), "lstm", 0)   # tiny, in case it does train
    finally:
        torch.set_num_threads(n)
