"""Mutation score of a package part against the tests that cover it (mutmut 3.x).

    python benchmarks/mutation.py methods                  # zoo/methods against its test files
    python benchmarks/mutation.py layers                   # zoo/layers against test_rim/test_nfm/...
    python benchmarks/mutation.py methods --ref 7993084    # the package and its tests at a git revision

Each run copies the tree (the working tree, or ``git archive`` of ``--ref``) into ``--workdir`` (default
``/tmp/zoo-mutation/<target>-<ref>``), writes a ``[mutmut]`` section into its ``setup.cfg`` and runs
``mutmut run`` there, so the checkout is never touched. mutmut records which tests reach each function and
runs only those for each mutant, restricted to the target's test files (``TARGETS``, or ``--tests``) and
to the fast tier (``-m "not slow"``, plus ``--deselect`` of the tests marked slow in *this* checkout, so a
revision from before the markers is scored on the same tier; ``--slow`` includes them). Workers start from
a fork server (torch is not fork-safe once threads exist), one torch thread each, under ``nice``.

Writes ``summary.json`` (counts and score) and ``survivors.md`` (the diff of every mutant no test killed)
into the work directory and prints the summary. Score = killed / (total - skipped), mutmut's definition
with timeouts counted as killed. mutmut does not mutate decorated functions (other than ``@staticmethod``
/ ``@classmethod``) nor default arguments that are not simple literals; they are absent from the counts.

A rerun in the same work directory resumes (mutmut caches results); ``--fresh`` starts over.

``--sample N`` scores a random sample of ``N`` mutants (seeded by ``--sample-seed``) instead of all of them,
for parts whose tests are too slow to run every mutant (``zoo/layers``: about 4,200 mutants at several
seconds each on 2 cores). The score is then an estimate, printed with its 95 % Wilson interval, and
``survivors.md`` lists the sample's survivors.

    python benchmarks/mutation.py layers --sample 300 --max-children 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {
    "methods": {
        "mutate": ["zoo/methods/*.py"],
        "tests": ["tests/test_methods_base.py", "tests/test_mixup.py", "tests/test_ict.py", "tests/test_irl.py",
                  "tests/test_dai.py", "tests/test_lipschitz.py", "tests/test_semantic_noise.py",
                  "tests/test_properties.py"],
    },
    "layers": {
        "mutate": ["zoo/layers/*.py"],
        "tests": ["tests/test_rim.py", "tests/test_rim_faithful.py", "tests/test_rim_mechanisms.py",
                  "tests/test_nfm.py", "tests/test_nfm_inputs.py", "tests/test_nfm_options.py",
                  "tests/test_properties.py", "tests/test_models.py", "tests/test_taps.py"],
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=sorted(TARGETS), help="package part to mutate")
    p.add_argument("--ref", default="", help="git revision to score (default: the working tree)")
    p.add_argument("--tests", nargs="+", default=None, help="test files (default: the target's)")
    p.add_argument("--slow", action="store_true", help="include tests marked slow")
    p.add_argument("--max-children", type=int, default=1, help="parallel mutant workers (default 1)")
    p.add_argument("--workdir", default="", help="where to copy the tree and run (default /tmp/zoo-mutation/...)")
    p.add_argument("--fresh", action="store_true", help="delete the work directory first")
    p.add_argument("--nice", type=int, default=10, help="niceness of the mutmut processes (default 10)")
    p.add_argument("--sample", type=int, default=0, help="score a random sample of this many mutants (0: all)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the --sample draw")
    a = p.parse_args(argv)
    if a.sample < 0 or a.max_children < 1:
        p.error("--sample must be >= 0 and --max-children >= 1")
    return a


def statuses(work: Path, nice: int) -> dict:
    """Every generated mutant's status (``killed``, ``survived``, ``not checked``, ...) from ``mutmut results``."""
    listing = mutmut(work, ["results", "--all", "true"], nice).stdout
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s*(\S+): (.+)$", listing, re.M)}


def wilson(k: int, n: int, z: float = 1.96) -> tuple:
    """95 % Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(c - h, 4), round(c + h, 4))


def export_tree(ref: str, dest: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files, or ``git archive ref``, into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if ref:
        data = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(data)) as tar:
            tar.extractall(dest, filter="data")
        return
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def slow_test_ids() -> list:
    """Node ids of the tests marked slow in this checkout (deselected in the fast tier of any revision)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow", "-p", "no:randomly"],
                         cwd=ROOT, capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if "::" in line]


