"""Metric logging to CSV (always) and TensorBoard (when installed and asked for)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Optional

__all__ = ["MetricLogger"]


class MetricLogger:
    """Append ``{step, metric...}`` rows to ``<dir>/metrics.csv``; new metric names widen the header.

    Rows are flushed as they come, so a killed run keeps everything logged so far. With ``resume_step``
    the existing file is kept up to that step (rows logged after the last checkpoint are dropped, since
    the resumed run logs those steps again).
    """

    def __init__(self, out_dir, filename: str = "metrics.csv", tensorboard: bool = False,
                 resume_step: Optional[int] = None) -> None:
        self.path = Path(out_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields = ["step"]
        self.rows: list = []
        if resume_step is not None and self.path.exists():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or ["step"])
                self.rows = [r for r in reader if int(float(r["step"])) <= resume_step]
        self._rewrite()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.path.parent / "tb"))
            except ImportError:  # pragma: no cover - depends on the environment
                print("tensorboard is not installed; logging to CSV only (pip install tensorboard)")

    def log(self, step: int, metrics: Dict[str, float], prefix: Optional[str] = None) -> None:
        row = {"step": step, **{(f"{prefix}/{k}" if prefix else k): float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new:
            self.fields += new
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.fields).writerow(row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, step)

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(self.rows)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
