"""The one training loop every harness uses (copying, sequential MNIST, classification, ...).

CleanRL-style: a plain step loop over a stream of batches, with the per-task logic in a ``step_fn``.
It owns what every harness needs: device placement, gradient clipping, a progress bar, CSV/TensorBoard
logging, periodic evaluation, atomic checkpoints, exact resuming, interrupts and non-finite checks.

Exact resume: a checkpoint holds the model, optimizer, scheduler, ``extra_state``, every RNG (torch CPU
and CUDA, NumPy, Python), the data stream's position (:mod:`zoo.engine.streams`), the partial averages of
the metrics being logged and the evaluation history. Killing a run at any point (SIGINT, SIGTERM, SIGKILL)
and resuming it gives bit-identical weights on the CPU for the same thread count.
"""
from __future__ import annotations

import math
import random
import signal
import statistics
import threading
import time
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as dist_utils
from .checkpoint import check_run_options, clean_stale_tmp, load_checkpoint, save_checkpoint
from .errors import CheckpointError, Interrupted, RunError
from .logger import MetricLogger
from .memory import retain_freed_memory
from .streams import restore_stream, stream_state

__all__ = ["fit", "FitResult", "to_device", "cycle", "NonFiniteError", "stop_requested", "request_stop",
           "stop_handlers", "CHECKPOINT_FORMAT", "PRECISIONS", "autocast_context", "native_bf16"]

StepFn = Callable[[nn.Module, Any], Tuple[torch.Tensor, Dict[str, float]]]