def write_config(work: Path, target: dict, tests: list, pytest_args: list, max_children: int) -> None:
    def lines(values):
        return "\n" + "\n".join(f"    {v}" for v in values)
    cfg = (
        "[mutmut]\n"
        f"source_paths ={lines(['zoo'])}\n"
        f"only_mutate ={lines(target['mutate'])}\n"
        f"also_copy ={lines(['tasks', 'rl', 'benchmarks'])}\n"
        f"pytest_add_cli_args_test_selection ={lines(tests)}\n"
        f"pytest_add_cli_args ={lines(pytest_args)}\n"
        "process_isolation = forkserver\n"
        "use_git_change_detection = False\n"
    )
    (work / "setup.cfg").write_text(cfg)


def mutmut(work: Path, args: list, nice: int, log=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = ["nice", "-n", str(nice), sys.executable, "-m", "mutmut", *args]
    if log is not None:
        return subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)


def main(argv=None) -> dict:
    a = parse_args(argv)
    target = TARGETS[a.target]
    ref = a.ref or "worktree"
    work = Path(a.workdir or f"/tmp/zoo-mutation/{a.target}-{re.sub(r'[^A-Za-z0-9_.-]', '_', ref)}")
    if a.fresh and work.exists():
        shutil.rmtree(work)
    if not (work / "setup.cfg").exists():
        export_tree(a.ref, work)
    tests = [t for t in (a.tests or target["tests"]) if (work / t).exists()]
    if not tests:
        raise SystemExit(f"none of the test files {a.tests or target['tests']} exists at {ref}")
    pytest_args = ["-p", "no:randomly", "-p", "no:cacheprovider", "-x", "-q"]
    if not a.slow:
        pytest_args += ["-m", "not slow"] + [f"--deselect={t}" for t in slow_test_ids() if t.split("::")[0] in tests]
    write_config(work, target, tests, pytest_args, a.max_children)
    print(f"mutating {target['mutate']} at {ref} in {work}\ntests: {' '.join(tests)}"
          f"{'' if a.slow else ' (fast tier)'}", flush=True)
    start = time.time()
    chosen: list = []
    with open(work / "mutmut-run.log", "a") as log:
        if a.sample:
            if not any((work / "mutants").rglob("*.meta")):      # generate mutants and test coverage; the
                mutmut(work, ["run", "zoo.__no_mutant__"], a.nice, log)   # filter matches none, so nothing runs
            population = sorted(statuses(work, a.nice))
            if not population:
                raise SystemExit(f"mutmut generated no mutants in {work}; see {work / 'mutmut-run.log'}")
            chosen = sorted(random.Random(a.sample_seed).sample(population, min(a.sample, len(population))))
            print(f"sample: {len(chosen)} of {len(population)} mutants (seed {a.sample_seed})", flush=True)
        run = mutmut(work, ["run", "--max-children", str(a.max_children), *chosen], a.nice, log)
    seconds = time.time() - start
    status = statuses(work, a.nice)
    if chosen:
        status = {n: status[n] for n in chosen}
    counts = {s: sum(1 for v in status.values() if v == s) for s in sorted(set(status.values()))}
    stats = {"total": len(status), "killed": counts.get("killed", 0), "timeout": counts.get("timeout", 0),
             "skipped": counts.get("skipped", 0), "counts": counts}
    if chosen:
        stats["population"] = len(population)
    caught_or_skipped = ("killed", "timeout", "skipped")
    survivors = [(n, s) for n, s in sorted(status.items()) if s not in caught_or_skipped]
    with open(work / "survivors.md", "w") as f:
        f.write(f"# Mutants not killed ({a.target} at {ref})\n\n")
        for name, verdict in survivors:
            diff = mutmut(work, ["show", name], a.nice).stdout
            f.write(f"## {name}: {verdict}\n\n```diff\n{diff.strip()}\n```\n\n")
    tested = stats["total"] - stats["skipped"]
    caught = stats["killed"] + stats["timeout"]
    score = caught / tested if tested else 0.0
    if chosen:
        stats["score_ci95"] = wilson(caught, tested)
    summary = {"target": a.target, "ref": ref, "tests": tests, "fast_tier": not a.slow, **stats,
               "score": round(score, 4), "wall_seconds": round(seconds), "mutmut_exit_code": run.returncode,
               "not_killed": {s: n for s, n in counts.items() if s not in caught_or_skipped}}
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    ci = f" (95 % interval {100 * stats['score_ci95'][0]:.1f}-{100 * stats['score_ci95'][1]:.1f} %, a sample of " \
         f"{tested} of {stats['population']})" if chosen else ""
    print(f"score {100 * score:.1f} % ({caught} of {tested}){ci}; survivors: {work / 'survivors.md'}")
    return summary


if __name__ == "__main__":
    main()
