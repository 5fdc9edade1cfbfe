"""Learning curves of several ``rl.train`` runs in one figure (e.g. the LSTM and RIM cores on one game):
``python -m rl.curves RUN_DIR [RUN_DIR ...] --out FIGURE.png``.

    python -m rl.curves runs/rl/breakout-lstm-nature-s0 runs/rl/breakout-rim-nature-s0 \\
        --out docs/figures/rl_breakout.png

Left: evaluation score (mean ± std over the evaluation games, ``eval.csv``) and the running mean of the
training games (``episodes.csv``) against env steps, with the random agent's mean score
(``random_agent.json``) as a dashed line. Right: the evaluation score against the CPU hours the run had
used (``eval/cpu_seconds``: the training process's CPU time, which is the wall time of a quiet machine
with one torch thread and in-process envs). Also prints each run's evaluations as a markdown table.
Works on unfinished runs (it reads what the run has written so far).
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from zoo.engine import ConfigError, arg, atomic_write, parse_config, run_cli, validate_config

__all__ = ["read_run", "plot_runs", "main"]


def _csv(path: Path) -> List[Dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_run(run: Path) -> Dict[str, Any]:
    """A run folder's evaluations, training games, random-agent score and config."""
    evals = [{k.split("/", 1)[-1]: float(v) for k, v in r.items() if v not in ("", None)} for r in _csv(run / "eval.csv")]
    games = _csv(run / "episodes.csv")
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    random = json.loads((run / "random_agent.json").read_text()) if (run / "random_agent.json").exists() else None
    return {"name": run.name, "evals": evals, "config": cfg, "random": random,
            "game_steps": np.array([float(g["step"]) for g in games]),
            "game_returns": np.array([float(g["return"]) for g in games])}


def plot_runs(runs: List[Dict[str, Any]], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(runs):
        label = r["config"].get("core", r["name"])
        c = f"C{i}"
        if len(r["game_returns"]) >= 1:
            k = min(50, len(r["game_returns"]))
            ax.plot(r["game_steps"][k - 1:], np.convolve(r["game_returns"], np.ones(k) / k, mode="valid"),
                    color=c, alpha=0.45, lw=1, label=f"{label}: training games (mean of {k})")
        if r["evals"]:
            s = [e["step"] for e in r["evals"]]
            m = np.array([e["mean_return"] for e in r["evals"]])
            sd = np.array([e["std_return"] for e in r["evals"]])
            ax.errorbar(s, m, yerr=sd, color=c, marker="o", ms=3, capsize=2, label=f"{label}: evaluation")
            if all("cpu_seconds" in e for e in r["evals"]):
                hours = np.array([e["cpu_seconds"] for e in r["evals"]]) / 3600
                ax2.errorbar(hours, m, yerr=sd, color=c, marker="o", ms=3, capsize=2, label=label)
    randoms = [r["random"]["mean_return"] for r in runs if r["random"]]
    if randoms:
        for a in (ax, ax2):
            a.axhline(float(np.mean(randoms)), color="k", ls="--", lw=1, label="random agent")
    ax.set(xlabel="environment steps (4 frames each)", ylabel="game score", title=title)
    ax2.set(xlabel="CPU hours of the training process", ylabel="evaluation score", title="against compute")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path


def table(runs: List[Dict[str, Any]]) -> str:
    lines = ["| run | env steps | CPU hours | evaluation score (mean ± std) | games |", "|---|---|---|---|---|"]
    for r in runs:
        n = r["config"].get("eval_episodes", "?")
        for e in r["evals"]:
            lines.append(f"| {r['name']} | {int(e['step'])} | {e.get('cpu_seconds', float('nan')) / 3600:.2f} | "
                         f"{e['mean_return']:.1f} ± {e['std_return']:.1f} | {n} |")
        if r["random"]:
            lines.append(f"| random agent | | | {r['random']['mean_return']:.1f} ± {r['random']['std_return']:.1f} | "
                         f"{len(r['random']['returns'])} |")
    return "\n".join(lines)


def _is_run(path: str) -> Optional[str]:
    return None if (Path(path) / "eval.csv").is_file() else "an rl.train output folder (one holding eval.csv)"


@dataclass
class CurvesConfig:
    """Plot the learning curves of rl.train runs in one figure."""

    runs: List[str] = arg([], help="rl.train output folders (may be given as the first positional arguments)")
    out: str = arg("curves.png", help="the figure to write", path="out_file")
    title: str = arg("", help="title of the left panel (default: the game)")

    def __post_init__(self) -> None:
        validate_config(self)
        for r in self.runs:
            why = _is_run(r)
            if why:
                raise ConfigError(f"--runs {r!r} is not {why}")


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):                       # positional run folders
        k = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
        argv = ["--runs", *argv[:k], *argv[k:]]
    cfg = parse_config(CurvesConfig, argv, prog="python -m rl.curves")
    runs = [read_run(Path(r)) for r in cfg.runs]
    title = cfg.title or str(runs[0]["config"].get("env", ""))
    path = plot_runs(runs, Path(cfg.out), title)
    print(table(runs))
    print(f"wrote {path}")
    return {"figure": str(path), "runs": [r["name"] for r in runs]}


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
