"""zoo.engine.retain_freed_memory: freed CPU memory is reused instead of faulted in again, and fit sets it.

The setting is process-wide and irreversible, so every check runs in a fresh interpreter."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from zoo.engine.memory import _libc

glibc = pytest.mark.skipif(_libc() is None, reason="mallopt needs Linux with glibc")

# 64 MiB blocks: above glibc's largest dynamic mmap threshold (32 MiB), so by default every one is
# mmapped, touched page by page and unmapped again on free
FAULTS = """
import json, resource, sys, torch
from zoo.engine.memory import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per = []
for i in range(6):
    f0 = faults()
    x = torch.empty(16 * 2**20).fill_(1.0)        # 64 MiB, every page written
    y = torch.empty(4 * 2**20).fill_(2.0)         # 16 MiB
    del x, y
    per.append(faults() - f0)
print(json.dumps({"applied": applied, "faults": per[3:]}))
"""


def _run(code: str, *args: str) -> dict:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@glibc
@pytest.mark.slow
def test_retained_memory_is_reused_without_page_faults():
    pages = (64 + 16) * 2**20 // 4096                 # pages written per iteration
    default = _run(FAULTS, "default")
    retain = _run(FAULTS, "retain")
    assert not default["applied"] and retain["applied"]
    # glibc's default gives the 64 MiB block back and faults every page of it in again, every iteration
    assert min(default["faults"]) > pages // 8, default
    # retained: the second allocation of the same sizes reuses the pages
    assert max(retain["faults"]) < 100, retain


FIT = """
import json, sys, torch
from torch import nn
import zoo.engine as E
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
batches = E.cycle([(torch.randn(8, 4), torch.randint(2, (8,)))])
step = lambda m, b: (nn.functional.cross_entropy(m(b[0]), b[1]), {})
before = E.memory_retained()
gpu = E.retain_freed_memory("cuda:0")                  # training on a GPU: malloc is left alone
E.fit(model, opt, batches, step, steps=2, progress=False, retain_cpu_memory=sys.argv[1] == "1")
print(json.dumps({"before": before, "gpu": gpu, "after": E.memory_retained()}))
"""


@glibc
@pytest.mark.slow
def test_fit_on_cpu_retains_freed_memory_unless_told_not_to():
    assert _run(FIT, "1") == {"before": False, "gpu": False, "after": True}
    assert _run(FIT, "0") == {"before": False, "gpu": False, "after": False}


def test_retain_is_idempotent_and_reports_support():
    # in this process too: what the allocator reports is stable across calls
    from zoo.engine import memory_retained, retain_freed_memory
    first = retain_freed_memory()
    assert retain_freed_memory() == first == memory_retained()
    assert first == (_libc() is not None)
