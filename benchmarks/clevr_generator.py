"""Sort-of-CLEVR generation speed: 10,000 images with their 20 questions each (goal: <= 10 s on one core).

    python benchmarks/clevr_generator.py                      # 10,000 images, 3 repeats, 1 thread
    python benchmarks/clevr_generator.py --images 10000 --repeats 5 --loop-images 500

Times :func:`zoo.data.sort_of_clevr.generate` (vectorized over images) against a per-image Python loop
written like the reference generator (``kimhc6028/relational-networks``: one image at a time, rejection
sampling per object, per-question answers; pixels drawn with the same templates instead of OpenCV),
interleaved in one process; the loop runs on ``--loop-images`` images and is scaled to ``--images``.
Also times writing and reading the ``.npz`` cache.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

from zoo.data.sort_of_clevr import COLOR_RGB, _templates, generate, load_or_generate  # noqa: E402


def loop_generate(num_images: int, seed: int, questions: int = 10, img_size: int = 75, size: int = 5) -> list:
    """The reference's per-image loop (the baseline): a list of (image, questions, answers)."""
    rng = np.random.default_rng(seed)
    tpl = _templates(size)
    out = []
    for _ in range(num_images):
        img = np.full((img_size, img_size, 3), 255, np.uint8)
        objects = []
        for j in range(6):
            while True:
                c = rng.integers(size, img_size - size, 2)
                if all(((c - o) ** 2).sum() >= (2 * size) ** 2 for o, _ in objects):
                    break
            shape = int(rng.integers(0, 2))
            m = tpl[shape]
            patch = img[c[1] - size:c[1] + size + 1, c[0] - size:c[0] + size + 1]
            patch[m] = COLOR_RGB[j]
            objects.append((c, shape))
        qs, ans = [], []
        for rel in (0, 1):
            for _ in range(questions):
                col, sub = int(rng.integers(0, 6)), int(rng.integers(0, 3))
                c, s = objects[col]
                if not rel:
                    a = (2 + s) if sub == 0 else (0 if c[sub - 1] < img_size / 2 else 1)
                elif sub == 2:
                    a = 3 + sum(o[1] == s for o in objects)
                else:
                    d = [((o[0] - c) ** 2).sum() if k != col else (1e9 if sub == 0 else -1)
                         for k, o in enumerate(objects)]
                    a = 2 + objects[int(np.argmin(d) if sub == 0 else np.argmax(d))][1]
                qs.append((col, rel, sub))
                ans.append(a)
        out.append((img, qs, ans))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--loop-images", type=int, default=500, help="images for the per-image loop baseline")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    vec, loop = [], []
    for r in range(a.repeats + 1):                                   # round 0 warms up
        t0 = time.perf_counter()
        generate(a.images, seed=r)
        t1 = time.perf_counter()
        loop_generate(a.loop_images, seed=r)
        t2 = time.perf_counter()
        if r:
            vec.append(t1 - t0)
            loop.append((t2 - t1) * a.images / a.loop_images)
    v, lo = statistics.median(vec), statistics.median(loop)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        load_or_generate(d, num_train=a.images - 200, num_test=200)
        t1 = time.perf_counter()
        load_or_generate(d, num_train=a.images - 200, num_test=200)
        t2 = time.perf_counter()
        size = sum(f.stat().st_size for f in Path(d).glob("*.npz")) / 1e6
    print(f"Sort-of-CLEVR, {a.images} images x 20 questions (median of {a.repeats}):")
    print(f"  vectorized generate        {v:7.2f} s   ({a.images / v:,.0f} images/s)  goal <= 10 s: "
          f"{'met' if v <= 10 else 'MISSED'}")
    print(f"  per-image loop (reference) {lo:7.2f} s   (scaled from {a.loop_images} images)")
    print(f"  speed-up                   {lo / v:7.1f} x")
    print(f"  generate + write cache     {t1 - t0:7.2f} s; read cache {t2 - t1:.2f} s; cache file {size:.1f} MB")


if __name__ == "__main__":
    main()
