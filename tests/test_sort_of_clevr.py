"""Sort-of-CLEVR (thesis 10.4.3): the generator against an independent recomputation, the held-out split,
the cache, the Relation Network, and the harness's options and a short learning run."""
import itertools
import json
import math
import re

import numpy as np
import pytest
import torch

import zoo
from zoo.data import sort_of_clevr as soc
from zoo.data.sort_of_clevr import (COLORS, COLOR_RGB, QUESTION_DIM, SortOfClevrDataset, generate,
                                    holdout_combinations, load_or_generate, question_involves_holdout,
                                    question_vectors)


@pytest.fixture(scope="module")
def data():
    return generate(300, seed=3)


# -- an independent, loop-by-loop recomputation from the object table -------------------------------------
def reference_answer(centers, shapes, color, rel, sub, img_size=75):
    """Answer one question with plain Python, straight from the definitions (no shared code)."""
    cx, cy = (float(v) for v in centers[color])
    if not rel:
        if sub == 0:
            return 2 if shapes[color] == 0 else 3
        coord = cx if sub == 1 else cy
        return 0 if coord < img_size / 2 else 1
    if sub == 2:
        return 3 + sum(1 for s in shapes if s == shapes[color])
    dists = {j: math.hypot(centers[j][0] - cx, centers[j][1] - cy) for j in range(6) if j != color}
    best = (min if sub == 0 else max)(dists.values())
    winners = [j for j, d in dists.items() if d == best]
    assert len(winners) == 1, "ambiguous question: closest/furthest tie"
    return 2 if shapes[winners[0]] == 0 else 3


def test_answers_match_an_independent_recomputation_for_every_question_type(data):
    seen_types, seen_answers = set(), set()
    for n in range(len(data)):
        c, s = data.centers[n].tolist(), data.shapes[n].tolist()
        for q in range(data.num_questions):
            col, rel, sub = int(data.q_color[n, q]), int(data.q_rel[n, q]), int(data.q_sub[n, q])
            assert data.answers[n, q] == reference_answer(c, s, col, rel, sub), (n, q)
            seen_types.add((rel, sub))
            seen_answers.add(int(data.answers[n, q]))
    assert seen_types == {(r, t) for r in (0, 1) for t in range(3)}
    assert seen_answers == set(range(10))              # yes, no, square, circle, counts 1..6


def test_every_image_has_ten_of_each_kind_and_every_colour_is_asked(data):
    assert data.q_rel.shape == (300, 20)
    assert (data.q_rel[:, :10] == 0).all() and (data.q_rel[:, 10:] == 1).all()
    for rel in (0, 1):
        colours = np.bincount(data.q_color[data.q_rel == rel], minlength=6)
        assert (colours > 0.12 * colours.sum()).all(), colours          # uniform: 1/6 each
        subtypes = np.bincount(data.q_sub[data.q_rel == rel], minlength=3)
        assert (subtypes > 0.28 * subtypes.sum()).all(), subtypes


def test_shapes_are_squares_and_circles_alike(data):
    # the NFM repo's generator reseeded inside its loop: every object came out a circle
    assert 0.4 < data.shapes.mean() < 0.6
    assert len({tuple(r) for r in data.shapes.tolist()}) > 30


def test_centres_are_in_range_and_at_least_min_dist_apart(data):
    c = data.centers.astype(np.int64)
    assert c.min() >= 5 and c.max() <= 69
    d2 = ((c[:, :, None] - c[:, None]) ** 2).sum(-1)
    off = ~np.eye(6, dtype=bool)
    assert d2[:, off].min() >= 100
    assert d2[:, off].min() == 100 or d2[:, off].min() < 130   # the constraint is active, not over-strict
    tight = generate(200, seed=0, min_dist=20)
    t = tight.centers.astype(np.int64)
    assert ((t[:, :, None] - t[:, None]) ** 2).sum(-1)[:, off].min() >= 400


