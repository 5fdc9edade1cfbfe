"""Training-step cost of the Sort-of-CLEVR and multi-digit models: each NFM configuration against its CNN.

    python benchmarks/nfm_task_steps.py                         # both tasks, batch 32, 1 thread, CPU seconds
    python benchmarks/nfm_task_steps.py --task clevr --batch 64 --clock wall --repeats 7

One training step (forward, loss, backward, Adam step) of every configuration, interleaved round by round
in this process on the same batch; prints the median per step and the ratio to the plain CNN of the task.
``--clock cpu`` (default) counts this process's CPU seconds (``time.process_time``), which other jobs on a
loaded machine inflate much less than wall time; with 1 thread it approximates the wall time on an idle core.
The configurations are the harnesses' defaults (``tasks.sort_of_clevr.CPU_KWARGS``,
``tasks.multi_digit.CPU_KWARGS``) and the thesis placement (an NFM block before every module).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

from tasks import multi_digit, sort_of_clevr  # noqa: E402
from zoo.engine import markdown_table  # noqa: E402


def configs(task: str):
    """``(label, model name, kwargs)`` per configuration; the first is the baseline."""
    if task == "clevr":
        cpu = sort_of_clevr.CPU_KWARGS
        nfm = {**cpu["*"], **cpu["nfm_sortclevr_cnn"]}
        return [("sortclevr_cnn", "sortclevr_cnn", dict(cpu["*"])),
                ("nfm_sortclevr_cnn (harness default)", "nfm_sortclevr_cnn", nfm),
                ("nfm_sortclevr_cnn (thesis placement)", "nfm_sortclevr_cnn", dict(cpu["*"])),
                ("sortclevr_rn", "sortclevr_rn", dict(cpu["*"]))]
    cpu = multi_digit.CPU_KWARGS
    body = cpu["mnist_convnet"]
    return [("mnist_convnet 4 x stride 2 (harness default)", "mnist_convnet", dict(body)),
            ("nfm_mnist_convnet (harness default)", "nfm_mnist_convnet", cpu["nfm_mnist_convnet"]),
            ("nfm_mnist_convnet (thesis placement)", "nfm_mnist_convnet", dict(body)),
            ("mnist_convnet (registry default, stride 1 stem)", "mnist_convnet", {"widths": [16, 32, 64]}),
            ("nfm_mnist_convnet (registry default)", "nfm_mnist_convnet", {"widths": [16, 32, 64]})]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["clevr", "digits", "both"], default="both")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    for task in (["clevr", "digits"] if a.task == "both" else [a.task]):
        b = a.batch
        if task == "clevr":
            x, q, y = torch.rand(b, 3, 75, 75), sort_of_clevr.soc.question_vectors(
                torch.randint(6, (b,)), torch.randint(2, (b,)), torch.randint(3, (b,))), torch.randint(10, (b,))
            loss_fn = lambda m: F.cross_entropy(m(x, q), y)  # noqa: E731
            build = lambda n, kw: sort_of_clevr.build_model(n, kw)  # noqa: E731
        else:
            x, y = torch.rand(b, 1, 64, 64), (torch.rand(b, 10) > 0.7).float()
            loss_fn = lambda m: F.binary_cross_entropy_with_logits(m(x), y)  # noqa: E731
            build = lambda n, kw: multi_digit.build_model(n, kw)  # noqa: E731
        runs = []
        for label, name, kw in configs(task):
            m = build(name, kw).train()
            runs.append((label, m, torch.optim.Adam(m.parameters(), 1e-3), []))
        for r in range(a.repeats + 1):
            for label, m, opt, times in runs:
                t0 = clock()
                loss = loss_fn(m)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if r:
                    times.append(clock() - t0)
        base = statistics.median(runs[0][3])
        rows = [[label, f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}",
                 f"{1000 * statistics.median(t):.0f}", f"{statistics.median(t) / base:.1f}x"]
                for label, m, _, t in runs]
        print(f"\n{task}: batch {b}, {a.threads} thread(s), median {a.clock} ms per training step of {a.repeats}")
        print(markdown_table(["model", "params (M)", f"{a.clock} ms / step", "x baseline"], rows))


if __name__ == "__main__":
    main()
