"""Fixtures shared by the test files.

Every test process runs torch on one thread (CI: 2 cores, ``pytest -n 2``). Tiers: ``pytest -m "not slow"``
is the fast tier (under a minute); ``@pytest.mark.slow`` marks learning runs and subprocess tests, which
CI runs too. Each test has a time limit (``timeout`` in ``pyproject.toml``, pytest-timeout).

Fixtures:
    chance: accuracy of a uniform guess on the 10 digit classes (learning tests must beat ``3 * chance``).
    make_resnet: ``make_resnet(seed=0, **kw)``, timm's ``test_resnet`` for 1-channel digits, seeded.
    image_batch: ``image_batch(n=8, size=28, seed=0, unlabeled=0)``, a seeded batch dict of random images.
    digits: the embedded MNIST digits split (``zoo.data.embedded_mnist_split()``), loaded once.
    run_classify: ``run_classify(*args, out=None)``, ``tasks.classify`` quietly into ``tmp_path``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the zoo models with timm)

torch.set_num_threads(1)

CHANCE = 0.1


@pytest.fixture
def chance() -> float:
    return CHANCE


@pytest.fixture
def make_resnet() -> Callable[..., torch.nn.Module]:
    """Factory for timm's ``test_resnet`` (1 input channel, 10 classes); the same ``seed`` gives the same
    weights, so two calls build twin networks."""
    def make(seed: int = 0, **kwargs) -> torch.nn.Module:
        torch.manual_seed(seed)
        return timm.create_model("test_resnet", **{"in_chans": 1, "num_classes": 10, **kwargs})
    return make


@pytest.fixture
def image_batch() -> Callable[..., Dict[str, torch.Tensor]]:
    """Factory for a seeded batch ``{"x": (n, 1, size, size) in [0, 1), "y": (n,) labels in [0, 10)}``, plus
    ``"x_u"`` ``(unlabeled, 1, size, size)`` when ``unlabeled > 0`` (drawn in that order from one generator)."""
    def make(n: int = 8, size: int = 28, seed: int = 0, unlabeled: int = 0) -> Dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        batch = {"x": torch.rand(n, 1, size, size, generator=g), "y": torch.randint(10, (n,), generator=g)}
        if unlabeled:
            batch["x_u"] = torch.rand(unlabeled, 1, size, size, generator=g)
        return batch
    return make


@pytest.fixture(scope="session")
def digits() -> dict:
    """The embedded digits (4,000 train / 1,000 test, offline), loaded once per test process. Read-only."""
    from zoo.data import embedded_mnist_split
    return embedded_mnist_split()


@pytest.fixture
def run_classify(tmp_path) -> Callable[..., dict]:
    """Run ``python -m tasks.classify`` in-process without evaluation during training, one worker, no
    progress bars, writing into ``tmp_path`` (or ``tmp_path / out``); returns its results dict."""
    def run(*args: str, out: Optional[str] = None) -> dict:
        from tasks import classify
        folder = tmp_path / out if out else tmp_path
        return classify.main([*args, "--eval-every", "0", "--workers", "1", "--no-progress", "--out", str(folder)])
    return run