def test_each_colour_is_drawn_once_where_the_table_says(data):
    """Render the object table independently (pixel by pixel, in colour order) and compare with the image."""
    for n in range(40):
        img = np.full((75, 75, 3), 255, np.uint8)
        for j in range(6):
            x, y = data.centers[n, j]
            for r, cc in itertools.product(range(y - 5, y + 6), range(x - 5, x + 6)):
                inside = data.shapes[n, j] == 0 or (r - y) ** 2 + (cc - x) ** 2 <= 5.5 ** 2
                if inside:
                    img[r, cc] = COLOR_RGB[j]
        assert np.array_equal(img, data.images[n]), n
        colours = {tuple(p) for p in data.images[n].reshape(-1, 3).tolist()}
        assert colours == {(255, 255, 255)} | {tuple(c) for c in COLOR_RGB.tolist()}   # all 6 present, nothing else
        for j in range(6):                                               # each colour is one object near its centre
            ys, xs = np.nonzero((data.images[n] == COLOR_RGB[j]).all(-1))
            assert abs(ys.mean() - data.centers[n, j, 1]) < 1.5 and abs(xs.mean() - data.centers[n, j, 0]) < 1.5
            assert ys.max() - ys.min() <= 10 and xs.max() - xs.min() <= 10


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = generate(50, seed=1), generate(50, seed=1), generate(50, seed=2)
    for f in ("images", "centers", "shapes", "q_color", "q_sub", "answers"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.centers, c.centers)
    # a prefix is not a different data set: sizes do not change the first images
    assert not np.array_equal(generate(51, seed=1).centers[:50], c.centers[:50])


def test_held_out_combinations_never_appear_in_training_images():
    for n in (1, 3, 4, 6):
        held = holdout_combinations(n, seed=0)
        assert len(held) == n and len({c for c, _ in held}) == n
        split = load_or_generate(None, num_train=400, num_test=300, holdout=held, seed=5)
        tr, te = split["train"], split["test"]
        for c, s in held:
            assert not (tr.shapes[:, c] == s).any()
            # and in the pixels: a square has colour c at its corner, a circle never does
            corner = tr.images[np.arange(len(tr)), tr.centers[:, c, 1] - 5, tr.centers[:, c, 0] - 5]
            is_colour = (corner == COLOR_RGB[c]).all(-1)
            if s == 0:                                                    # squares held out: all circles
                assert not is_colour.any()
            else:                                                         # circles held out: all squares
                assert is_colour.mean() > 0.95
            assert (te.shapes[:, c] == s).mean() > 0.35                  # test: the full distribution
    assert holdout_combinations(4, 0) == holdout_combinations(4, 0) != holdout_combinations(4, 1)
    with pytest.raises(ValueError, match="one shape per colour"):
        holdout_combinations(7)
    with pytest.raises(ValueError, match="both shapes"):
        generate(5, 0, holdout=[(0, 0), (0, 1)])


def test_question_involves_holdout_matches_the_definition():
    held = [(0, 1), (3, 0)]
    d = generate(120, seed=9)
    mask = question_involves_holdout(d, held)
    is_held = lambda n, j: (j, int(d.shapes[n, j])) in held  # noqa: E731
    for n in range(len(d)):
        c = d.centers[n].astype(float)
        for q in range(d.num_questions):
            x, rel, sub = int(d.q_color[n, q]), int(d.q_rel[n, q]), int(d.q_sub[n, q])
            if not rel:
                want = is_held(n, x)
            elif sub == 2:
                want = any(is_held(n, j) for j in range(6))
            else:
                dist = [np.hypot(*(c[j] - c[x])) if j != x else (np.inf if sub == 0 else -np.inf) for j in range(6)]
                other = int(np.argmin(dist) if sub == 0 else np.argmax(dist))
                want = is_held(n, x) or is_held(n, other)
            assert mask[n, q] == want
    assert 0.1 < mask[d.q_rel == 0].mean() < 0.25                     # 2 of 6 colours, half their shapes: 1/6


