"""RIM vs ``torch.nn.LSTM``: time and activation memory, same total hidden size, interleaved in one process.

    python benchmarks/rim_vs_lstm.py                     # fwd+bwd, T=100, B=64, in 32, H=600, 6 units, k=4; 1 and 2 threads
    python benchmarks/rim_vs_lstm.py --preset demo       # one Adam step of rim_lstm_seq_small vs lstm_seq_small (the
                                                         # copying demo's models until 2026-12-01)
                                                         # on a T=50 copying batch (70 steps), batch 64
    python benchmarks/rim_vs_lstm.py --threads 1 --repeats 9 --variants eager compiled gru official

Every variant runs in this process, interleaved round by round (and thread count by thread count), so load
from other jobs hits all of them alike; the script prints the median time of each and the ratio to
``nn.LSTM`` at the same thread count. Goals (issue 17): at most 1.2x at 1 and 2 threads on the default
preset, at most 1.5x on ``--preset demo``, activation memory at most ``nn.LSTM``'s. ``compiled`` is
``compile=True`` (``torch.compile`` of the RIM's time step; compiling takes a minute or two the first time,
before the timed rounds, and is cached on disk by torch afterwards); ``chunked`` adds ``compile_chunk=8`` (8 steps
per compiled graph, a longer first compile). Memory is the bytes autograd saves for
backward (a device-independent measure of activation memory), from ``torch.autograd.graph.saved_tensors_hooks``.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from timing import interleave, medians
from torch import nn

import zoo
from zoo.engine import resolve_device

VARIANTS = ("eager", "compiled", "chunked", "gru", "official")


def saved_bytes(run, *args) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of ``run(*args)`` (a loss)."""
    total = 0
    seen = set()

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run(*args)
    loss.backward()
    return total


def build(args, device):
    """name -> (module, one timed call, the loss whose saved tensors are measured)."""
    rim_kw = dict(num_units=args.units, k_active=args.k_active)
    if args.preset == "demo":
        x = torch.randint(0, 10, (args.batch, args.steps), device=device)
        y = torch.randint(0, 10, (args.batch, args.steps), device=device)
        make = {"nn.LSTM": lambda: zoo.create_model("lstm_seq_small"),
                "eager": lambda: zoo.create_model("rim_lstm_seq_small"),
                "compiled": lambda: zoo.create_model("rim_lstm_seq_small", compile=True),
                "chunked": lambda: zoo.create_model("rim_lstm_seq_small", compile=True, compile_chunk=8),
                "gru": lambda: zoo.create_model("rim_lstm_seq_small", cell="gru", compile=True),
                "official": lambda: zoo.create_model("rim_lstm_seq_official", hidden_size=192, embed_dim=64)}

        def loss_fn(m):
            return lambda: F.cross_entropy(m(x).flatten(0, 1), y.flatten())

        def step_fn(m):
            opt = torch.optim.Adam(m.parameters(), lr=1e-3)
            loss = loss_fn(m)

            def step(i):
                opt.zero_grad(set_to_none=True)
                loss().backward()
                opt.step()
            return step
    else:
        x = torch.randn(args.steps, args.batch, args.input, device=device)
        make = {"nn.LSTM": lambda: nn.LSTM(args.input, args.hidden),
                "eager": lambda: zoo.RIM(args.input, args.hidden, **rim_kw),
                "compiled": lambda: zoo.RIM(args.input, args.hidden, compile=True, **rim_kw),
                "chunked": lambda: zoo.RIM(args.input, args.hidden, compile=True, compile_chunk=8, **rim_kw),
                "gru": lambda: zoo.RIM(args.input, args.hidden, cell="gru", compile=True, **rim_kw),
                "official": lambda: zoo.RIM(args.input, args.hidden, official=True, **rim_kw)}

        def loss_fn(m):
            return lambda: m(x)[0].float().sum()

        def step_fn(m):
            loss = loss_fn(m)
            return lambda i: loss().backward()
    out = {}
    for name in ("nn.LSTM",) + tuple(args.variants):
        torch.manual_seed(0)
        m = make[name]().to(device)
        out[name] = (m, step_fn(m), loss_fn(m))
    return out


NAMES = {"nn.LSTM": "nn.LSTM", "eager": "RIM (lstm units, eager)", "compiled": "RIM (lstm units, compiled)",
         "chunked": "RIM (lstm units, compiled, chunks of 8 steps)",
         "gru": "RIM (gru units, compiled)", "official": "RIM (official numerics, eager)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("paper", "demo"), default="paper",
                   help="paper: RIM layer vs nn.LSTM forward+backward; demo: Adam step of the copying demo's models")
    p.add_argument("--steps", type=int, default=None, help="sequence length (default 100, demo 70)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--input", type=int, default=32)
    p.add_argument("--hidden", type=int, default=600)
    p.add_argument("--units", type=int, default=6)
    p.add_argument("--k-active", type=int, default=4)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["eager", "compiled"])
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (after one warm-up round)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, interleaved")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    args = p.parse_args()
    args.steps = args.steps or (70 if args.preset == "demo" else 100)
    args.thread_counts = args.threads
    torch.set_num_threads(args.thread_counts[0])
    torch.manual_seed(0)
    device = resolve_device(args.device)
    models = build(args, device)
    t0 = time.perf_counter()
    for name, (_, step, _) in models.items():                           # compile and warm up
        step(0)
    warm = time.perf_counter() - t0

    steps = {}
    for threads in args.thread_counts:
        for name, (_, step, _) in models.items():
            def timed_step(i, _step=step, _threads=threads):
                torch.set_num_threads(_threads)
                _step(i)
            steps[(name, threads)] = timed_step
    med = medians(interleave(steps, args.repeats, device, warmup=1))
    torch.set_num_threads(args.thread_counts[0])
    mem = {name: saved_bytes(loss) for name, (_, _, loss) in models.items()}
    what = ("one Adam step of rim_lstm_seq_small / lstm_seq_small (hidden 192, embedding 64) on token batches"
            if args.preset == "demo" else "forward+backward of the layer")
    print(f"{what}: T={args.steps}, batch={args.batch}"
          + ("" if args.preset == "demo" else f", input={args.input}, hidden={args.hidden}")
          + f", units={args.units}, k_active={args.k_active}, device={device}, median of {args.repeats} interleaved "
          f"rounds; compile and warm-up {warm:.0f} s")
    print("| model | threads | time (ms) | x LSTM | saved for backward (MiB) | x LSTM | params |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.thread_counts:
        base = med[("nn.LSTM", threads)]
        for name, (m, _, _) in models.items():
            t = med[(name, threads)]
            n_params = sum(q.numel() for q in m.parameters())
            print(f"| {NAMES[name]} | {threads} | {t * 1e3:.1f} | {t / base:.2f} | {mem[name] / 2**20:.1f} | "
                  f"{mem[name] / mem['nn.LSTM']:.2f} | {n_params:,} |")


if __name__ == "__main__":
    main()
