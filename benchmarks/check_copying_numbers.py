"""Fail when the copying numbers documented in ``docs/`` drift from what the code gives (issue 17).

    python benchmarks/check_copying_numbers.py                          # re-run the documented default command
    python benchmarks/check_copying_numbers.py --results runs/copying/results.json   # check a finished run

Every documented table is a markdown table preceded, in its section, by the ```bash block holding the command
that produced it: ``--table default`` is the first table of ``docs/results.md#copying``. The script runs that command (with ``--out`` in a temporary folder,
one thread per process) or reads ``--results``, and compares every ``acc recall`` and ``CE recall`` mean of
the table with the run's; it exits 1 listing the numbers that differ by more than ``--tol``. Runs are
reproducible only at the same thread count and on the same kind of CPU, so the tolerance is not zero.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"default": (ROOT / "docs" / "results.md", "## Copying")}


def documented(table: str) -> Tuple[str, Dict[Tuple[str, str], Dict[str, float]]]:
    """The command and ``{(model, T): {"acc_recall": ., "ce_recall": .}}`` of a documented table."""
    path, heading = SOURCES[table]
    text = path.read_text()
    start = text.index(heading)
    section = text[start:text.find("\n## ", start + len(heading))]
    command = re.search(r"```bash\n(python -m tasks\.copying[^\n]*)\n", section).group(1).split("#")[0].strip()
    lines = section.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[first:]))   # the first table only
    header = [h.strip() for h in rows[0].strip("|").split("|")]
    col = {name: header.index(name) for name in ("model", "T", "CE recall", "acc recall")}
    values = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        model, T = cells[col["model"]], cells[col["T"]].split()[0]
        if model == "chance":
            continue
        mean = lambda s: float(s.split("±")[0])  # noqa: E731
        values[(model, T)] = {"acc_recall": mean(cells[col["acc recall"]]), "ce_recall": mean(cells[col["CE recall"]])}
    return command, values


def run(command: str) -> dict:
    """Run a documented ``python -m tasks.copying`` command in this process, output in a temporary folder."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from tasks import copying

    argv = shlex.split(command)[3:]
    with tempfile.TemporaryDirectory() as tmp:
        return copying.main(argv + ["--out", tmp, "--no-progress"])


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", choices=sorted(SOURCES), default="default")
    p.add_argument("--results", help="results.json of a finished run of the documented command")
    p.add_argument("--tol", type=float, default=0.02, help="largest allowed difference of a mean")
    a = p.parse_args(argv)
    command, expected = documented(a.table)
    results = json.loads(Path(a.results).read_text()) if a.results else run(command)
    drifted = []
    for (model, T), metrics in expected.items():
        got = results[model][T]
        for name, value in metrics.items():
            if abs(got[name] - value) > a.tol:
                drifted.append(f"{model} T={T} {name}: documented {value:.3f}, now {got[name]:.3f}")
    print(f"{len(expected)} documented rows of `{command}` checked, tolerance {a.tol}")
    if drifted:
        print("DRIFTED (regenerate the table with the command above):\n  " + "\n  ".join(drifted))
        return 1
    print("ok: the documented numbers match the code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