def test_cache_round_trip_and_a_corrupt_cache_is_regenerated(tmp_path):
    a = load_or_generate(tmp_path, num_train=30, num_test=10, seed=4)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b = load_or_generate(tmp_path, num_train=30, num_test=10, seed=4)
    for s in ("train", "test"):
        assert np.array_equal(a[s].images, b[s].images) and np.array_equal(a[s].answers, b[s].answers)
    assert not np.array_equal(a["train"].centers[:10], a["test"].centers)     # disjoint streams
    files[0].write_bytes(b"not a zip")
    c = load_or_generate(tmp_path, num_train=30, num_test=10, seed=4)
    assert np.array_equal(a["train"].images, c["train"].images)
    load_or_generate(tmp_path, num_train=30, num_test=10, seed=5)
    assert len(list(tmp_path.glob("*.npz"))) == 2                       # other parameters, other file


def test_dataset_items_and_question_vectors(data):
    ds = SortOfClevrDataset(data)
    assert len(ds) == 300 * 20
    img, q, a = ds[0]
    assert img.shape == (3, 75, 75) and img.dtype == torch.float32 and 0 <= img.min() and img.max() == 1
    assert q.shape == (QUESTION_DIM,) and q.sum() == 3
    assert int(q[:6].argmax()) == data.q_color[0, 0] and q[6] == 1 and int(q[8:].argmax()) == data.q_sub[0, 0]
    assert int(a) == data.answers[0, 0]
    rel = SortOfClevrDataset(data, "rel")
    assert len(rel) == 3000 and (rel.questions[rel.img_idx, rel.q_idx][:, 7] == 1).all()
    x, qq, aa = rel.batch(torch.arange(5))
    assert x.shape == (5, 3, 75, 75) and qq.shape == (5, 11) and aa.shape == (5,)
    v = question_vectors([2], [1], [2])
    assert v.tolist() == [[0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1]]
    with pytest.raises(ValueError, match="kind"):
        SortOfClevrDataset(data, "both")
    assert soc.describe_question(0, 1, 0) == "shape of the object closest to red?"
    assert COLORS[5] == "yellow"


# -- the models ------------------------------------------------------------------------------------------
def test_relation_network_equals_the_pairwise_concatenation_and_has_the_timm_api():
    torch.manual_seed(0)
    m = zoo.create_model("sortclevr_rn", g_hidden=32, f_hidden=24, drop_rate=0.5).eval()
    x, q = torch.rand(3, 3, 75, 75), question_vectors([0, 4, 5], [1, 0, 1], [0, 2, 2])
    feats = m.forward_features(x)
    assert feats.shape == (3, 24, 5, 5)
    # brute force (Santoro et al. eq. 1): g on every concatenated pair [o_i; o_j; q], summed, then f
    o = feats.flatten(2).transpose(1, 2)
    coords = torch.tensor([[(r - 2) / 2, (c - 2) / 2] for r in range(5) for c in range(5)])
    o = torch.cat([o, coords.expand(3, -1, -1)], -1)
    total = 0
    for i in range(25):
        for j in range(25):
            total = total + m.g(torch.relu(m.g_in(torch.cat([o[:, i], o[:, j], q], -1))))
    want = m.fc(m.f(total))
    assert torch.allclose(m(x, q), want, atol=1e-4, rtol=1e-4)
    assert m.forward_head(feats, q, pre_logits=True).shape == (3, 24)
    m.reset_classifier(4)
    assert m(x, q).shape == (3, 4)
    assert torch.equal(m(x, q), m(x, q))                              # dropout off at test time
    m.train()
    assert not torch.equal(m(x, q), m(x, q))                          # and on in training
    assert "sortclevr_rn" in zoo.list_models("sortclevr*")


