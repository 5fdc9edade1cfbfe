"""Results across seeds: mean and spread, the markdown tables every harness prints and writes, and the
evaluation curves over training (mean ± std over seeds)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["summarize_seeds", "markdown_table", "fmt_mean_std", "seed_curve", "plot_seed_curves"]


def summarize_seeds(per_seed: Sequence[Mapping[str, float]]) -> Dict[str, Dict[str, float]]:
    """``[{metric: value}, ...]`` (one dict per seed) -> ``{metric: {mean, std, min, max, n}}``.

    ``std`` is the sample standard deviation (0 for one seed).
    """
    keys = list(per_seed[0]) if per_seed else []
    out = {}
    for k in keys:
        vals = [float(s[k]) for s in per_seed]
        n = len(vals)
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
        out[k] = {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": n}
    return out


def fmt_mean_std(stats: Mapping[str, float], digits: int = 3) -> str:
    if stats.get("n", 1) > 1:
        return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; also readable when printed to a terminal."""
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]]) + "\n"


def seed_curve(curves: Sequence[Sequence[Mapping[str, float]]], key: str
               ) -> Tuple[List[int], List[float], List[float]]:
    """One metric of several seeds' evaluation histories (``fit``'s ``eval_history``: ``[{"step", key, ...}]``)
    -> ``(steps, mean, std)`` at the steps where every seed has the metric (sample std, 0 for one seed)."""
    per_seed = [{int(h["step"]): float(h[key]) for h in c if key in h} for c in curves]
    if not per_seed or not all(per_seed):
        return [], [], []
    steps = sorted(set.intersection(*(set(s) for s in per_seed)))
    stats = [summarize_seeds([{key: s[t]} for s in per_seed])[key] for t in steps]
    return steps, [st["mean"] for st in stats], [st["std"] for st in stats]


def plot_seed_curves(runs: Sequence[Mapping[str, Any]], models: Sequence[str], metrics: Sequence[Tuple[str, str]],
                     path: Path, title: str = "", reference: Optional[Mapping[str, float]] = None,
                     reference_label: str = "reference") -> Optional[Path]:
    """Test metrics during training, mean ± one std over seeds: a panel per ``(key, label)`` of ``metrics``, a
    line and band per model (the runs with ``run["model"] == name``, their ``run["curve"]``), and a dashed line at
    ``reference[key]`` where given (e.g. the majority answer). ``None`` (nothing written) when no model has two
    points of any metric, e.g. when the harness evaluated only at the end (no ``--eval-every``)."""
    curves = {(name, key): seed_curve([r.get("curve") or [] for r in runs if r["model"] == name], key)
              for name in models for key, _ in metrics}
    if not any(len(c[0]) > 1 for c in curves.values()):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        for i, name in enumerate(models):
            steps, mean, std = curves[(name, key)]
            if not steps:
                continue
            ax.plot(steps, mean, color=f"C{i}", marker="o", ms=3, label=name)
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=f"C{i}", alpha=0.2, lw=0)
        if reference is not None and key in reference:
            ax.axhline(reference[key], color="grey", ls="--", lw=1, label=reference_label)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
