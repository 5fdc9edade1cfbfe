"""Prototype of two harness options for the copying task: a learning-rate schedule and a curriculum over the
dormant length (issue 17). ``python -m tasks.copying`` has neither; this script trains one model the way the
harness does (same data, model, Adam, clipping, evaluation sets and metrics) with them added, so that their
effect can be measured before they go into the harness.

    python benchmarks/copying_schedule.py --model rim_lstm_seq_small --steps 3000 --schedule cosine --warmup 100
    python benchmarks/copying_schedule.py --model rim_lstm_seq_small --curriculum 10:50:1000 --schedule cosine

Options beyond the harness's:
  --schedule constant|cosine   cosine: lr * (1 + cos(pi * s / S)) / 2 after a linear warm-up (``--warmup`` steps
                               from 0), down to ``--final-lr-frac`` of ``--lr`` at the last step S.
  --curriculum T0:T1:K         dormant length of the training batches grows linearly from T0 to T1 over the first
                               K steps (then stays at T1 = the harness's --train-len); 0:0:0 is off.

Prints one JSON line per evaluation and, at the end, the harness's metrics at every ``--test-lens`` with
wall and CPU time.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from tasks.copying import NUM_TOKENS, copying_batch, evaluate  # noqa: E402
from zoo.engine import arg, fit, parse_config, seed_everything  # noqa: E402


@dataclass
class Proto:
    """Copying with an lr schedule and a dormant-length curriculum (a prototype of two harness options)."""

    model: str = arg("rim_lstm_seq_small", help="registered sequence model")
    model_kwargs: str = arg("{}", help="JSON dict of model kwargs")
    train_len: int = arg(50, help="dormant length T of training (after the curriculum)")
    test_lens: List[int] = arg([50, 200], help="dormant lengths to test")
    steps: int = arg(3000, help="optimizer steps")
    batch_size: int = arg(64, help="batch size")
    lr: float = arg(3e-3, help="peak Adam learning rate")
    clip_grad: float = arg(1.0, help="gradient-norm clip")
    schedule: str = arg("constant", help="constant or cosine")
    warmup: int = arg(0, help="linear warm-up steps (cosine schedule)")
    final_lr_frac: float = arg(0.0, help="lr at the last step, as a fraction of --lr (cosine schedule)")
    curriculum: str = arg("0:0:0", help="T0:T1:K, dormant length from T0 to T1 over K steps (0:0:0: off)")
    seed: int = arg(0, help="seed")
    eval_size: int = arg(1000, help="test sequences per dormant length")
    eval_every: int = arg(250, help="evaluate at train_len every this many steps")
    threads: int = arg(1, help="torch threads")
    out: str = arg("runs/copying_schedule", help="output folder")


def lr_factor(p: Proto, step: int) -> float:
    if p.schedule == "constant":
        return 1.0
    if step < p.warmup:
        return (step + 1) / p.warmup
    progress = (step - p.warmup) / max(1, p.steps - p.warmup)
    return p.final_lr_frac + (1 - p.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batches(p: Proto):
    """The harness's training stream, with the dormant length of step s from the curriculum."""
    t0, t1, k = (int(v) for v in p.curriculum.split(":"))
    g = torch.Generator().manual_seed(p.seed)
    step = 0
    while True:
        T = p.train_len if k == 0 or step >= k else round(t0 + (t1 - t0) * step / k)
        yield copying_batch(max(1, T), p.batch_size, g)
        step += 1


def main(argv=None) -> None:
    p = parse_config(Proto, argv, prog="python benchmarks/copying_schedule.py")
    torch.set_num_threads(p.threads)
    seed_everything(p.seed)
    model = zoo.create_model(p.model, num_tokens=NUM_TOKENS, num_classes=NUM_TOKENS, **json.loads(p.model_kwargs))
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(p, s))

    def step_fn(m, batch):
        x, y = batch
        return F.cross_entropy(m(x).flatten(0, 1), y.flatten()), {}

    eval_seed = 10_000 + p.seed
    device = torch.device("cpu")

    def eval_fn(m):
        r = evaluate(m, p.train_len, min(p.eval_size, 500), eval_seed, device)
        print(json.dumps({"acc_recall": round(r["acc_recall"], 4)}), flush=True)
        return r

    wall, cpu = time.perf_counter(), time.process_time()
    result = fit(model, optimizer, batches(p), step_fn, steps=p.steps, device=device, out_dir=Path(p.out),
                 clip_grad=p.clip_grad, scheduler=scheduler, eval_fn=eval_fn, eval_every=p.eval_every,
                 desc=p.model, progress=False)
    tests = {str(T): evaluate(model, T, p.eval_size, eval_seed + T, device) for T in p.test_lens}
    summary = {"config": asdict(p), "tests": tests, "train_seconds": result.seconds,
               "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
               "curve": [{"step": h["step"], "acc_recall": h["acc_recall"]} for h in result.eval_history]}
    Path(p.out).mkdir(parents=True, exist_ok=True)
    (Path(p.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({"tests": {T: round(v["acc_recall"], 4) for T, v in tests.items()},
                      "wall_s": round(summary["wall_seconds"]), "cpu_s": round(summary["cpu_seconds"])}))


if __name__ == "__main__":
    main()
