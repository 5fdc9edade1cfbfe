"""Run independent training jobs (models x seeds) in parallel processes, one thread each.

Small recurrent models do not use two cores well; two jobs side by side do.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, List, Sequence

import torch

__all__ = ["run_jobs", "default_workers"]


def default_workers(num_jobs: int, device: torch.device) -> int:
    """One process per CPU core (at most one per job); a single process on an accelerator."""
    if device.type != "cpu":
        return 1
    return max(1, min(num_jobs, os.cpu_count() or 1))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int = 1, threads: int = 1) -> List[Any]:
    """``[fn(*job) for job in jobs]``, in ``workers`` spawned processes when ``workers > 1``.

    ``fn`` must be importable (a module-level function). Results keep the order of ``jobs``.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        return [f.result() for f in futures]
