"""Data-parallel training under ``torchrun``: every supervised harness runs unchanged on N processes.

    torchrun --nproc-per-node 2 -m tasks.copying --steps 2000        # 2 CPU processes (gloo) or 2 GPUs (nccl)

What :func:`zoo.engine.fit` does when ``WORLD_SIZE > 1``:

* every process draws the same **global** batch from the same stream (same seed, same position) and trains on
  its contiguous shard ``batch[rank * B/N : (rank + 1) * B/N]`` (the global batch must divide by ``N``);
* after ``backward`` the gradients are averaged over processes (one ``all_reduce`` per ~25 MB bucket of
  flattened gradients). This is what ``DistributedDataParallel`` computes; it is done explicitly because a
  ``step_fn`` may call any submodule of the model (``forward_features``, taps, a teacher), which would bypass
  a DDP wrapper's ``forward`` and silently skip the synchronisation. With mean-reduced losses and equal
  shards the averaged gradient is the gradient of the global batch, so an N-process run equals the
  1-process run with the same global batch up to floating-point summation order;
* parameters are broadcast from rank 0 at the start (they are equal anyway: same seed);
* the logged training metrics are averaged over processes; evaluation runs on every process (identical
  weights, identical results, no broadcast needed);
* only rank 0 writes: ``metrics.csv``, checkpoints, ``config.json``, the lock, results and plots. A resumed
  run loads the same checkpoint on every rank, so stream positions and RNG states agree.

BatchNorm statistics are per process, as with ``DistributedDataParallel`` (convert to ``SyncBatchNorm`` on
GPUs if you need global statistics); a method whose randomness is drawn per batch element (mixup's
permutation) permutes within each shard.
"""
from __future__ import annotations

import os
from typing import Any, List

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["world_size", "rank", "is_main", "init_from_env", "shard", "average_gradients", "broadcast_parameters",
           "average_metrics", "barrier", "local_device"]

_BUCKET_BYTES = 25 * 1024 * 1024


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on the process that writes files (rank 0, or the only process)."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun on GPUs each process takes ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_from_env(device: torch.device) -> bool:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...), with
    NCCL on GPUs and gloo on CPUs. Returns whether training is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_device(device))
        dist.init_process_group(backend=backend)
    return True


def shard(batch: Any, index: int, count: int) -> Any:
    """This process's contiguous share of every tensor in a (nested) batch, along dim 0."""
    if torch.is_tensor(batch):
        if batch.dim() == 0:
            return batch
        n = batch.shape[0]
        if n % count:
            raise ValueError(f"the global batch of {n} does not divide over {count} processes; choose a batch size "
                             f"that is a multiple of {count}")
        size = n // count
        return batch[index * size:(index + 1) * size]
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard(b, index, count) for b in batch)
    if isinstance(batch, dict):
        return {k: shard(v, index, count) for k, v in batch.items()}
    return batch


def _buckets(tensors: List[torch.Tensor]) -> List[List[torch.Tensor]]:
    out: List[List[torch.Tensor]] = [[]]
    size = 0
    for t in tensors:
        if out[-1] and (size + t.numel() * t.element_size() > _BUCKET_BYTES or t.dtype != out[-1][0].dtype):
            out.append([])
            size = 0
        out[-1].append(t)
        size += t.numel() * t.element_size()
    return [b for b in out if b]


def average_gradients(model: nn.Module) -> None:
    """Average every parameter's gradient over the processes (missing gradients count as zeros)."""
    n = world_size()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets([p.grad for p in params]):               # type: ignore[misc]
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= n
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_parameters(model: nn.Module) -> None:
    """Make every process start from rank 0's parameters and buffers."""
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def average_metrics(metrics: dict) -> dict:
    """The mean of each float metric over the processes."""
    if not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return {k: float(v) / world_size() for k, v in zip(keys, values)}


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