#: written into every checkpoint; a file without it is not one of ours
CHECKPOINT_FORMAT = "zoo.engine.fit/2"
#: ``fit(skip_spikes=...)``: gradient norms in the running median, and steps before any step may be skipped
SPIKE_WINDOW, SPIKE_WARMUP = 100, 20
#: ``fit(precision=...)``: ``"fp32"`` (no autocast) or ``"bf16"`` (``torch.autocast`` to bfloat16)
PRECISIONS = ("fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matmuls and convolutions natively: a CUDA GPU that supports bf16,
    or an x86 CPU with AVX512-BF16 or AMX. Elsewhere bf16 autocast is emulated, and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":                   # x86 instruction checks (not oneDNN's, which accepts plain AVX-512)
        checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(bool(check()) for check in checks if check is not None)
    return False


def autocast_context(precision: str, device: torch.device):
    """The context a training step's forward and loss run in: ``torch.autocast(device.type, torch.bfloat16)``
    for ``"bf16"`` (matmuls and convolutions in bfloat16, reductions and losses in float32; the weights, their
    gradients and the optimizer stay float32), nothing for ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; allowed values: "
                         f"{', '.join(map(repr, PRECISIONS))}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class NonFiniteError(RunError, FloatingPointError):
    """A loss, weight or reported metric became NaN or infinite: the run diverged, nothing was reported."""


# --- interrupts ------------------------------------------------------------------------------------------
_STOP = threading.Event()
#: set in :mod:`zoo.engine.jobs` worker processes: there a stop request stays set, so jobs queued behind the
#: interrupted one stop too; in any other process it is cleared once a run has stopped for it
IN_WORKER = {"value": False}


def request_stop(*_: Any) -> None:
    """Ask every running :func:`fit` in this process to checkpoint and stop after its current step
    (the SIGINT/SIGTERM handler)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    """Forget a stop request once the run it stopped has saved (fit, the job runner, rl.train)."""
    _STOP.clear()


@contextmanager
def stop_handlers():
    """While active, SIGINT and SIGTERM set the stop flag instead of raising (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, request_stop)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- helpers ---------------------------------------------------------------------------------------------
def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (also nested in tuples, lists and dicts) to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def cycle(loader: Any) -> Iterator:
    """Repeat a finite loader forever (a fresh pass, e.g. a new shuffle, each time). Resuming replays the
    batches already consumed; prefer a :mod:`zoo.engine.streams` stream, whose position is saved."""
    while True:
        yield from loader


def _rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _first_non_finite(model: nn.Module) -> Optional[str]:
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return name
    return None


@dataclass
class FitResult:
    steps: int
    seconds: float
    last_metrics: Dict[str, float]
    eval_history: List[Dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator,
    step_fn: StepFn,
    *,
    steps: int,
    device: torch.device = torch.device("cpu"),
    out_dir: Optional[Path] = None,
    clip_grad: Optional[float] = None,
    scheduler: Optional[Any] = None,
    log_every: int = 50,
    eval_fn: Optional[Callable[[nn.Module], Dict[str, float]]] = None,
    eval_every: int = 0,
    ckpt_every: int = 0,
    resume: bool = False,
    callbacks: Tuple[Callable[[int, nn.Module], None], ...] = (),
    extra_state: Optional[Dict[str, Any]] = None,
    run_meta: Optional[Dict[str, Any]] = None,
    divergence: Optional[float] = 1e6,
    skip_spikes: Optional[float] = None,
    desc: str = "train",
    progress: bool = True,
    position: int = 0,
    tensorboard: bool = False,
    retain_cpu_memory: bool = True,
    precision: str = "fp32",
) -> FitResult:
    """Train ``model`` for ``steps`` optimizer steps.

    Args:
        batches: an endless stream of batches; a :mod:`zoo.engine.streams` stream (its position is saved
            in checkpoints) or any deterministic iterator (replayed on resume; wrap a finite ``DataLoader``
            with :func:`cycle`).
        step_fn: ``step_fn(model, batch) -> (loss, metrics)``; the loop does backward, clipping and the
            optimizer step. ``metrics`` are floats averaged over ``log_every`` steps.
        out_dir: where ``metrics.csv`` and ``checkpoint.pt`` go (``None``: no files).
        eval_fn: ``eval_fn(model) -> metrics`` run every ``eval_every`` steps and at the end (the model is
            put in eval mode and back; metrics must be finite).
        ckpt_every: save an atomic checkpoint this often (always at the end, and on SIGINT/SIGTERM).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists. A finished run is not trained or
            evaluated again: its saved history and final metrics are returned.
        callbacks: called as ``cb(step, model)`` after every optimizer step (EMA teachers, schedules).
        extra_state: objects with ``state_dict`` saved in and restored from checkpoints (e.g. a teacher).
        run_meta: what defines the run (the harness's options, model, seed); saved in checkpoints, and a
            checkpoint written under other options is refused on resume (:class:`CheckpointError`).
        divergence: a finite loss above ``divergence * max(|first loss|, 1)`` also counts as diverged (a
            learning rate of 1e30 gives finite losses of 1e31 and garbage results); ``None`` disables it.
        skip_spikes: skip the optimizer step (the schedule still advances) when the gradient norm, before
            clipping, exceeds ``skip_spikes`` times the median of the last :data:`SPIKE_WINDOW` steps' norms (or is
            not finite); the first :data:`SPIKE_WARMUP` steps are never skipped. A skipped step's norm enters the
            window too, so a lasting rise of the norm lifts the median and training goes on. Why:
            a rare gradient spike, even clipped to ``clip_grad``, points where Adam's second moment has seen
            little gradient, so the update along it is up to ``~3 lr`` per coordinate and the first moment keeps
            pushing that way for ~10 more steps; skipping the spike costs one step. Logged as
            ``train/skipped`` (fraction of steps skipped); the window is saved in checkpoints. ``None``: off.
        retain_cpu_memory: on the CPU, keep freed memory in the process (:func:`zoo.engine.retain_freed_memory`,
            process-wide): glibc's default gives the pages of large tensors back and faults them in again every
            step (1.0-1.1 s of system time per 2-pass ``nfm_preactresnet18`` step here,
            ``benchmarks/cpu_allocator.py``); the process keeps its peak memory.
        precision: ``"fp32"`` (default) or ``"bf16"``: ``step_fn`` runs under bfloat16 autocast
            (:func:`autocast_context`; the backward, clipping, optimizer and ``eval_fn`` stay float32). Faster
            where bf16 is native (CUDA GPUs with bf16, CPUs with AMX / AVX512-BF16; :func:`native_bf16`),
            slower where it is emulated; results differ from fp32 by bf16 rounding (``docs/engine.md``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the same call trains data-parallel: each process takes its shard
    of every global batch, gradients are averaged, rank 0 alone writes files (:mod:`zoo.engine.distributed`).

    Raises:
        NonFiniteError: the loss, a weight or an evaluation metric became NaN/inf (one-line message).
        CheckpointError: the checkpoint to resume from is unreadable or belongs to another run.
        Interrupted: SIGINT/SIGTERM arrived; a checkpoint of the last finished step was saved first.
    """
    amp = autocast_context(precision, device)                   # validates precision before any work
    if precision == "bf16" and not native_bf16(device):
        warnings.warn(f"precision='bf16' on {device}: this device has no native bfloat16 (AMX / AVX512-BF16 on a "
                      f"CPU), so autocast emulates it and training is slower than fp32", RuntimeWarning, stacklevel=2)
    distributed = dist_utils.init_from_env(device)
    world, rank = (dist_utils.world_size(), dist_utils.rank()) if distributed else (1, 0)
    main_process = rank == 0
    if retain_cpu_memory:
        retain_freed_memory(device)
    model.to(device).train()
    if distributed:
        dist_utils.broadcast_parameters(model)
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt = out_dir / "checkpoint.pt" if out_dir is not None else None
    if out_dir is not None and out_dir.exists() and main_process:
        clean_stale_tmp(out_dir)
    extra_state = extra_state or {}
    start, seconds_before = 0, 0.0
    history: List[Dict[str, float]] = []
    running: Dict[str, float] = {}
    count, last = 0, {}
    first_loss: Optional[float] = None
    norms: Deque[float] = deque(maxlen=SPIKE_WINDOW)       # the last steps' gradient norms (skip_spikes)
    if resume and ckpt is not None and ckpt.exists():
        payload = load_checkpoint(ckpt, map_location=device)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{ckpt} was not written by this version of zoo.engine.fit (format "
                                  f"{payload.get('format')!r}); delete it or start without --resume")
        if run_meta is not None and payload.get("meta") is not None:
            check_run_options(ckpt, payload["meta"], run_meta)
        try:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            for key, obj in extra_state.items():
                obj.load_state_dict(payload["extra"][key])
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:300]
            raise CheckpointError(f"{ckpt} does not fit this model/optimizer ({first}); it belongs to another "
                                  f"architecture: delete it or use another --out") from None
        if scheduler is not None and payload.get("scheduler") is not None:
            scheduler.load_state_dict(payload["scheduler"])
        start, seconds_before = int(payload["step"]), float(payload.get("seconds", 0.0))
        history, running, count, last = (list(payload["history"]), dict(payload["running"]),
                                         int(payload["count"]), dict(payload["last"]))
        first_loss = payload.get("first_loss")
        norms.extend(payload.get("grad_norms") or [])
        _set_rng_state(payload["rng"])
        restore_stream(batches, payload.get("data"), start)
        if payload.get("finished"):
            return FitResult(steps=start, seconds=seconds_before, last_metrics=last, eval_history=history,
                             resumed_from=start)
    logger = (MetricLogger(out_dir, tensorboard=tensorboard, resume_step=start if resume else None)
              if out_dir is not None and main_process else None)
    t0 = time.perf_counter()

    def checkpoint(step: int, finished: bool = False) -> None:
        if ckpt is None:
            return
        bad = _first_non_finite(model)
        if bad is not None:
            raise NonFiniteError(f"weight {bad!r} became non-finite by step {step}: the run diverged; lower the "
                                 f"learning rate or clip gradients (no checkpoint or results written)")
        if not main_process:
            return
        save_checkpoint(
            ckpt, format=CHECKPOINT_FORMAT, model=model, optimizer=optimizer,
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            extra={k: v.state_dict() for k, v in extra_state.items()}, step=step, finished=finished,
            seconds=seconds_before + time.perf_counter() - t0, rng=_rng_state(), data=stream_state(batches),
            running=running, count=count, last=last, history=history, meta=run_meta, first_loss=first_loss,
            grad_norms=list(norms))

    def evaluate(step: int) -> Dict[str, float]:
        model.eval()
        with torch.no_grad():
            metrics = eval_fn(model)  # type: ignore[misc]
        model.train()
        bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
        if bad:
            raise NonFiniteError(f"evaluation at step {step} gave non-finite {bad}: the run diverged; lower the "
                                 f"learning rate or clip gradients (no results written)")
        if logger is not None:
            logger.log(step, metrics, prefix="eval")
        history.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
        return metrics

    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, disable=not progress,
               dynamic_ncols=True, leave=False, position=position)
    with stop_handlers():
        done = start
        for step in bar:
            if stop_requested() and not distributed:
                break
            batch = to_device(next(batches), device)
            if distributed:
                batch = dist_utils.shard(batch, rank, world)
            with amp:
                loss, metrics = step_fn(model, batch)
            value = float(loss.detach())
            if distributed:                          # every process sees the global loss and any stop request
                shared = dist_utils.average_metrics({"loss": value, "stop": float(stop_requested())})
                value = shared["loss"]
                if shared["stop"] > 0:
                    request_stop()
                    break
            if not math.isfinite(value):
                raise NonFiniteError(f"loss became {value} at step {step + 1}: the run diverged; lower the "
                                     f"learning rate or clip gradients (no results written)")
            if first_loss is None:
                first_loss = value
            elif divergence is not None and value > divergence * max(abs(first_loss), 1.0):
                raise NonFiniteError(f"loss became {value:.3g} at step {step + 1}, over {divergence:g} times its first "
                                     f"value {first_loss:.3g}: the run diverged; lower the learning rate or clip "
                                     f"gradients (no results written)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if distributed:
                dist_utils.average_gradients(model)
            skip = False
            if clip_grad or skip_spikes:
                norm = float(nn.utils.clip_grad_norm_(model.parameters(), clip_grad or math.inf))
                metrics = {**metrics, "grad_norm": norm}
                if skip_spikes:
                    limit = skip_spikes * statistics.median(norms) if len(norms) >= SPIKE_WARMUP else math.inf
                    skip = not norm <= limit                 # NaN and inf norms are spikes too
                    if math.isfinite(norm):
                        norms.append(norm)
                    metrics = {**metrics, "skipped": float(skip)}
            if not skip:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            for cb in callbacks:
                cb(step + 1, model)
            metrics = {"loss": value, **metrics}
            for k, v in metrics.items():
                running[k] = running.get(k, 0.0) + float(v)
            count += 1
            done = step + 1
            if done % log_every == 0 or done == steps:
                last = {k: v / count for k, v in running.items()}
                if distributed:
                    last = dist_utils.average_metrics(last)
                running, count = {}, 0
                if logger is not None:
                    logger.log(done, {**last, "lr": optimizer.param_groups[0]["lr"]}, prefix="train")
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(last.items())[:3]})
            if eval_fn is not None and eval_every and done % eval_every == 0 and done != steps:
                evaluate(done)
            if ckpt_every and done % ckpt_every == 0 and done != steps:
                checkpoint(done)
        bar.close()
        if stop_requested() and done < steps:
            if done > start:
                checkpoint(done)
            if logger is not None:
                logger.close()
            if not IN_WORKER["value"]:
                clear_stop()
            where = f" (checkpoint {ckpt})" if ckpt is not None else " (no out_dir: nothing saved)"
            raise Interrupted(f"interrupted at step {done} of {steps}{where}", step=done)
    bad = _first_non_finite(model)
    if bad is not None:
        raise NonFiniteError(f"weight {bad!r} became non-finite during training: the run diverged; lower the "
                             f"learning rate or clip gradients (no results written)")
    if eval_fn is not None:
        last = {**last, **{f"eval/{k}": v for k, v in evaluate(steps).items()}}
    checkpoint(steps, finished=True)
    if logger is not None:
        logger.close()
    return FitResult(steps=steps, seconds=seconds_before + time.perf_counter() - t0, last_metrics=last,
                     eval_history=history, resumed_from=start)


SCHEDULES = ("cosine", "constant")


def lr_schedule(optimizer: torch.optim.Optimizer, name: str, steps: int, warmup: int = 0
                ) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """The learning-rate schedule of a harness (``--schedule``), stepped once per optimizer step by :func:`fit`.

    ``"cosine"``: ``lr_t = lr * (1 + cos(pi * min(t, steps) / steps)) / 2``, decaying to 0 at ``steps`` (the
    weights settle at the end, so batch-norm running statistics match the final weights at test time);
    ``"constant"``: ``lr`` throughout. ``warmup`` > 0 first ramps linearly, ``lr_t = lr * (t + 1) / warmup``
    for ``t < warmup``; the cosine then runs over the remaining ``steps - warmup`` steps. Returns ``None``
    (no scheduler) for a constant rate without warm-up.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule {name!r} is not one of {', '.join(SCHEDULES)}")
    if warmup < 0 or warmup >= max(steps, 1):
        raise ValueError(f"warmup must be >= 0 and below steps={steps}, got {warmup}")
    if name == "constant" and warmup == 0:
        return None

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        if name == "constant":
            return 1.0
        span = steps - warmup
        return 0.5 * (1 + math.cos(math.pi * min(t - warmup, span) / span))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
