"""Sequential MNIST at 24x24 (T = 576): forward+backward of the RIM model vs the LSTM model.

    python benchmarks/seq_mnist_t576.py                        # paper sizes and the harness's small models
    python benchmarks/seq_mnist_t576.py --sizes paper --repeats 5 --batch 64
    python benchmarks/seq_mnist_t576.py --steps 196            # the training length (14x14)
    python benchmarks/seq_mnist_t576.py --variants compiled    # only the compiled RIM step (tasks.seq_mnist --compile)

One training step as ``tasks.seq_mnist`` runs it (binary pixel tokens, embedding, recurrent core, class
from the last step, cross-entropy, backward), timed for every (size, model, threads) variant in this one
process, interleaved round by round so that load from other jobs hits all of them alike. Prints the
median time of each and the ratio RIM / LSTM at each thread count (issue 13's goal: at most 1.5x), for the
eager RIM step (``tasks.seq_mnist``'s default) and the ``compile=True`` one (``--compile``; the first compile
takes about a minute, later runs load torch's cache).

Sizes: ``paper`` = ``rim_lstm_seq`` (6 units of 100, k_A = 4) vs ``lstm_seq`` (hidden 600), thesis
Table 1; ``small`` = ``rim_lstm_seq_small`` vs ``lstm_seq_small`` (hidden 192), the harness's default.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from timing import add_run_options, interleave, medians, prepare

import zoo

PAIRS = {"paper": ("rim_lstm_seq", "lstm_seq"), "small": ("rim_lstm_seq_small", "lstm_seq_small")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["paper", "small"], choices=list(PAIRS))
    p.add_argument("--steps", type=int, default=576, help="sequence length T (24x24 = 576)")
    p.add_argument("--batch", type=int, default=64, help="sequences per step (paper: 64)")
    p.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2], help="torch threads to compare")
    p.add_argument("--variants", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"],
                   help="RIM time step: eager and/or compile=True")
    p.add_argument("--model-kwargs", default="{}", help="JSON kwargs for the RIM models, e.g. '{\"k_active\": 3}'")
    add_run_options(p, repeats=3)
    a = p.parse_args()
    device = prepare(a)
    x = torch.randint(0, 2, (a.batch, a.steps), device=device)
    y = torch.randint(0, 10, (a.batch,), device=device)
    rim_kwargs = json.loads(a.model_kwargs)

    def step_fn(model: torch.nn.Module, threads: int):
        def step(_: int) -> None:
            torch.set_num_threads(threads)
            model.zero_grad(set_to_none=True)
            features, _ = model.forward_core(x)
            F.cross_entropy(model.forward_head(features[:, -1]), y).backward()
        return step

    steps, params = {}, {}
    for size in a.sizes:
        rim, lstm = PAIRS[size]
        model = zoo.create_model(lstm, num_tokens=2, num_classes=10).to(device).train()
        params[lstm] = sum(q.numel() for q in model.parameters())
        for t in a.thread_counts:
            steps[(size, lstm, t)] = step_fn(model, t)
        for variant in a.variants:
            kw = {**rim_kwargs, "compile": variant == "compiled"}
            model = zoo.create_model(rim, num_tokens=2, num_classes=10, **kw).to(device).train()
            params[rim] = sum(q.numel() for q in model.parameters())
            for t in a.thread_counts:
                steps[(size, f"{rim} {variant}", t)] = step_fn(model, t)
    med = medians(interleave(steps, a.repeats, device, warmup=1))
    print(f"forward+backward of one training step, T={a.steps}, batch={a.batch}, device={device}, median of "
          f"{a.repeats} interleaved rounds")
    print("| sizes | threads | LSTM model | ms | RIM model | ms | RIM / LSTM |\n|---|---|---|---|---|---|---|")
    for size in a.sizes:
        rim, lstm = PAIRS[size]
        for variant in a.variants:
            for t in a.thread_counts:
                r, s = med[(size, f"{rim} {variant}", t)], med[(size, lstm, t)]
                print(f"| {size} | {t} | {lstm} ({params[lstm]:,} params) | {s * 1e3:.0f} | {rim}, {variant} "
                      f"({params[rim]:,} params) | {r * 1e3:.0f} | {r / s:.2f} |")


if __name__ == "__main__":
    main()
