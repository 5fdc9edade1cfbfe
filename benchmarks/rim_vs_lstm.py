"""RIM vs ``torch.nn.LSTM``: forward+backward time and activation memory, same total hidden size.

    python benchmarks/rim_vs_lstm.py                     # the issue's config: T=100, B=64, in 32, 6 units, k=4, H=600
    python benchmarks/rim_vs_lstm.py --hidden 192 --repeats 7

Both models run in this process, interleaved, and the script prints the median time of each and the ratio
RIM / LSTM (goal: at most 1.5x on the default config). Memory is the bytes autograd saves for backward
(a device-independent measure of activation memory), from ``torch.autograd.graph.saved_tensors_hooks``.
"""
from __future__ import annotations

import argparse

import torch
from timing import add_run_options, interleave, medians, prepare
from torch import nn

import zoo


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0
    seen = set()

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = model(x)
    out.sum().backward()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="sequence length T")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--input", type=int, default=32)
    p.add_argument("--hidden", type=int, default=600)
    p.add_argument("--units", type=int, default=6)
    p.add_argument("--k-active", type=int, default=4)
    add_run_options(p, repeats=5)
    args = p.parse_args()
    device = prepare(args)
    x = torch.randn(args.steps, args.batch, args.input, device=device)
    models = {
        "nn.LSTM": nn.LSTM(args.input, args.hidden),
        "RIM (lstm units)": zoo.RIM(args.input, args.hidden, num_units=args.units, k_active=args.k_active),
        "RIM (gru units)": zoo.RIM(args.input, args.hidden, num_units=args.units, k_active=args.k_active,
                                   cell="gru"),
        "RIM (official numerics)": zoo.RIM(args.input, args.hidden, num_units=args.units,
                                           k_active=args.k_active, official=True),
    }

    def fwd_bwd(m):
        m.to(device)
        return lambda i: m(x)[0].float().sum().backward()

    med = medians(interleave({name: fwd_bwd(m) for name, m in models.items()}, args.repeats, device, warmup=1))
    base = med["nn.LSTM"]
    base_mem = saved_bytes(models["nn.LSTM"], x)
    print(f"forward+backward, T={args.steps}, batch={args.batch}, input={args.input}, hidden={args.hidden}, "
          f"units={args.units}, k_active={args.k_active}, device={device}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"{'model':<26}{'time (ms)':>11}{'x LSTM':>9}{'saved MiB':>11}{'x LSTM':>9}{'params':>10}")
    for name, m in models.items():
        mem = saved_bytes(m, x)
        n_params = sum(p.numel() for p in m.parameters())
        print(f"{name:<26}{med[name] * 1e3:>11.1f}{med[name] / base:>9.2f}{mem / 2**20:>11.1f}{mem / base_mem:>9.2f}"
              f"{n_params:>10,}")


if __name__ == "__main__":
    main()
