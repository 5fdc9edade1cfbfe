"""Bouncing balls (thesis ch. 8.4.2): the generator's physics and rendering, the models, the rollout, the harness."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.data import bouncing_balls as bb

# ------------------------------------------------------------------------------------------------------
# physics
# ------------------------------------------------------------------------------------------------------


def _crowded(seed: int = 0, num: int = 200, balls: int = 8):
    """Many balls, so that collisions (also simultaneous ones) and wall bounces happen often."""
    return bb.initial_state(np.random.default_rng(seed), num, balls, radii=(0.8, 1.2), masses=(0.5, 3.0))


def _momentum(v, m):
    return (m[..., None] * v).sum(-2)                                  # (N, 2)


def _energy(v, m):
    return 0.5 * (m * (v * v).sum(-1)).sum(-1)                          # (N,)


def test_head_on_collision_matches_the_1d_elastic_formula():
    # two balls on the x axis approaching each other, overlapping by a little after the move
    x = np.array([[[4.0, 5.0], [6.0, 5.0]]])
    v = np.array([[[0.3, 0.0], [-0.2, 0.0]]])
    r = np.array([[1.0, 1.0]])
    m = np.array([[1.0, 3.0]])
    _, v2, wall, coll = bb.physics_substep(x, v, r, m, dt=0.1)
    m1, m2, u1, u2 = 1.0, 3.0, 0.3, -0.2
    want1 = ((m1 - m2) * u1 + 2 * m2 * u2) / (m1 + m2)
    want2 = ((m2 - m1) * u2 + 2 * m1 * u1) / (m1 + m2)
    assert coll[0] == 1 and not wall.any()
    np.testing.assert_allclose(v2[0], [[want1, 0.0], [want2, 0.0]], atol=1e-12)


def test_oblique_collision_exchanges_only_along_the_line_of_centres():
    x = np.array([[[4.0, 4.0], [5.3, 5.3]]])                            # line of centres at 45 degrees
    v = np.array([[[0.4, 0.1], [-0.1, 0.0]]])
    r, m = np.array([[1.0, 1.0]]), np.array([[2.0, 1.0]])
    x2, v2, _, coll = bb.physics_substep(x, v, r, m, dt=0.1)
    assert coll[0] == 1
    w = (x2[0, 1] - x2[0, 0]) / np.linalg.norm(x2[0, 1] - x2[0, 0])
    t = np.array([-w[1], w[0]])                                         # tangent
    np.testing.assert_allclose(v2[0] @ t, v[0] @ t, atol=1e-12)         # tangential parts unchanged
    assert (v2[0, 1] - v2[0, 0]) @ w > 0                                # separating afterwards


def test_receding_balls_do_not_collide():
    x = np.array([[[4.0, 5.0], [5.9, 5.0]]])                            # overlapping but moving apart
    v = np.array([[[-0.1, 0.0], [0.1, 0.0]]])
    _, v2, _, coll = bb.physics_substep(x, v, np.ones((1, 2)), np.ones((1, 2)), dt=0.1)
    assert coll[0] == 0
    np.testing.assert_array_equal(v2, v)


@pytest.mark.parametrize("axis, side", [(0, -1), (0, 1), (1, -1), (1, 1)])
def test_every_wall_mirrors_the_position_and_flips_the_normal_velocity(axis, side):
    r = 1.0
    x = np.full((1, 1, 2), 5.0)
    x[0, 0, axis] = (r + 0.05) if side < 0 else (bb.BOX - r - 0.05)     # 0.05 from the wall
    v = np.array([[[0.1, 0.1]]])
    v[0, 0, axis] = 0.3 * side                                          # moving into it, 0.15 per sub-step
    x2, v2, wall, _ = bb.physics_substep(x, v, np.array([[r]]), np.array([[1.0]]), dt=0.5)
    assert wall[0, 0]
    want = x[0, 0, axis] - 0.05 * side                                  # 0.1 past the wall, mirrored back
    np.testing.assert_allclose(x2[0, 0, axis], want, atol=1e-12)
    assert v2[0, 0, axis] == -v[0, 0, axis] and v2[0, 0, 1 - axis] == v[0, 0, 1 - axis]


def test_momentum_conserved_through_every_ball_collision_and_energy_through_everything():
    x, v, r, m = _crowded()
    collided = walls = 0
    for _ in range(120):
        x2, v2, wall, coll = bb.physics_substep(x, v, r, m, dt=0.5)
        no_wall = ~wall.any(1)
        hit = (coll > 0) & no_wall
        np.testing.assert_allclose(_momentum(v2, m)[no_wall], _momentum(v, m)[no_wall], rtol=0, atol=1e-12)
        np.testing.assert_allclose(_energy(v2, m), _energy(v, m), rtol=1e-12)
        collided += hit.sum()
        walls += wall.any(1).sum()
        x, v = x2, v2
    assert collided > 200 and walls > 200                                # both were exercised, many times


def test_simultaneous_collisions_stay_elastic():
    # three balls all touching the middle one at once: resolved as two-body exchanges, energy kept
    x = np.array([[[3.2, 5.0], [5.0, 5.0], [6.8, 5.0]]])
    v = np.array([[[0.3, 0.0], [0.0, 0.05], [-0.3, 0.0]]])
    r, m = np.ones((1, 3)), np.array([[1.0, 2.0, 1.5]])
    _, v2, _, coll = bb.physics_substep(x, v, r, m, dt=0.01)
    assert coll[0] >= 2
    np.testing.assert_allclose(_energy(v2, m), _energy(v, m), rtol=1e-12)
    np.testing.assert_allclose(_momentum(v2, m), _momentum(v, m), atol=1e-12)


def test_initial_state_follows_the_reference_sampling():
    x, v, r, m = bb.initial_state(np.random.default_rng(3), 300, 8, radii=(0.8, 1.2))
    assert ((x >= 2.0) & (x + r[..., None] <= 10.0)).all()             # 2 + 8 U, inside the box
    i, j = np.tril_indices(8, -1)
    dist = np.linalg.norm(x[:, i] - x[:, j], axis=-1)
    assert (dist >= r[:, i] + r[:, j]).all()                            # no overlap at initialization
    np.testing.assert_allclose(np.linalg.norm(v.reshape(300, -1), axis=1), 0.5)   # |V|_F = 0.5
    np.testing.assert_array_equal(m, r)                                 # masses proportional to radii
    assert ((r >= 0.8) & (r <= 1.2)).all() and r.std() > 0.05


def test_balls_stay_inside_the_box():
    data = bb.generate(40, (6, 8), frames=51, resolution=8, seed=1)
    r = data.radii[:, None, :, None]
    p = data.positions
    present = ~np.isnan(p)
    inside = (p >= r - 1e-5) & (p <= bb.BOX - r + 1e-5)
    assert inside[present].all()


def test_frames_are_recorded_before_the_substeps():
    x, v, r, m = bb.initial_state(np.random.default_rng(0), 5, 3)
    pos, vel = bb.simulate(x, v, r, m, frames=3, substeps=2)
    np.testing.assert_array_equal(pos[:, 0], x)
    np.testing.assert_array_equal(vel[:, 0], v)
    x1, v1, _, _ = bb.physics_substep(x, v, r, m, 0.5)
    x2, v2, _, _ = bb.physics_substep(x1, v1, r, m, 0.5)
    np.testing.assert_array_equal(pos[:, 1], x2)


# ------------------------------------------------------------------------------------------------------
# rendering and curtain
# ------------------------------------------------------------------------------------------------------


def _dense_render(pos, r, res, box=bb.BOX, threshold=0.5):
    """The formula, evaluated on every pixel: sum_i exp(-(d_i^2 / r_i^2)^4) > threshold."""
    c = bb.pixel_centres(res, box)
    dx = (c[None, None, :] - pos[..., 0:1]) ** 2 / r[..., None] ** 2    # (F, n, W)
    dy = (c[None, None, :] - pos[..., 1:2]) ** 2 / r[..., None] ** 2
    q = dy[..., :, None] + dx[..., None, :]
    return (np.exp(-q ** 4).sum(1) > threshold).astype(np.uint8)


def test_render_equals_the_dense_formula_also_for_touching_balls():
    x, v, r, m = bb.initial_state(np.random.default_rng(2), 20, 6)
    pos, _ = bb.simulate(x, v, r, m, frames=20)
    got = bb.render(pos, r[:, None], resolution=32)
    want = _dense_render(pos.reshape(-1, 6, 2), np.repeat(r, 20, axis=0), 32).reshape(got.shape)
    np.testing.assert_array_equal(got, want)
    # a low threshold reaches far into the tails: the patches must hold every term that can matter
    low = bb.render(pos[:5], r[:5, None], resolution=32, threshold=1e-3)
    want_low = _dense_render(pos[:5].reshape(-1, 6, 2), np.repeat(r[:5], 20, axis=0), 32, threshold=1e-3)
    np.testing.assert_array_equal(low, want_low.reshape(low.shape))
    # two balls closer than their drawn radii: the pixels between them come from the sum of both terms
    pos2 = np.array([[[4.0, 5.0], [5.9, 5.0]]])
    np.testing.assert_array_equal(bb.render(pos2, np.ones(2), 64), _dense_render(pos2, np.ones((1, 2)), 64))


@pytest.mark.parametrize("res", [32, 64])
def test_renderer_puts_each_balls_pixels_at_its_centre(res):
    rng = np.random.default_rng(res)
    pos = rng.uniform(2.0, 8.0, size=(50, 1, 2))
    r = rng.uniform(0.8, 1.2, size=(50, 1))
    frames = bb.render(pos, r, res)
    px = res / bb.BOX
    for f, p, rad in zip(frames, pos[:, 0], r[:, 0]):
        rows, cols = np.nonzero(f)
        centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5]) / px      # box units
        assert np.abs(centroid - p).max() < 0.5 / px                          # within half a pixel
        col, row = (p * px).astype(int)
        assert f[row, col] == 1                                               # the centre's pixel is lit
        # a lone ball lights exactly the pixels within r (ln 2)^(1/8) of its centre
        c = bb.pixel_centres(res)
        d = np.sqrt((c[None, :] - p[0]) ** 2 + (c[:, None] - p[1]) ** 2)
        np.testing.assert_array_equal(f, (d < rad * np.log(2) ** 0.125).astype(np.uint8))


def test_curtain_hides_exactly_the_pixels_inside_it():
    want = np.zeros((10, 10), dtype=bool)                               # 10 px: centres 0.5, 1.5, ..., 9.5
    want[1:9, 3:7] = True                                               # rows y 1.5..8.5, cols x 3.5..6.5
    for rect in [(3.2, 1.0, 6.8, 9.0), (3.0, 0.6, 6.9, 8.6), (3.5, 1.5, 6.5, 8.5)]:   # centres on edges count
        np.testing.assert_array_equal(bb.curtain_mask(10, rect), want)
    open_ = bb.generate(30, 4, frames=20, resolution=32, seed=5)
    hidden = bb.generate(30, 4, frames=20, resolution=32, seed=5, curtain=bb.DEFAULT_CURTAIN)
    inside = bb.curtain_mask(32, bb.DEFAULT_CURTAIN)
    assert inside.any() and (~inside).any()
    assert (hidden.frames[..., inside] == 0).all()                      # hidden inside
    np.testing.assert_array_equal(hidden.frames[..., ~inside], open_.frames[..., ~inside])   # untouched outside
    assert open_.frames[..., inside].any()                              # there was something to hide
    np.testing.assert_array_equal(hidden.positions, open_.positions)    # the physics is the same


# ------------------------------------------------------------------------------------------------------
# data sets
# ------------------------------------------------------------------------------------------------------


def test_same_seed_same_data_other_seed_other_data():
    a = bb.generate(20, (6, 8), frames=10, resolution=16, seed=7)
    b = bb.generate(20, (6, 8), frames=10, resolution=16, seed=7)
    c = bb.generate(20, (6, 8), frames=10, resolution=16, seed=8)
    for name in ("frames", "positions", "velocities", "radii", "masses", "num_balls"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.frames, c.frames)


def test_ball_count_range_and_padding():
    data = bb.generate(60, (6, 8), frames=5, resolution=16, seed=0)
    assert set(data.num_balls.tolist()) == {6, 7, 8}
    assert data.positions.shape == (60, 5, 8, 2) and data.radii.shape == (60, 8)
    for k, n in enumerate(data.num_balls):
        assert not np.isnan(data.positions[k, :, :n]).any() and np.isnan(data.positions[k, :, n:]).all()
        assert np.isnan(data.radii[k, n:]).all()


def test_npz_round_trip_and_torch_dataset(tmp_path):
    data = bb.generate(12, 3, frames=8, resolution=16, seed=3, curtain=bb.DEFAULT_CURTAIN)
    path = data.save(tmp_path / "balls3")
    assert path.suffix == ".npz" and not list(tmp_path.glob("*.tmp*"))
    back = bb.BouncingBalls.load(path)
    for name in ("frames", "positions", "velocities", "radii", "masses", "num_balls"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    assert back.frames.dtype == np.uint8 and back.curtain == bb.DEFAULT_CURTAIN and back.resolution == 16
    ds = bb.BouncingBallsDataset(path)
    assert len(ds) == 12
    item = ds[4]
    assert item.shape == (8, 1, 16, 16) and item.dtype == torch.float32
    torch.testing.assert_close(item[:, 0], torch.from_numpy(data.frames[4]).float())
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    assert next(iter(loader)).shape == (5, 8, 1, 16, 16)
    state = bb.BouncingBallsDataset(data, with_state=True)[0]
    assert state["num_balls"] == 3 and state["positions"].shape == (8, 3, 2)


def test_bad_generator_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="curtain"):
        bb.generate(2, 3, curtain=(5, 0, 4, 10))
    with pytest.raises(ValueError, match="radius"):
        bb.generate(2, 3, radii=6.0)
    with pytest.raises(ValueError, match="could not place"):
        bb.generate(2, 5, radii=3.0)
    with pytest.raises(FileNotFoundError, match="generate-only"):
        bb.BouncingBalls.load(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------------------------------
# models and rollout
# ------------------------------------------------------------------------------------------------------

import json  # noqa: E402
import math  # noqa: E402

import timm  # noqa: E402

import zoo  # noqa: E402
from tasks import bouncing_balls as task  # noqa: E402

BALLS_MODELS = ["rim_lstm_balls", "rim_gru_balls", "lstm_balls", "gru_balls", "rim_lstm_balls_small",
                "rim_gru_balls_small", "lstm_balls_small", "gru_balls_small"]


def _tiny(name: str = "rim_lstm_balls_small", **kw):
    torch.manual_seed(0)
    return zoo.create_model(name, img_size=16, **kw)


def test_models_are_registered_with_timm_and_predict_frames():
    assert sorted(zoo.list_models("*balls*")) == sorted(BALLS_MODELS)
    for name in BALLS_MODELS:
        m = timm.create_model(name, img_size=16)
        assert m(torch.rand(2, 3, 1, 16, 16)).shape == (2, 3, 1, 16, 16)
    assert zoo.create_model("rim_lstm_balls").img_size == (64, 64)          # the standard data
    assert zoo.create_model("lstm_balls_small").img_size == (32, 32)        # the CPU default
    with pytest.raises(ValueError, match="frames of shape"):
        zoo.create_model("lstm_balls_small")(torch.rand(1, 2, 1, 64, 64))
    with pytest.raises(ValueError, match="multiple of 8"):
        zoo.create_model("lstm_balls_small", img_size=20)


def test_cores_have_comparable_size():
    core = {n: sum(p.numel() for p in zoo.create_model(n).core.parameters()) for n in BALLS_MODELS}
    assert isinstance(zoo.create_model("rim_lstm_balls").core, zoo.RIM)
    assert zoo.create_model("rim_gru_balls").core.cell == "gru"
    for rim, base in [("rim_lstm_balls_small", "lstm_balls_small"), ("rim_gru_balls_small", "gru_balls_small")]:
        assert 0.9 < core[base] / core[rim] < 1.1
    assert 0.6 < core["lstm_balls"] / core["rim_lstm_balls"] < 1.1          # LSTM 256 (thesis) vs RIM 6x100


def test_teacher_forced_prediction_is_causal():
    m = _tiny().eval()
    x = (torch.rand(2, 8, 1, 16, 16) > 0.7).float()
    y = x.clone()
    y[:, 5:] = 1 - y[:, 5:]
    with torch.no_grad():
        a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :5], b[:, :5])                         # steps 0..4 see frames 0..4 only
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("name", ["rim_lstm_balls_small", "lstm_balls_small", "gru_balls_small"])
def test_rollout_feeds_back_the_models_own_probabilities(name):
    m = _tiny(name).eval()
    x = (torch.rand(3, 12, 1, 16, 16) > 0.7).float()
    seen = []
    hook = m.encoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    with torch.no_grad():
        logits = m.rollout(x, context=4, steps=6)
    hook.remove()
    assert logits.shape == (3, 10, 1, 16, 16)
    torch.testing.assert_close(seen[0].view(3, 4, 1, 16, 16), x[:, :4])    # the true context, at once
    for s in range(6):                                                      # then one fed-back frame per step
        torch.testing.assert_close(seen[1 + s].view(3, 1, 1, 16, 16), torch.sigmoid(logits[:, 3 + s:4 + s]))
    with torch.no_grad():
        other = x.clone()
        other[:, 4:] = torch.rand_like(other[:, 4:])                       # the future is never read
        torch.testing.assert_close(m.rollout(other, 4, 6), logits)
        torch.testing.assert_close(m(x[:, :4]), logits[:, :4])             # context part = teacher forcing


def test_rim_rollout_reports_unit_activity():
    m = _tiny("rim_lstm_balls_small").eval()
    with torch.no_grad():
        logits, mask = m.rollout(torch.rand(2, 6, 1, 16, 16), 3, 4, return_info=True)
    assert mask.shape == (7, 2, 6) and (mask.sum(-1) == 4).all()            # k_A = 4 of 6 units each step
    assert _tiny("lstm_balls_small").rollout(torch.rand(1, 4, 1, 16, 16), 2, 1, return_info=True)[1] is None


class _Constant(torch.nn.Module):
    """Predicts p = 0.5 everywhere: every frame costs H * W * ln 2 nats."""

    def forward(self, x):
        return torch.zeros_like(x)

    def rollout(self, x, context, steps):
        return torch.zeros(x.shape[0], context + steps, *x.shape[2:])


def test_rollout_metric_is_nats_per_frame_split_at_the_context():
    frames = torch.from_numpy(bb.generate(6, 2, frames=11, resolution=8, seed=0).frames)
    r = task.evaluate_rollout(_Constant(), frames, context=4, batch_size=4)
    assert len(r["per_frame"]) == 10
    np.testing.assert_allclose(r["per_frame"], 64 * math.log(2), rtol=1e-6)
    np.testing.assert_allclose([r["rollout_bce"], r["teacher_forced_bce"]], 64 * math.log(2), rtol=1e-6)
    logits = torch.randn(2, 3, 1, 4, 4)
    target = (torch.rand(2, 3, 1, 4, 4) > 0.5).float()
    want = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), target, reduction="none").sum((2, 3, 4))
    torch.testing.assert_close(task.frame_bce(logits, target), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_short_training_lowers_the_teacher_forced_bce_clearly():
    data = bb.generate(96, 3, frames=10, resolution=16, radii=(1.2, 1.5), seed=0)
    frames = task.to_frames(torch.from_numpy(data.frames))
    train, test = frames[:80], frames[80:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = _tiny("lstm_balls_small")
        opt = torch.optim.Adam(m.parameters(), lr=3e-3)
        with torch.no_grad():
            before = float(task.teacher_forced_loss(m, test))
        g = torch.Generator().manual_seed(0)
        for _ in range(100):
            loss = task.teacher_forced_loss(m, train[torch.randint(0, 80, (8,), generator=g)])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
        with torch.no_grad():
            after = float(task.teacher_forced_loss(m, test))
    finally:
        torch.set_num_threads(threads)
    p = float(test.mean())
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))     # the best constant prediction's BCE
    assert after < 0.4 * before and after < 0.75 * entropy        # it reads the frames, not just the mean


# ------------------------------------------------------------------------------------------------------
# harness
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, needle", [
    (["--resolution", "30"], "--resolution"),
    (["--test-sets", "4", "8-6"], "--test-sets"),
    (["--test-sets", "4", "4"], "--test-sets"),
    (["--curtain-rect", "5", "0", "4", "10"], "--curtain-rect"),
    (["--models", "lstm_seq_small"], "--models"),
    (["--context", "50"], "--context"),
    (["--curtain"], "--curtain"),
    (["--sequences", "10"], "--sequences"),
    (["--model-kwargs", "{bad"], "--model-kwargs"),
    (["--radii", "6"], "--radii"),
    (["--balls", "8", "6"], "--balls"),
    (["--steps", "0"], "--steps"),
    (["--lr", "nan"], "--lr"),
])
def test_bad_options_exit_2_with_one_line(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        task.main([*argv, "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "o").exists()                                    # nothing written


def test_generate_only_writes_a_loadable_data_set(tmp_path, capsys):
    res = task.main(["--generate-only", "--balls", "6", "8", "--sequences", "6", "--resolution", "16",
                     "--frames", "5", "--curtain", "--out", str(tmp_path / "data")])
    path = tmp_path / "data" / "balls6-8_curtain_16px_5f_seed0.npz"
    assert res["path"] == str(path) and "wrote" in capsys.readouterr().out
    data = bb.BouncingBalls.load(path)
    assert data.frames.shape == (6, 5, 16, 16) and set(data.num_balls) <= {6, 7, 8}
    assert data.curtain == bb.DEFAULT_CURTAIN
    assert (data.frames[..., bb.curtain_mask(16, bb.DEFAULT_CURTAIN)] == 0).all()


@pytest.mark.slow
def test_end_to_end_run_writes_results_and_figures(tmp_path):
    out = tmp_path / "run"
    results = task.main(["--steps", "6", "--train-sequences", "16", "--test-sequences", "4", "--frames", "9",
                         "--context", "3", "--resolution", "16", "--batch-size", "4", "--eval-every", "3",
                         "--workers", "1", "--seeds", "1", "--no-progress", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    for name in ("rim_lstm_balls_small", "lstm_balls_small"):
        assert set(saved[name]) == {"4", "6-8", "curtain"}
        for t in ("4", "6-8", "curtain"):
            r = saved[name][t]
            assert {"rollout_bce", "rollout_bce_std", "per_frame"} <= set(r) and len(r["per_frame"]) == 8
            assert math.isclose(r["rollout_bce"], float(np.mean(r["per_frame"][3:])), rel_tol=1e-9)
            assert results[name][t]["rollout_bce"] == r["rollout_bce"]
    for f in ("curves.png", "filmstrip.png", "rollout.gif", "activity.png", "results.md"):
        assert (out / f).stat().st_size > 0
    assert (out / "rim_lstm_balls_small" / "seed0" / "checkpoint.pt").exists()
    from PIL import Image
    assert Image.open(out / "rollout.gif").n_frames == 8
