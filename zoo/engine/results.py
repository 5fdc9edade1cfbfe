"""Results across seeds: mean and spread, and the markdown tables every harness prints and writes."""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Sequence

__all__ = ["summarize_seeds", "markdown_table", "fmt_mean_std"]


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
