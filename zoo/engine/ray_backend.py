"""Run a harness's grid of jobs (models x seeds) on a Ray cluster: ``--backend ray [--ray-address auto]``.

Each job is one Ray task holding ``--threads`` CPUs (and a GPU when the run's device is CUDA). Outputs go
to ``--out`` as with the local pool, so on a multi-machine cluster ``--out`` must be on storage every node
sees (NFS, a mounted bucket). Without an address a local Ray instance is started for the run and shut down
after it. Interrupting the driver cancels the tasks (Ray delivers the interrupt to each task, whose
:func:`zoo.engine.fit` saves a checkpoint); rerun with ``--resume``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, List, Sequence

from .errors import Interrupted, RunError

__all__ = ["run_jobs_ray"]


def _ray_job(fn: Callable[..., Any], threads: int, cwd: str, job: tuple) -> Any:
    import torch

    os.chdir(cwd)                                           # relative --out paths mean the driver's folder
    torch.set_num_threads(threads)
    return fn(*job)


def run_jobs_ray(fn: Callable[..., Any], jobs: Sequence[tuple], threads: int = 1, address: str = "",
                 gpus_per_job: float = 0.0) -> List[Any]:
    """``[fn(*job) for job in jobs]`` as Ray tasks; results keep the order of ``jobs``."""
    try:
        import ray
    except ImportError:
        raise RunError("--backend ray needs Ray: pip install 'modular-zoo[ray]' (or pip install ray)") from None
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address or None, include_dashboard=False, logging_level=logging.ERROR,
                     configure_logging=True, log_to_driver=True)
        except (ConnectionError, RuntimeError) as e:
            raise RunError(f"cannot reach a Ray cluster at {address or 'a new local instance'!r}: "
                           f"{str(e).splitlines()[0]}") from None
        started = True
    remote = ray.remote(num_cpus=threads, num_gpus=gpus_per_job)(_ray_job)
    refs = [remote.remote(fn, threads, os.getcwd(), job) for job in jobs]
    try:
        return ray.get(refs)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        raise Interrupted("interrupted") from None
    except ray.exceptions.RayTaskError as e:                # re-raise the job's own error (a RunError, ...)
        cause = e.as_instanceof_cause()
        raise (cause.cause if hasattr(cause, "cause") and isinstance(cause.cause, BaseException) else cause) from None
    finally:
        if started:
            ray.shutdown()
