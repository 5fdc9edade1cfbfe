"""Seeding: one call makes a run reproducible on CPU (and as far as cuDNN allows on GPU)."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "resolve_device"]


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a ``torch.Generator`` seeded the same way for
    data generation, so data order does not depend on how many random numbers the model drew."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; any torch device string is passed through. Under
    ``torchrun`` on GPUs each process gets ``cuda:LOCAL_RANK``."""
    from .distributed import local_device

    if device == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return local_device(torch.device(device))
