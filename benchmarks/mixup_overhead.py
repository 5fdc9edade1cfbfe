"""Step-time overhead of Input / Manifold Mixup (through layer taps) against plain training (ERM).

    python benchmarks/mixup_overhead.py                                   # resnet18, CIFAR-sized batch
    python benchmarks/mixup_overhead.py --model convnext_atto --repeats 15
    python benchmarks/mixup_overhead.py --model test_resnet --chans 1 --size 28   # the digits setting

One full training step each (forward, loss, backward, optimizer step) on the same model and batch, the
methods and thread counts (``--threads``, default 1 2) interleaved round by round in this process; prints
the median step time of each and the ratio to ERM at the same thread count (goal: manifold mixup at most
1.05x). Each method is a fresh copy of the same initial weights.
"""
from __future__ import annotations

import copy

from timing import at_threads, image_batch, image_parser, interleave, medians, method_step, prepare, thread_key

import zoo
from zoo.engine import markdown_table
from zoo.methods import create_method


def main() -> None:
    p = image_parser(__doc__, repeats=15, thread_list=True)
    p.add_argument("--methods", nargs="+", default=["erm", "input_mixup", "manifold_mixup"])
    a = p.parse_args()
    device = prepare(a)
    base = zoo.create_model(a.model, in_chans=a.chans, num_classes=a.classes).to(device)
    batch = image_batch(a, device)
    methods, steps = {}, {}
    for name in a.methods:
        model = copy.deepcopy(base).train()
        methods[name] = create_method(name)
        methods[name].setup(model)
        steps[name] = method_step(model, methods[name], batch)
    med = medians(interleave(at_threads(steps, a.threads), a.repeats, device, warmup=3))
    rows = []
    for n in a.threads:
        ref = med.get(thread_key(n, "erm"))
        rows += [[name, str(n), f"{1000 * med[thread_key(n, name)]:.1f}",
                  f"{med[thread_key(n, name)] / ref:.3f}x" if ref else "-",
                  ", ".join(getattr(method, "layers", [])) or "-"] for name, method in methods.items()]
    print(f"{a.model}, batch {a.batch}x{a.chans}x{a.size}x{a.size}, {device}, median of {a.repeats} interleaved steps")
    print(markdown_table(["method", "threads", "step ms", "vs erm", "mixed layers"], rows))


if __name__ == "__main__":
    main()