@pytest.mark.parametrize("name", ["sortclevr_cnn", "nfm_sortclevr_cnn"])
def test_test_time_dropout_is_off(name):
    # the reference's CNN+MLP called F.dropout in eval too: predictions changed from call to call
    m = zoo.create_model(name, drop_rate=0.5, d_k=4, d_v=4) if name.startswith("nfm") else \
        zoo.create_model(name, drop_rate=0.5)
    x, q = torch.rand(4, 3, 75, 75), question_vectors([0, 1, 2, 3], [0, 1, 0, 1], [0, 1, 2, 0])
    m.eval()
    assert torch.equal(m(x, q), m(x, q))
    m.train()
    assert not torch.equal(m(x, q), m(x, q))


# -- the harness -----------------------------------------------------------------------------------------
from tasks import sort_of_clevr as harness  # noqa: E402


@pytest.mark.parametrize("argv, message", [
    (["--holdout", "7"], "--holdout 7 is out of range"),
    (["--steps", "0"], "--steps 0 is out of range"),
    (["--models", "resnet18"], "takes no question"),
    (["--models", "nope_net"], "not a registered model"),
    (["--model-kwargs", "{oops"], "not valid JSON"),
    (["--model-kwargs", '{"sortclevr_nn": {}}'], "not a registered model (did you mean"),
    (["--model-kwargs", '{"sortclevr_cnn": {"bogus": 1}}'], "cannot be built"),
    (["--model-kwargs", '{"sortclevr_cnn": {"d_k": 8}}'], "cannot be built"),
    (["--models", "sortclevr_cnn", "sortclevr_cnn"], "twice"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        harness.parse_config(harness.Config, argv + ["--out", str(tmp_path / "o")], prog="python -m tasks.sort_of_clevr")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_report_groups_split_every_subtype_into_held_out_and_seen():
    d = generate(400, seed=4)
    held = holdout_combinations(3, 0)
    groups = harness.question_groups(d, held)
    involved = question_involves_holdout(d, held)
    for k in ["rel", "nonrel"] + harness.SUBTYPES:
        assert np.array_equal(groups[f"{k}_heldout"], groups[k] & involved), k
        assert np.array_equal(groups[f"{k}_seen"], groups[k] & ~involved), k
    for kind in ("rel", "nonrel"):                    # the subtypes' held-out questions make up the group's
        subs = [k for k in harness.SUBTYPES if k.startswith(kind + "_")]
        assert np.array_equal(np.logical_or.reduce([groups[f"{k}_heldout"] for k in subs]), groups[f"{kind}_heldout"])
    # why the split matters: count depends on every object, closest / furthest on two
    share = {k: groups[f"{k}_heldout"].sum() / groups[k].sum() for k in ("rel_count", "rel_closest", "rel_furthest")}
    assert share["rel_count"] > 0.8 and 0.35 < share["rel_closest"] < 0.55 and 0.35 < share["rel_furthest"] < 0.55
    assert "rel_count_heldout" not in harness.question_groups(d, [])


def test_seed_summary():
    s = harness.seed_summary([{"rel": 0.5}, {"rel": 0.7}])
    assert s["rel"] == pytest.approx(0.6) and s["rel_std"] == pytest.approx(0.1414, abs=1e-4)
    assert s["rel_per_seed"] == [0.5, 0.7]


def test_generate_only_writes_the_data_set(tmp_path):
    out = tmp_path / "data"
    harness.main(["--generate-only", "--out", str(out), "--train-images", "40", "--test-images", "10",
                  "--holdout", "2"])
    (npz,) = out.glob("*.npz")
    with np.load(npz) as z:
        assert z["train_images"].shape == (40, 75, 75, 3) and z["test_answers"].shape == (10, 20)
    assert (out / "preview.png").stat().st_size > 0


@pytest.mark.slow
def test_short_run_learns_above_the_majority_answer_and_writes_every_output(tmp_path, monkeypatch):
    # The CNN+MLP baseline (default architecture, dropout 0.5) learns the answer prior of each question
    # subtype first and then plateaus there (constant lr 1e-3: training loss 0.80 nats = the prior's entropy
    # from step ~350 to ~1,250); it never reached majority + 0.1 on non-relational questions in 300 steps
    # (0.54-0.56 vs 0.52, also at the commit that added this test, and before the merge). Measured (2,000
    # training images, cosine lr, 1 thread, under load): 1,000 steps give non-relational 0.569 / 0.558 / 0.578
    # (seeds 0 / 1 / 2; 1,500 steps: 0.595 / 0.575) vs the majority answer's 0.497, ~30-40 s per run; the
    # margin below is ~3.5 std of the accuracy on 2,000 test questions.
    data = str(tmp_path / "d")
    common = ["--holdout", "2", "--train-images", "2000", "--data-dir", data, "--seeds", "1", "--workers", "1",
              "--no-progress"]
    learn = harness.main(["--models", "sortclevr_cnn", "--steps", "1000", "--test-images", "200", "--samples", "0",
                          "--out", str(tmp_path / "learn"), *common])
    assert learn["sortclevr_cnn"]["nonrel"] > learn["majority_answer"]["nonrel"] + 0.04
    # outputs: both models, the NFM one (about 11x the baseline's step cost, its test pass too) for a few
    # steps and 50 test images only
    out = tmp_path / "run"
    harness.main(["--models", "sortclevr_cnn", "nfm_sortclevr_cnn", "--steps", "5", "--test-images", "50",
                  "--samples", "4", "--attention-images", "8", "--eval-every", "2", "--out", str(out), *common])
    saved = json.loads((out / "results.json").read_text())
    for name in ("sortclevr_cnn", "nfm_sortclevr_cnn"):
        keys = set(saved[name])
        for k in ("rel", "nonrel", "rel_heldout", "nonrel_heldout", "rel_seen", "nonrel_seen", "rel_count",
                  "rel_count_heldout", "nonrel_shape_seen"):
            assert {k, f"{k}_std", f"{k}_per_seed"} <= keys
        assert len(saved[name]["rel_per_seed"]) == 1
    assert (out / "samples.png").stat().st_size > 0 and (out / "attention_nfm_sortclevr_cnn.png").exists()
    assert (out / "curves.png").stat().st_size > 0                    # test accuracy at steps 2, 4 and 5
    report = (out / "results.md").read_text()
    assert "nonrel_shape" in report and re.search(r"\| rel_count +\| nfm_sortclevr_cnn +\|", report)     # per subtype, held-out / seen
    for name in ("sortclevr_cnn", "nfm_sortclevr_cnn"):           # the table's cells are the run's own numbers
        row = re.search(rf"\| rel_count +\| {name} +\| ([0-9.]+)(?: ± [0-9.]+)? +\| ([0-9.]+)(?: ± [0-9.]+)? +\|", report)
        assert row and [float(v) for v in row.groups()] == pytest.approx(
            [saved[name]["rel_count_heldout"], saved[name]["rel_count_seen"]], abs=5e-4)
    # --resume over finished runs reuses their weights and tests them again with this code: a group added
    # to the report since (here a made-up one) appears, and the existing groups keep their values
    groups = harness.question_groups
    monkeypatch.setattr(harness, "question_groups",
                        lambda data, held: {**groups(data, held), "made_up": data.q_rel >= 0})
    harness.main(["--models", "sortclevr_cnn", "nfm_sortclevr_cnn", "--steps", "5", "--test-images", "50",
                  "--samples", "4", "--attention-images", "8", "--eval-every", "2", "--out", str(out), *common,
                  "--resume"])
    again = json.loads((out / "results.json").read_text())
    for name in ("sortclevr_cnn", "nfm_sortclevr_cnn"):
        assert again[name]["made_up"] == pytest.approx(again[name]["rel"] / 2 + again[name]["nonrel"] / 2)
        assert again[name]["rel_per_seed"] == saved[name]["rel_per_seed"]
    assert not (tmp_path / "learn" / "curves.png").exists()           # evaluated at the end only: no curve
