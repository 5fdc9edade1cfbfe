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
    rect = (3.2, 1.0, 6.8, 9.0)
    mask = bb.curtain_mask(10, rect)                                    # 10 px: centres 0.5, 1.5, ..., 9.5
    want = np.zeros((10, 10), dtype=bool)
    want[1:9, 3:7] = True                                               # rows y 1.5..8.5, cols x 3.5..6.5
    np.testing.assert_array_equal(mask, want)
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
