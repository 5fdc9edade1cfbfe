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

import torch
import torch.nn.functional as F
from timing import image_batch, image_parser, interleave, prepare

import zoo
from zoo.engine import markdown_table


def main() -> None:
    p = image_parser(__doc__, model="preactresnet18", model_flag="--backbone", repeats=7,
                     model_help="plain backbone; its NFM version is nfm_<name>")
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2], help="NFM pass counts to time")
    p.add_argument("--share-kv", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each pass count with nfm_share_kv=True (one key/value projection per layer)")
    a = p.parse_args()
    device = prepare(a)
    kw = dict(in_chans=a.chans, num_classes=a.classes)
    models = {a.backbone: zoo.create_model(a.backbone, **kw)}
    for k in a.passes:
        for share in (False, True) if a.share_kv else (False,):
            label = f"nfm_{a.backbone} ({k} pass{'es' if k > 1 else ''}{', share_kv' if share else ''})"
            models[label] = zoo.create_model(f"nfm_{a.backbone}", nfm_passes=k, nfm_share_kv=share, **kw)
    batch = image_batch(a, device)

    def train_step(model):
        model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(i: int) -> None:
            loss = F.cross_entropy(model(batch["x"]), batch["y"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    times = interleave({name: train_step(m) for name, m in models.items()}, a.repeats, device, warmup=2)
    ref, ref_min = statistics.median(times[a.backbone]), min(times[a.backbone])
    rows = []
    for name, model in models.items():
        med = statistics.median(times[name])
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append([name, f"{params:.2f}", f"{1000 * med:.0f}", f"{med / ref:.3f}x",
                     f"{min(times[name]) / ref_min:.3f}x"])
    print(f"batch {a.batch}x{a.chans}x{a.size}x{a.size}, {device}, threads {a.threads or 'default'}, "
          f"median of {a.repeats} fwd+bwd steps (goals: 1 pass <= 1.15x, 2 passes <= 2.2x)")
    print(markdown_table(["model", "params (M)", "median step ms", "ratio (median)", "ratio (fastest step)"], rows))


if __name__ == "__main__":
    main()
