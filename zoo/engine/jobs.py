"""Run independent training jobs (models x seeds) in parallel processes, one thread each.

Small recurrent models do not use two cores well; two jobs side by side do.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from .checkpoint import write_json, write_text
from .seed import resolve_device

__all__ = ["run_jobs", "default_workers", "run_grid", "command_line", "write_report"]


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


def run_grid(cfg: Any, fn: Callable[..., Any], names: Sequence[str], label: str,
             detail: str = "") -> Tuple[List[Any], float, Path]:
    """A harness's grid of runs: ``fn(cfg, name, seed, index)`` for every name x seed, in parallel.

    ``cfg`` is a harness config with ``out``, ``device``, ``seed``, ``seeds``, ``workers`` (0: one per core)
    and ``threads``. Writes ``out/config.json``, prints one line, and returns ``(runs, wall_seconds, out)``
    with ``runs`` in the order of the jobs.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(cfg))
    device = resolve_device(cfg.device)
    jobs = [(cfg, name, cfg.seed + s) for name in names for s in range(cfg.seeds)]
    jobs = [job + (i,) for i, job in enumerate(jobs)]
    workers = cfg.workers or default_workers(len(jobs), device)
    print(f"{label}: {len(jobs)} run(s) on {device}, {workers} worker(s){detail} -> {out}")
    t0 = time.perf_counter()
    runs = run_jobs(fn, jobs, workers=workers, threads=cfg.threads)
    return runs, time.perf_counter() - t0, out


def command_line(prog: str, argv: Optional[Sequence[str]]) -> str:
    """The command that reproduces a run, for results files: ``"python -m tasks.x --a 1"``."""
    return " ".join([prog, *argv]) if argv else prog


def write_report(out: Path, cfg: Any, results: dict, wall: float, title: str, command: str, table: str,
                 extra: str = "", figures: Sequence[Optional[Path]] = ()) -> None:
    """Finish a harness run: ``results.json`` (``results`` plus ``_meta``: wall time and config) and
    ``results.md`` (title, the command that reproduces it, wall time, ``table``, ``extra``), both written
    atomically; then print the table and what was written."""
    results["_meta"] = {"wall_seconds": wall, "config": dataclasses.asdict(cfg)}
    write_json(out / "results.json", results)
    write_text(out / "results.md", f"# {title}\n\nCommand: `{command}`  \nWall time: {wall:.0f} s\n\n{table}{extra}")
    print("\n" + table)
    written = [out / "results.md", out / "results.json", *(f for f in figures if f)]
    print(f"wall time {wall:.0f} s; wrote {', '.join(map(str, written))}")
