"""What the benchmark scripts share: the options of an image-model benchmark, one timed call, interleaved
repeats and a training step for a registered method.

Every benchmark compares variants *in one process*, interleaved round by round, so that load from other
jobs hits all of them alike, and prints ratios of medians against a baseline of the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

from zoo.engine import resolve_device  # noqa: E402

__all__ = ["image_parser", "prepare", "timed", "interleave", "at_threads", "thread_key", "medians", "method_step", "image_batch"]


def image_parser(doc: str, model: str = "resnet18", model_flag: str = "--model", repeats: int = 15,
                 model_help: str = "registry name (zoo or timm)", thread_list: bool = False) -> argparse.ArgumentParser:
    """The options of an image benchmark: model, batch shape, repeats, threads, device (``thread_list``:
    ``--threads`` takes several counts, default 1 2, e.g. for :func:`at_threads`)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(model_flag, default=model, help=model_help)
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--chans", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    add_run_options(p, repeats, thread_list)
    return p


def add_run_options(p: argparse.ArgumentParser, repeats: int, thread_list: bool = False) -> None:
    """``--repeats``, ``--threads``, ``--device``: the options of every benchmark."""
    p.add_argument("--repeats", type=int, default=repeats, help="timed rounds (after the warm-up rounds)")
    if thread_list:
        p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to compare")
    else:
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")


def prepare(a: argparse.Namespace, seed: int = 0) -> torch.device:
    """Apply ``--threads`` (the first of a list), seed torch and resolve ``--device``."""
    threads = a.threads[0] if isinstance(a.threads, list) else a.threads
    if isinstance(a.threads, list) and min(a.threads) < 1:
        raise SystemExit(f"--threads must be >= 1, got {' '.join(map(str, a.threads))}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return resolve_device(a.device)


def image_batch(a: argparse.Namespace, device: torch.device) -> Dict[str, torch.Tensor]:
    """A random batch ``{"x": (batch, chans, size, size) in [0, 1], "y": (batch,)}``."""
    return {"x": torch.rand(a.batch, a.chans, a.size, a.size, device=device),
            "y": torch.randint(a.classes, (a.batch,), device=device)}


def timed(fn: Callable[[], object], device: torch.device,
          clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds one call of ``fn`` takes (CUDA synchronised before and after). ``clock=time.process_time``
    counts this process's CPU time instead of wall time (steadier when other jobs load the machine)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - t0


def interleave(steps: Mapping[str, Callable[[int], object]], repeats: int, device: torch.device,
               warmup: int = 2, clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Call every ``steps[name](i)`` once per round, ``warmup + repeats`` rounds; the timed rounds' seconds."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            t = timed(lambda: step(i), device, clock)
            if i >= warmup:
                times[name].append(t)
    return times


def at_threads(steps: Mapping[str, Callable[[int], object]], counts: Sequence[int]) -> Dict[str, Callable[[int], object]]:
    """Every step at every torch thread count, as variants (:func:`thread_key`) for :func:`interleave`: each
    call sets its count first (microseconds, inside the timed call), so one round times every pair and load
    hits 1 and 2 threads alike."""
    def at(n: int, fn: Callable[[int], object]) -> Callable[[int], object]:
        def step(i: int) -> object:
            torch.set_num_threads(n)
            return fn(i)
        return step

    return {thread_key(n, name): at(n, fn) for n in counts for name, fn in steps.items()}


def thread_key(threads: int, name: str) -> str:
    """The name of step ``name`` at ``threads`` threads in :func:`at_threads`' variants."""
    return f"{threads}\0{name}"


def medians(times: Mapping[str, List[float]]) -> Dict[str, float]:
    return {name: statistics.median(ts) for name, ts in times.items()}


def method_step(model: nn.Module, method, batch: Mapping[str, torch.Tensor], lr: float = 1e-3) -> Callable[[int], None]:
    """One full SGD step of a registered training method (``zoo.methods``), as the harness runs it: the
    method's loss, backward, optimizer step and the method's callbacks (e.g. ICT's teacher update)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step(i: int) -> None:
        loss, _ = method.loss(model, batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for cb in method.callbacks():
            cb(i + 1, model)

    return step
