"""Step-time overhead of data augmentation invariance (DAI) and IRL against their plain-training baselines.

    python benchmarks/invariance_overhead.py                                  # resnet18, CIFAR-sized batch
    python benchmarks/invariance_overhead.py --model test_resnet --chans 1 --size 28   # the digits setting

One full training step each (augmentation / noise, forward, loss, backward, optimizer step) on the same
batch, all variants and thread counts (``--threads``, default 1 2) interleaved round by round in this
process, each a fresh copy of the same initial weights; prints the median step time and the ratio to its
baseline at the same thread count:

* ``dai`` (M = 2, alpha = 0.1) vs ``dai`` with ``alpha = 0``: in-batch augmentation of the same ``M * B``
  images without the invariance loss (goal <= 1.10x, the paper's "about 10 %");
* ``irl`` (K = 1, (0.5, 0.5, 1), in-domain noise) and ``irl_batching`` (0.5, 0.5, 0) vs ``erm`` on the ``B``
  originals (goal for IRL <= 2.1x: it trains on twice the batch).
"""
from __future__ import annotations

import copy

from timing import at_threads, image_batch, image_parser, interleave, medians, method_step, prepare, thread_key

import zoo
from zoo.engine import markdown_table
from zoo.methods import create_method

# label: (method, hyperparameters, baseline label, goal)
VARIANTS = {
    "in-batch aug (dai, alpha=0)": ("dai", {"alpha": 0.0, "M": 2}, None, None),
    "dai (M=2, alpha=0.1)": ("dai", {"alpha": 0.1, "M": 2}, "in-batch aug (dai, alpha=0)", 1.10),
    "erm": ("erm", {}, None, None),
    "irl_batching (K=1)": ("irl", {"preset": "irl_batching", "K": 1}, "erm", None),
    "irl (K=1)": ("irl", {"preset": "irl", "K": 1}, "erm", 2.1),
}


def main() -> None:
    a = image_parser(__doc__, repeats=15, thread_list=True).parse_args()
    device = prepare(a)
    base = zoo.create_model(a.model, in_chans=a.chans, num_classes=a.classes).to(device)
    batch = image_batch(a, device)
    steps = {}
    for label, (name, kw, _, _) in VARIANTS.items():
        model = copy.deepcopy(base).train()
        method = create_method(name, **kw)
        method.setup(model)
        steps[label] = method_step(model, method, batch)
    med = medians(interleave(at_threads(steps, a.threads), a.repeats, device, warmup=3))
    rows = []
    for n in a.threads:
        for label, (_, _, ref, goal) in VARIANTS.items():
            t = med[thread_key(n, label)]
            ratio = f"{t / med[thread_key(n, ref)]:.3f}x" if ref else "-"
            rows.append([label, str(n), f"{1000 * t:.1f}", ref or "-", ratio, f"<= {goal:.2f}x" if goal else "-"])
    print(f"{a.model}, batch {a.batch}x{a.chans}x{a.size}x{a.size}, {device}, median of {a.repeats} interleaved steps")
    print(markdown_table(["variant", "threads", "step ms", "baseline", "ratio", "goal"], rows))


if __name__ == "__main__":
    main()
