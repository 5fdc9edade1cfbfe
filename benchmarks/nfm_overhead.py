"""Step-time overhead of NFM (thesis ch. 10) against its plain backbone.

    python benchmarks/nfm_overhead.py                          # nfm_preactresnet18, 1 and 2 passes, batch 64x3x32x32
    python benchmarks/nfm_overhead.py --threads 1 --repeats 7  # the numbers of docs/nfm.md
    python benchmarks/nfm_overhead.py --backbone mnist_convnet --chans 1 --size 28

One full training step each (forward, cross-entropy, backward, SGD step) of the plain backbone and of its
``nfm_*`` version built with ``nfm_passes=1`` and ``nfm_passes=2`` (the paper's 2-pass model), each also
with ``nfm_share_kv=True`` (one key/value projection per stored layer instead of one per reading block), interleaved
in this process on the same batch; prints the median step time of each and the ratio to the backbone, of
the medians and of the fastest steps (the least disturbed on a loaded machine).
Goals: at most 1.15x for 1 pass, 2.2x for 2 passes (2 passes run the backbone twice, so 2.0x is the floor).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

import zoo
from zoo.engine import markdown_table, resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="preactresnet18", help="plain backbone; its NFM version is nfm_<name>")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--chans", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2], help="NFM pass counts to time")
    p.add_argument("--share-kv", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each pass count with nfm_share_kv=True (one key/value projection per layer)")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per model (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    torch.manual_seed(0)
    kw = dict(in_chans=a.chans, num_classes=a.classes)
    models = {a.backbone: zoo.create_model(a.backbone, **kw)}
    for k in a.passes:
        for share in (False, True) if a.share_kv else (False,):
            label = f"nfm_{a.backbone} ({k} pass{'es' if k > 1 else ''}{', share_kv' if share else ''})"
            models[label] = zoo.create_model(f"nfm_{a.backbone}", nfm_passes=k, nfm_share_kv=share, **kw)
    x = torch.rand(a.batch, a.chans, a.size, a.size, device=device)
    y = torch.randint(a.classes, (a.batch,), device=device)
    runs = {}
    for name, model in models.items():
        model.to(device).train()
        runs[name] = (model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), [])

    def step(model, opt) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for i in range(2 + a.repeats):                               # interleaved: same machine load for each
        for name, (model, opt, times) in runs.items():
            t = step(model, opt)
            if i >= 2:
                times.append(t)
    ref, ref_min = statistics.median(runs[a.backbone][2]), min(runs[a.backbone][2])
    rows = []
    for name, (model, _, times) in runs.items():
        med = statistics.median(times)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append([name, f"{params:.2f}", f"{1000 * med:.0f}", f"{med / ref:.3f}x", f"{min(times) / ref_min:.3f}x"])
    print(f"batch {a.batch}x{a.chans}x{a.size}x{a.size}, {device}, threads {torch.get_num_threads()}, "
          f"median of {a.repeats} fwd+bwd steps (goals: 1 pass <= 1.15x, 2 passes <= 2.2x)")
    print(markdown_table(["model", "params (M)", "median step ms", "ratio (median)", "ratio (fastest step)"], rows))


if __name__ == "__main__":
    main()
