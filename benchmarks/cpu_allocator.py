"""What glibc's default ``malloc`` costs a CPU training step, against :func:`zoo.engine.retain_freed_memory`.

    python benchmarks/cpu_allocator.py                     # preactresnet18, nfm_preactresnet18 1 and 2 passes,
                                                           # batch 64x3x32x32, 1 and 2 threads, 3 rounds
    python benchmarks/cpu_allocator.py --models mnist_convnet nfm_mnist_convnet:p2 --size 28 --chans 1 --batch 256

The allocator setting is process-wide and cannot be undone, so each (model, allocator) pair runs in its own
worker process; the workers are interleaved round by round (round r runs every pair once), and inside a
worker the thread counts alternate step by step. Each worker does 2 warm-up steps at each thread count,
then ``--steps`` timed training steps (forward, cross-entropy, backward, SGD step) at each, and reports
per step: CPU milliseconds (this process, every thread), minor page faults and system CPU seconds (the
kernel's share: page faults and zero-filling fresh pages). Printed: medians over every timed step of
every round, and two ratios by CPU time: ``retain / default`` for the same model, and each model against
the first one (the plain backbone) under the same allocator, the ratio ``benchmarks/nfm_overhead.py``
reports.

A model is a registry name, optionally followed by ``:`` and a variant of ``nfm_overhead.py`` (parsed by
it): ``nfm_preactresnet18:p2``, ``nfm_preactresnet18:p2:share_kv=False``.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

from nfm_overhead import parse_variant  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ALLOCATORS = ("default", "retain")


def parse_model(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"nfm_preactresnet18:p2"`` -> ``("nfm_preactresnet18", {"nfm_passes": 2})``: a registry name, then
    optionally an ``nfm_overhead.py`` variant (its parser; run-mode ``+flags`` are not timed here)."""
    name, sep, variant = spec.partition(":")
    if not sep:
        return name, {}
    kw, flags = parse_variant(variant)
    if flags:
        raise SystemExit(f"model {spec!r}: run-mode flags ({', '.join('+' + f for f in flags)}) are not supported here")
    return name, kw


def worker(a: argparse.Namespace) -> None:
    """One (model, allocator) pair: print one JSON line of per-step measurements per thread count."""
    import torch
    import torch.nn.functional as F

    import zoo
    from zoo.engine.memory import retain_freed_memory

    applied = retain_freed_memory() if a.allocator == "retain" else False
    torch.manual_seed(0)
    name, kw = parse_model(a.worker)
    model = zoo.create_model(name, num_classes=a.classes, in_chans=a.chans, **kw)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(a.batch, a.chans, a.size, a.size)
    y = torch.randint(a.classes, (a.batch,))

    def step() -> Tuple[float, int, float]:
        r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        c1, r1 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        return (c1 - c0) * 1e3, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime

    out: Dict[int, List[Tuple[float, int, float]]] = {n: [] for n in a.threads}
    for i in range(2 + a.steps):
        for n in a.threads:
            torch.set_num_threads(n)
            s = step()
            if i >= 2:
                out[n].append(s)
    print(json.dumps({"applied": applied, "steps": {str(n): v for n, v in out.items()}}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["preactresnet18", "nfm_preactresnet18:p1", "nfm_preactresnet18:p2"],
                   help="registry names with optional :p<passes> and :key=value; the first is the baseline")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--chans", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=2, help="timed steps per worker and thread count")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs every (model, allocator) worker once")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, alternated per step")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--allocator", choices=ALLOCATORS, help=argparse.SUPPRESS)
    a = p.parse_args()
    if min(a.threads) < 1 or a.steps < 1 or a.repeats < 1:
        raise SystemExit("--threads, --steps and --repeats must be >= 1")
    if a.worker:
        worker(a)
        return
    for spec in a.models:
        parse_model(spec)
    common = ["--batch", str(a.batch), "--chans", str(a.chans), "--size", str(a.size), "--classes", str(a.classes),
              "--steps", str(a.steps), "--threads", *map(str, a.threads)]
    rows: Dict[Tuple[str, str], List[dict]] = {(m, al): [] for m in a.models for al in ALLOCATORS}
    t0 = time.perf_counter()
    for r in range(a.repeats):
        for m in a.models:
            for al in ALLOCATORS:
                res = subprocess.run([sys.executable, __file__, "--worker", m, "--allocator", al, *common],
                                     capture_output=True, text=True)
                if res.returncode:
                    raise SystemExit(f"worker {m} ({al}) failed:\n{res.stderr[-2000:]}")
                rows[(m, al)].append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1}/{a.repeats}: {m} ({al}) done, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if not all(d["applied"] for d in rows[(a.models[0], "retain")]):
        print("note: retain_freed_memory() is not supported here (not glibc); both columns are the default", file=sys.stderr)
    print(f"\nbatch {a.batch}x{a.chans}x{a.size}x{a.size}, {a.repeats} rounds x {a.steps} steps per thread count, "
          f"medians per step; ratios by CPU time ({time.perf_counter() - t0:.0f} s)")
    print("| threads | model | allocator | page faults | system s | train ms (CPU) | retain / default | vs "
          f"{a.models[0]} |")
    print("|---|---|---|---|---|---|---|---|")
    for n in map(str, a.threads):
        med: Dict[Tuple[str, str], Tuple[float, ...]] = {}
        for key, runs in rows.items():
            steps = [s for d in runs for s in d["steps"][n]]
            med[key] = tuple(statistics.median(s[i] for s in steps) for i in range(3))
        for m in a.models:
            for al in ALLOCATORS:
                ms, faults, sys_s = med[(m, al)]
                own = f"{ms / med[(m, 'default')][0]:.3f}x" if al == "retain" else ""
                print(f"| {n} | `{m}` | {al} | {faults:,.0f} | {sys_s:.2f} | {ms:.0f} | {own} | "
                      f"{ms / med[(a.models[0], al)][0]:.3f}x |")


if __name__ == "__main__":
    main()
