"""CPU time of the attention blocks alone of an NFM model (forward + backward), against its backbone.

    python benchmarks/nfm_blocks.py                               # nfm_preactresnet18, 1 and 2 passes, batch 64
    python benchmarks/nfm_blocks.py --variants p2 p2:share_kv=False --threads 1 --repeats 5

Runs the NFM model with every body module replaced by a stand-in that returns a fixed tensor of that
module's output shape (plus ``0 * mean(input)``, so gradients still reach the blocks), so that one
``run(x).output.sum().backward()`` costs the blocks, the key/value projections and the rescaling, and
nearly nothing else. Prints the CPU milliseconds of that (median over ``--repeats``, interleaved with the
plain backbone's forward + backward on the same batch) and its ratio to the backbone: the part of the
train-step ratio of ``benchmarks/nfm_overhead.py`` the blocks are responsible for, without the noise of
timing the whole step twice. Variants as in ``nfm_overhead.py`` (``p<passes>[:key=value ...]``).
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from nfm_overhead import parse_variant
from timing import image_batch, image_parser, interleave, prepare
from torch import nn

import zoo
from zoo.engine import markdown_table


class _Fixed(nn.Module):
    """Returns a fixed tensor (a leaf that requires grad) and keeps the input in the graph."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = nn.Parameter(out.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out + 0 * x.mean()


def main() -> None:
    p = image_parser(__doc__, model="preactresnet18", model_flag="--backbone", repeats=5,
                     model_help="plain backbone; its NFM version is nfm_<name>")
    p.add_argument("--variants", nargs="+", default=["p1", "p2"], help="p<passes>[:key=value ...]")
    a = p.parse_args()
    device = prepare(a)
    batch = image_batch(a, device)
    kw = dict(in_chans=a.chans, num_classes=a.classes)
    backbone = zoo.create_model(a.backbone, **kw).to(device).train()
    with torch.no_grad():
        outs = []
        h = batch["x"]
        for m in backbone.body_modules():
            h = m(h)
            outs.append(h)
    steps = {a.backbone: lambda i: F.cross_entropy(backbone(batch["x"]), batch["y"]).backward()}
    for spec in a.variants:
        extra, flags = parse_variant(spec)
        if flags:
            raise SystemExit(f"nfm_blocks.py times eager blocks only; drop {flags} from {spec!r}")
        model = zoo.create_model(f"nfm_{a.backbone}", **kw, **extra).to(device).train()
        net = model.nfm
        for mods in net.passes:
            for i in range(len(mods)):
                mods[i] = _Fixed(outs[i])
        steps[f"nfm_{a.backbone} {spec} blocks"] = (lambda net: lambda i: net.run(batch["x"]).output.sum().backward())(net)
    times = interleave(steps, a.repeats, device, warmup=1,
                       clock=time.process_time if device.type == "cpu" else time.perf_counter)
    ref = statistics.median(times[a.backbone])
    rows = [[k, f"{1000 * statistics.median(v):.0f}", f"{statistics.median(v) / ref:.3f}x"] for k, v in times.items()]
    print(f"batch {a.batch}x{a.chans}x{a.size}x{a.size}, {device}, threads {a.threads or 'default'}, median of "
          f"{a.repeats} (CPU time on CPU): the blocks' forward + backward against the backbone's")
    print(markdown_table(["what", "ms", "ratio to backbone fwd+bwd"], rows))


if __name__ == "__main__":
    main()
