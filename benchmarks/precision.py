"""Training-step time in bfloat16 autocast (``--precision bf16`` of the harnesses, ``zoo.engine.fit(precision=)``)
against float32, for image classifiers, at 1 and 2 threads, interleaved in one process.

    python benchmarks/precision.py                                              # preactresnet18 and its 2-pass NFM
    python benchmarks/precision.py --models mnist_convnet nfm_mnist_convnet --chans 1 --size 64 --batch 32

One step is what ``fit`` runs: the forward and the cross-entropy inside :func:`zoo.engine.autocast_context`
(bf16) or not (fp32), then backward and an SGD step outside it; fp32 and bf16 copies of each model start from
the same weights and train on the same batch, every variant interleaved round by round at every thread count.
Prints the median wall milliseconds per step and the speed-up of bf16 over fp32 (above 1: bf16 faster). bf16 is
only fast where the device computes it natively: CUDA GPUs with bf16, CPUs with AMX or AVX512-BF16
(:func:`zoo.engine.native_bf16`, printed first); elsewhere autocast emulates it and the step is slower.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from timing import add_run_options, at_threads, image_batch, interleave, medians, prepare, thread_key

import zoo
from zoo.engine import autocast_context, markdown_table, native_bf16


def step_fn(model: torch.nn.Module, batch, precision: str, device: torch.device):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    amp = autocast_context(precision, device)

    def step(i: int) -> None:
        with amp:
            loss = F.cross_entropy(model(batch["x"]), batch["y"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["preactresnet18", "nfm_preactresnet18"],
                   help="registry names (zoo or timm) of image classifiers")
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--chans", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    add_run_options(p, repeats=5, thread_list=True)
    a = p.parse_args(argv)
    device = prepare(a)
    zoo.engine.retain_freed_memory(device)                     # as fit does on the CPU
    batch = image_batch(a, device)
    steps = {}
    for name in a.models:
        model = zoo.create_model(name, num_classes=a.classes, in_chans=a.chans).to(device).train()
        for precision in ("fp32", "bf16"):
            steps[f"{name}\0{precision}"] = step_fn(copy.deepcopy(model), batch, precision, device)
    times = medians(interleave(at_threads(steps, a.threads), a.repeats, device))
    print(f"{device}: native bf16 {native_bf16(device)}; batch {a.batch}x{a.chans}x{a.size}x{a.size}, median of "
          f"{a.repeats} interleaved rounds after 2 warm-up, wall ms per training step")
    rows = []
    for n in a.threads:
        for name in a.models:
            fp32, bf16 = (times[thread_key(n, f"{name}\0{p}")] for p in ("fp32", "bf16"))
            rows.append([n, name, f"{1000 * fp32:.0f}", f"{1000 * bf16:.0f}", f"{fp32 / bf16:.2f}x"])
    print(markdown_table(["threads", "model", "fp32 ms", "bf16 ms", "bf16 speed-up"], rows))


if __name__ == "__main__":
    main()
