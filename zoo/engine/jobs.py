"""Run a harness's grid of training jobs (models x seeds) in parallel processes, and write its report.

Small recurrent models do not use two cores well; two jobs side by side do. What this module guarantees:

* **One writer per output folder**: :func:`run_grid` takes a lock on ``out/.lock`` (an OS file lock,
  released by the kernel even when the process is killed) and refuses, in one line naming the other run,
  to start while another process holds it.
* **No orphans**: worker processes die with their parent (``PR_SET_PDEATHSIG`` on Linux, a watchdog
  thread elsewhere), so ``kill -9`` of the parent never leaves workers writing into the folder.
* **Interrupts**: SIGINT/SIGTERM make every job checkpoint after its current step and stop; the harness
  then exits with status 130 and one line saying how to resume.
* **Honest results**: :func:`write_report` refuses to write a results file holding a non-finite number,
  and keeps everything that varies between identical runs (wall times, the ``--resume`` flag) out of
  ``results.json``: a resumed run writes the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shlex
import signal
import socket
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import distributed as dist_utils
from .checkpoint import clean_stale_tmp, write_json, write_text
from .cli import config_to_dict
from .errors import Interrupted, RunError
from .loop import IN_WORKER, NonFiniteError, clear_stop, request_stop
from .seed import resolve_device

__all__ = ["run_jobs", "default_workers", "run_grid", "command_line", "write_report", "RunLock",
           "check_finite"]

try:  # POSIX file locks; Windows falls back to pid files
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]


#: a grid's single-threaded runs on a CPU go all at once, up to this many per core (see :func:`default_workers`)
RUNS_PER_CORE = 3


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_workers(num_jobs: int, device: torch.device, threads: int = 1, share_cores: bool = False) -> int:
    """How many processes run ``num_jobs`` jobs when ``--workers`` is 0: one on an accelerator; on a CPU one per
    ``threads`` cores (at most one per job).

    ``share_cores`` (a harness's grid of runs): single-threaded runs go all at once, up to :data:`RUNS_PER_CORE`
    per core, and the OS shares the cores among them to the end. One process per core would run them in rounds,
    and a last round that does not fill the cores leaves some idle: 3 seeds of a slow model and 3 of a fast one
    on 2 cores take two rounds of the slow run, where sharing takes about the total CPU time over the cores
    (``docs/sort_of_clevr.md``). Results do not depend on it: every run has its own fixed thread count."""
    if device.type != "cpu":
        return 1
    cores = cpu_cores()
    if share_cores and threads == 1:
        return max(1, min(num_jobs, RUNS_PER_CORE * cores))
    return max(1, min(num_jobs, cores // max(1, threads)))


# --- the output-folder lock ------------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on ``folder/.lock`` holding the owner's pid, host, start time and command.

    Re-entrant within a process (a harness that calls another on the same folder does not deadlock).
    """

    _held: Dict[Path, Tuple[int, int]] = {}                     # path -> (fd, depth)

    def __init__(self, folder: Path, command: str = "") -> None:
        self.folder, self.command = Path(folder), command
        self.path = (self.folder / ".lock").resolve() if self.folder.exists() else self.folder / ".lock"

    def acquire(self) -> "RunLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create the output folder {self.folder}: {e.strerror}; choose another --out") from None
        self.path = (self.folder / ".lock").resolve()
        if self.path in RunLock._held:
            fd, depth = RunLock._held[self.path]
            RunLock._held[self.path] = (fd, depth + 1)
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunError(f"another run is writing to {self.folder} ({self._describe_owner()}); wait for it "
                               f"to finish, stop it, or choose another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": self.command}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        RunLock._held[self.path] = (fd, 1)
        return self

    def _describe_owner(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return "owner unknown"
        parts = [f"pid {info.get('pid')}"]
        if info.get("started"):
            parts.append(f"started {info['started']}")
        if info.get("command"):
            parts.append(f"`{info['command']}`")
        return ", ".join(parts)

    def release(self) -> None:
        if self.path not in RunLock._held:
            return
        fd, depth = RunLock._held[self.path]
        if depth > 1:
            RunLock._held[self.path] = (fd, depth - 1)
            return
        del RunLock._held[self.path]
        try:
            self.path.unlink()
        except FileNotFoundError:  # pragma: no cover
            pass
        os.close(fd)                                            # closing the fd releases the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --- worker processes ------------------------------------------------------------------------------------
def _die_with_parent(parent_pid: int) -> None:
    """Make this process exit as soon as ``parent_pid`` dies."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)                            # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent_pid:                               # the parent died before prctl took effect
        os._exit(1)

    def watchdog() -> None:                                      # portable fallback
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watchdog, daemon=True, name="zoo-parent-watchdog").start()


def _init_worker(threads: int, parent_pid: int) -> None:
    IN_WORKER["value"] = True
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, request_stop)                   # checkpoint and stop, never a traceback
    signal.signal(signal.SIGTERM, request_stop)
    _die_with_parent(parent_pid)


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int = 1, threads: int = 1) -> List[Any]:
    """``[fn(*job) for job in jobs]``, in ``workers`` spawned processes when ``workers > 1``.

    ``fn`` must be importable (a module-level function). Results keep the order of ``jobs``. Every job runs
    with ``threads`` torch threads, in this process too, so results do not depend on ``workers``.
    A SIGINT/SIGTERM makes running jobs checkpoint and stop; the first failure stops the others the same
    way and is re-raised (:class:`~zoo.engine.errors.Interrupted` after an interrupt).
    """
    if workers <= 1 or len(jobs) <= 1:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return [fn(*job) for job in jobs]
        finally:
            torch.set_num_threads(before)
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, os.getpid()))
    interrupted = {"n": 0}

    def on_signal(*_: Any) -> None:
        interrupted["n"] += 1
        if interrupted["n"] > 1:                                 # a second Ctrl-C: stop now (workers die with us)
            os._exit(130)

    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    for s in old:
        signal.signal(s, on_signal)
    futures = [pool.submit(fn, *job) for job in jobs]
    stopping = False
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            failed = any(f.exception() is not None for f in done if not f.cancelled())
            if (interrupted["n"] or failed) and not stopping:
                stopping = True
                for f in pending:
                    f.cancel()
                for p in list(getattr(pool, "_processes", {}).values()):
                    try:
                        os.kill(p.pid, signal.SIGINT)            # each running job checkpoints and stops
                    except (ProcessLookupError, OSError):
                        pass
                pending = {f for f in pending if not f.cancelled()}
        errors = [e for e in (f.exception() for f in futures if not f.cancelled()) if e is not None]
        if errors:
            real = [e for e in errors if not isinstance(e, Interrupted)]
            if isinstance(real[0] if real else errors[0], BrokenProcessPool):
                raise RunError("a worker process died (killed by the OS, out of memory?); rerun with --resume "
                               "to continue from the last checkpoints")
            raise real[0] if real else errors[0]
        if interrupted["n"]:
            raise Interrupted("interrupted")
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for s, h in old.items():
            signal.signal(s, h)


# --- the grid and the report -----------------------------------------------------------------------------
def _named_job(fn: Callable[..., Any], label: str, *job: Any) -> Any:
    """``fn(*job)``; a :class:`RunError` (a diverged loss, a bad checkpoint) names the run it came from, so a
    grid's one-line error says which model and seed failed."""
    try:
        return fn(*job)
    except Interrupted:
        raise
    except RunError as e:
        e.args = (f"{label}: {e}",) + e.args[1:]
        raise


def command_line(prog: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that reproduces a run, for results files: ``"python -m tasks.x --a 1"``.

    ``argv=None`` means this process's command-line arguments. ``--resume`` is left out (it does not
    change what a run computes).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    args = [a for a in args if a not in ("--resume", "--no-resume")]
    return " ".join([prog, *(shlex.quote(a) for a in args)])


def _only_config_left(out: Path) -> bool:
    names = {p.name for p in out.iterdir()} if out.exists() else set()
    return names <= {"config.json", ".lock"}


def run_grid(cfg: Any, fn: Callable[..., Any], names: Sequence[str], label: str, detail: str = "",
             command: Optional[str] = None) -> Tuple[List[Any], float, Path]:
    """A harness's grid of runs: ``fn(cfg, name, seed, index)`` for every name x seed, in parallel.

    ``cfg`` is a harness config (:class:`~zoo.engine.cli.RunConfig`: ``out``, ``device``, ``seed``,
    ``seeds``, ``workers`` (0: :func:`default_workers` with ``share_cores``, every single-threaded run at once
    up to :data:`RUNS_PER_CORE` per core) and ``threads``). Locks ``out`` (released by
    :func:`write_report`, or here on failure), removes temporary files a killed run left, writes
    ``out/config.json``, prints one line, and returns ``(runs, wall_seconds, out)`` in the order of the jobs.
    On SIGINT/SIGTERM every job checkpoints; raises :class:`Interrupted` whose message says how to resume.
    """
    out = Path(cfg.out)
    command = command or command_line(label)
    existed = out.exists()
    device = resolve_device(cfg.device)
    distributed = dist_utils.init_from_env(device)
    main_process = dist_utils.is_main()
    lock = RunLock(out, command).acquire() if main_process else None
    try:
        if main_process:
            clean_stale_tmp(out)
            write_json(out / "config.json", config_to_dict(cfg, include_run_control=False))
        runs = [(cfg, name, cfg.seed + s) for name in names for s in range(cfg.seeds)]
        jobs = [(fn, f"{name}/seed{seed}", c, name, seed, i) for i, (c, name, seed) in enumerate(runs)]
        workers = 1 if distributed else (cfg.workers or default_workers(len(jobs), device, cfg.threads,
                                                                             share_cores=True))
        where = f"{dist_utils.world_size()} processes (torchrun)" if distributed else f"{workers} worker(s)"
        if main_process:
            print(f"{label}: {len(jobs)} run(s) on {device}, {where}{detail} -> {out}", flush=True)
        t0 = time.perf_counter()
        if getattr(cfg, "backend", "local") == "ray" and not distributed:
            from .ray_backend import run_jobs_ray

            runs = run_jobs_ray(_named_job, jobs, threads=cfg.threads, address=getattr(cfg, "ray_address", ""))
        else:
            runs = run_jobs(_named_job, jobs, workers=workers, threads=cfg.threads)
        if distributed and not main_process:                     # rank 0 writes the report and the plots
            raise SystemExit(0)
        return runs, time.perf_counter() - t0, out
    except BaseException as e:
        if isinstance(e, SystemExit) and e.code == 0:
            raise
        if main_process and _only_config_left(out):             # a failed start leaves nothing behind
            (out / "config.json").unlink(missing_ok=True)
        if lock is not None:
            lock.release()
        if main_process and not existed and out.exists() and not any(out.iterdir()):
            out.rmdir()
        clear_stop()
        if isinstance(e, (Interrupted, KeyboardInterrupt)):
            raise Interrupted(f"interrupted: checkpoints are saved under {out}; continue with: {command} --resume") from None
        raise


def check_finite(obj: Any, where: str = "results") -> None:
    """Raise :class:`NonFiniteError` naming the first NaN/inf number found in a nested results structure."""
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        if not math.isfinite(obj):
            raise NonFiniteError(f"{where} is {obj}: the run diverged; lower the learning rate or clip gradients "
                                 f"(no results written)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{where}[{i}]")


def per_run(runs: Sequence[Any], value: str = "seconds", key: str = "model") -> Dict[str, Any]:
    """``{"<key>/seed<k>": run[value]}`` over a grid's runs (the per-run entries of ``timing.json``); runs
    without ``value`` are left out."""
    return {f"{r[key]}/seed{r['seed']}": r[value] for r in runs if value in r}


def _wall_line(wall: float, cfg: Any) -> str:
    """The report's wall-time line. With ``--resume`` it is this invocation's time only: runs that had finished
    were reused, not retrained, so the line says so instead of passing a few seconds off as the run's cost."""
    line = f"Wall time: {wall:.0f} s"
    if cfg.resume:
        line += " (this invocation only, a resumed one: runs that had finished earlier were reused, not retrained)"
    return line


def write_report(out: Path, cfg: Any, results: dict, wall: float, title: str, command: str, table: str,
                 extra: str = "", figures: Sequence[Optional[Path]] = (), timing: Optional[dict] = None) -> None:
    """Finish a harness run: check every number is finite, then write ``results.json`` (``results`` plus
    ``_meta.config``, the options that define the run), ``results.md`` (title, the command that reproduces
    it, wall time, ``table``, ``extra``) and ``timing.json`` (wall and per-run seconds), atomically; print
    the table and what was written; release the output folder's lock."""
    if dist_utils.world_size() > 1 and not dist_utils.is_main():  # pragma: no cover - run_grid exits these ranks
        return
    try:
        check_finite(results)
        results["_meta"] = {"config": config_to_dict(cfg, include_run_control=False)}
        write_json(out / "results.json", results)
        write_json(out / "timing.json", {"wall_seconds": wall, **(timing or {})})
        write_text(out / "results.md", f"# {title}\n\nCommand: `{command}`  \n{_wall_line(wall, cfg)}\n\n{table}{extra}")
    finally:
        RunLock(out).release()
    print("\n" + table)
    written = [out / "results.md", out / "results.json", *(f for f in figures if f)]
    print(f"wall time {wall:.0f} s; wrote {', '.join(map(str, written))}")
