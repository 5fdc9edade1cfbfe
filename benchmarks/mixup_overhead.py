"""Step-time overhead of Input / Manifold Mixup (through layer taps) against plain training (ERM).

    python benchmarks/mixup_overhead.py                                   # resnet18, CIFAR-sized batch
    python benchmarks/mixup_overhead.py --model convnext_atto --repeats 15
    python benchmarks/mixup_overhead.py --model test_resnet --chans 1 --size 28   # the digits setting

One full training step each (forward, loss, backward, optimizer step) on the same model and batch, the
methods interleaved in this process; prints the median step time of each and the ratio to ERM
(goal: manifold mixup at most 1.05x). Each method is a fresh copy of the same initial weights.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

import zoo
from zoo.engine import markdown_table, resolve_device
from zoo.methods import create_method


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18", help="registry name (zoo or timm)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--chans", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=15, help="timed steps per method (after 3 warm-up steps)")
    p.add_argument("--methods", nargs="+", default=["erm", "input_mixup", "manifold_mixup"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    torch.manual_seed(0)
    base = zoo.create_model(a.model, in_chans=a.chans, num_classes=a.classes).to(device)
    batch = {"x": torch.rand(a.batch, a.chans, a.size, a.size, device=device),
             "y": torch.randint(a.classes, (a.batch,), device=device)}
    runs = {}
    for name in a.methods:
        model = copy.deepcopy(base).train()
        method = create_method(name)
        method.setup(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        runs[name] = (model, method, opt, [])

    def step(model, method, opt, i):
        t0 = time.perf_counter()
        loss, _ = method.loss(model, batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for cb in method.callbacks():
            cb(i + 1, model)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for i in range(3 + a.repeats):                               # interleaved: same machine load for each
        for name, (model, method, opt, times) in runs.items():
            t = step(model, method, opt, i)
            if i >= 3:
                times.append(t)
    ref = statistics.median(runs["erm"][3]) if "erm" in runs else None
    rows = []
    for name, (_, method, _, times) in runs.items():
        med = statistics.median(times)
        rows.append([name, f"{1000 * med:.1f}", f"{med / ref:.3f}x" if ref else "-",
                     ", ".join(getattr(method, "layers", [])) or "-"])
    print(f"{a.model}, batch {a.batch}x{a.chans}x{a.size}x{a.size}, {device}, threads {torch.get_num_threads()}, "
          f"median of {a.repeats} steps")
    print(markdown_table(["method", "step ms", "vs erm", "mixed layers"], rows))


if __name__ == "__main__":
    main()
