"""CPU time of the attention blocks alone of nfm_preactresnet18 (forward + backward, random inputs).

    python benchmarks/nfm_blocks.py            # the block timings of docs/nfm.md (1 thread, best of 3)

Builds, for each of the 8 NFM blocks of the 2-pass model (before stages 1-4 of pass 1 and of pass 2), an
``NFMAttention`` with the default settings (d_k = d_v = 16, 4 heads, top-k 5) and random query and source
tensors of the backbone's shapes at batch 64, 32x32 input, and times ``block(h, sources).sum().backward()``.
Less noisy than a whole training step on a loaded machine, and isolates what the block itself costs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

from zoo.layers.nfm import NFMAttention

LAYERS = [(64, 32), (64, 32), (128, 16), (256, 8), (512, 4)]      # stem, stage 1-4 outputs: channels, size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    total = {}
    for passes in (1, 2):
        for i in (1, 2, 3, 4):                                     # the block before stage i
            srcs = LAYERS * (passes - 1) + LAYERS[:i]
            qc, qs = LAYERS[i - 1]
            blk = NFMAttention(qc, [c for c, _ in srcs]).train()
            h = torch.randn(a.batch, qc, qs, qs, requires_grad=True)
            xs = [torch.randn(a.batch, c, s, s, requires_grad=True) for c, s in srcs]
            ts = []
            for _ in range(a.repeats):
                t0 = time.process_time()
                blk(h, xs).sum().backward()
                ts.append(time.process_time() - t0)
            total[passes] = total.get(passes, 0.0) + min(ts)
            print(f"pass {passes}, block before stage {i} ({len(srcs)} sources): {1000 * min(ts):.0f} ms", flush=True)
    print(" ".join(f"pass {k} blocks: {v:.2f} s" for k, v in total.items()))


if __name__ == "__main__":
    main()
