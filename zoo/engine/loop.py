"""The one training loop every harness uses (copying, sequential MNIST, classification, ...).

CleanRL-style: a plain step loop over an iterator of batches, with the per-task logic in a ``step_fn``.
It owns what every harness needs: device placement, gradient clipping, a progress bar, CSV/TensorBoard
logging, periodic evaluation, atomic checkpoints and resuming.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .logger import MetricLogger

__all__ = ["fit", "FitResult", "to_device", "cycle"]

StepFn = Callable[[nn.Module, Any], Tuple[torch.Tensor, Dict[str, float]]]


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (also nested in tuples, lists and dicts) to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def cycle(loader: Iterable) -> Iterator:
    """Repeat a finite loader forever (a fresh pass, e.g. a new shuffle, each time)."""
    while True:
        yield from loader


@dataclass
class FitResult:
    steps: int
    seconds: float
    last_metrics: Dict[str, float]
    eval_history: List[Dict[str, float]] = field(default_factory=list)


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
    desc: str = "train",
    progress: bool = True,
    position: int = 0,
    tensorboard: bool = False,
) -> FitResult:
    """Train ``model`` for ``steps`` optimizer steps.

    Args:
        batches: an iterator of batches (wrap a finite ``DataLoader`` with :func:`cycle`).
        step_fn: ``step_fn(model, batch) -> (loss, metrics)``; the loop does backward, clipping and the
            optimizer step. ``metrics`` are floats averaged over ``log_every`` steps.
        out_dir: where ``metrics.csv`` and ``checkpoint.pt`` go (``None``: no files).
        eval_fn: ``eval_fn(model) -> metrics`` run every ``eval_every`` steps and at the end (the model is
            put in eval mode and back).
        ckpt_every: save an atomic checkpoint this often (and always at the end when ``out_dir`` is set).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        callbacks: called as ``cb(step, model)`` after every optimizer step (EMA teachers, schedules).
        extra_state: objects with ``state_dict`` saved in and restored from checkpoints (e.g. a teacher).
    """
    model.to(device).train()
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt = out_dir / "checkpoint.pt" if out_dir is not None else None
    extra_state = extra_state or {}
    start = 0
    if resume and ckpt is not None and ckpt.exists():
        payload = load_checkpoint(ckpt, map_location=device, model=model, optimizer=optimizer, **extra_state)
        start = int(payload["step"])
        if scheduler is not None and "scheduler" in payload:
            scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["torch_rng"])
    logger = (MetricLogger(out_dir, tensorboard=tensorboard, resume_step=start if resume else None)
              if out_dir is not None else None)

    def checkpoint(step: int) -> None:
        if ckpt is not None:
            state = dict(model=model, optimizer=optimizer, step=step, torch_rng=torch.get_rng_state(), **extra_state)
            if scheduler is not None:
                state["scheduler"] = scheduler
            save_checkpoint(ckpt, **state)

    def evaluate(step: int) -> Dict[str, float]:
        model.eval()
        with torch.no_grad():
            metrics = eval_fn(model)
        model.train()
        if logger is not None:
            logger.log(step, metrics, prefix="eval")
        history.append({"step": step, **metrics})
        return metrics

    history: List[Dict[str, float]] = []
    running: Dict[str, float] = {}
    count, last = 0, {}
    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, disable=not progress,
               dynamic_ncols=True, leave=False, position=position)
    for step in bar:
        batch = to_device(next(batches), device)
        loss, metrics = step_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; lower the learning rate "
                                     f"or enable gradient clipping")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            metrics = {**metrics, "grad_norm": float(nn.utils.clip_grad_norm_(model.parameters(), clip_grad))}
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for cb in callbacks:
            cb(step + 1, model)
        metrics = {"loss": float(loss.detach()), **metrics}
        for k, v in metrics.items():
            running[k] = running.get(k, 0.0) + float(v)
        count += 1
        done = step + 1
        if done % log_every == 0 or done == steps:
            last = {k: v / count for k, v in running.items()}
            running, count = {}, 0
            if logger is not None:
                logger.log(done, {**last, "lr": optimizer.param_groups[0]["lr"]}, prefix="train")
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(last.items())[:3]})
        if eval_fn is not None and eval_every and done % eval_every == 0 and done != steps:
            evaluate(done)
        if ckpt_every and done % ckpt_every == 0:
            checkpoint(done)
    bar.close()
    if eval_fn is not None:
        last = {**last, **{f"eval/{k}": v for k, v in evaluate(steps).items()}}
    checkpoint(steps)
    if logger is not None:
        logger.close()
    return FitResult(steps=steps, seconds=time.perf_counter() - t0, last_metrics=last, eval_history=history)


