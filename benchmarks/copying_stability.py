"""State and gradient growth of a sequence model trained on the copying task (issue 17, ``docs/copying.md``).

    python benchmarks/copying_stability.py --models rim_gru_seq gru_seq --steps 900
    python benchmarks/copying_stability.py --models rim_gru_seq --model-kwargs '{"comm_residual": "linear"}' --steps 900

The training of ``python -m tasks.copying`` (the same data stream, model, Adam, gradient clipping and
learning-rate schedule; by default cosine over ``--schedule-steps`` 6,000 with a 100-step warm-up, the
schedule of the long runs in ``docs/copying.md``), stopped after ``--steps``, printing every ``--every``
steps the training loss, the gradient norm before clipping and the largest and mean ``|h|`` of the core's
output (for a RIM every unit's state). It stops a model early once the loss is not finite or above 1e4.
Models run one after the other, one torch thread, each from ``--seed``: the numbers are reproducible on
the same CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

import zoo  # noqa: E402
from tasks.copying import NUM_RECALL, NUM_TOKENS, copying_batches  # noqa: E402
from zoo.engine import ConfigError, lr_schedule, per_model_kwargs, seed_everything  # noqa: E402


def run(name: str, kwargs: dict, args: argparse.Namespace) -> None:
    seed_everything(args.seed)
    try:
        model = zoo.create_model(name, num_tokens=NUM_TOKENS, num_classes=NUM_TOKENS, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:                  # unknown model or kwargs: one line
        raise SystemExit(f"error: {name} with {json.dumps(kwargs)}: {e}") from None
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = lr_schedule(optimizer, "cosine", args.schedule_steps, args.warmup)
    batches = copying_batches(args.train_len, args.batch_size, args.seed, NUM_RECALL)
    print(f"{name} {json.dumps(kwargs)}: lr {args.lr}, cosine over {args.schedule_steps} steps, warm-up "
          f"{args.warmup}, clip {args.clip_grad}, batch {args.batch_size}, T={args.train_len}, seed {args.seed}")
    print("step | loss | grad norm | max |h| | mean |h| | seconds")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = next(batches)
        features, _ = model.forward_core(x)
        loss = F.cross_entropy(model.forward_head(features).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        optimizer.step()
        scheduler.step()
        value = loss.item()
        blown = not math.isfinite(value) or value > 1e4
        if step % args.every == 0 or blown:
            print(f"{step} | {value:.4g} | {grad_norm.item():.3g} | {features.abs().max().item():.3g} | "
                  f"{features.abs().mean().item():.3g} | {time.perf_counter() - start:.0f}", flush=True)
        if blown:
            print(f"{name}: stopped at step {step}, loss {value:.3g}")
            break


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["rim_gru_seq", "gru_seq"], help="registered sequence models")
    p.add_argument("--model-kwargs", default="{}", help="JSON model kwargs, shared or per model, as the harnesses' "
                   "--model-kwargs (e.g. '{\"comm_residual\": \"linear\"}')")
    p.add_argument("--steps", type=int, default=900, help="steps to run")
    p.add_argument("--schedule-steps", type=int, default=6000, help="length of the cosine schedule")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-len", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=25, help="print every this many steps")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="compile the RIM's time step (as --compile of tasks.copying)")
    args = p.parse_args()
    try:
        kwargs = per_model_kwargs(args.model_kwargs, args.models)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    torch.set_num_threads(1)
    for name in args.models:
        run(name, {"compile": args.compile, **kwargs[name]}, args)       # compile: a no-op for nn.LSTM / nn.GRU


if __name__ == "__main__":
    main()
