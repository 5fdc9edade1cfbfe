"""CPU memory: keep freed pages in the process, so large tensors stop page-faulting in every step.

glibc's ``malloc`` serves large blocks with ``mmap`` (and gives them back with ``munmap`` when freed) and
returns freed memory at the top of its heap to the system (``trim``). Its thresholds adapt, but never
above 32 MiB for ``mmap`` and 64 MiB for trimming. A training step that frees more than that between two
steps (a network whose activations and their gradients swing by hundreds of MiB, e.g. a 2-pass
``nfm_preactresnet18`` at batch 64: 1.5 GiB saved for backward) gets fresh pages from the kernel for
every large tensor in every step: each 4 KiB page costs a page fault and a zero fill before the first
write. Measured here (``benchmarks/cpu_allocator.py``, medians, fresh processes): 120,000-140,000 page
faults and 1.0-1.1 s of system time per training step of that model, about 40,000 and 0.15 s for the plain
``preactresnet18``; retained, 0-3 faults per step for both.

:func:`retain_freed_memory` switches both off for the process (``mallopt(M_MMAP_MAX, 0)``: no ``mmap``
for large blocks; ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``, the largest value it takes: trim only when
more than 2 GiB at the top of the heap are free), so freed memory is reused from the
second step on, the way PyTorch's CUDA caching allocator keeps GPU memory. The cost: the process keeps its
peak memory until it exits (as it would with jemalloc or tcmalloc tuned for speed). It is process-wide
and cannot be undone (glibc stops adapting its thresholds once one is set). Elsewhere than Linux with
glibc it does nothing and returns ``False``.

:func:`zoo.engine.fit` calls it when it trains on the CPU (``retain_cpu_memory=True``, the default).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Optional, Union

import torch

__all__ = ["retain_freed_memory", "memory_retained"]

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_MAX = 2 ** 31 - 1                                               # mallopt takes an int

_retained = False


def _libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version                                     # glibc only (musl has no mallopt knobs)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory(device: Union[str, torch.device, None] = None) -> bool:
    """Keep freed CPU memory in this process (no ``mmap`` for large blocks, no trimming).

    Idempotent and process-wide. ``device``: the device the caller trains on; anything but the CPU changes
    nothing (GPU tensors do not go through ``malloc``). Returns whether the setting is in effect: ``False``
    where it is not supported (not glibc) or was not asked for (then nothing changed).
    """
    global _retained
    if _retained or (device is not None and torch.device(device).type != "cpu"):
        return _retained
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_MAX) == 1
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and ok
    _retained = ok
    return ok


def memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` has taken effect in this process."""
    return _retained
