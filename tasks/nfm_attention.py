"""Train an NFM classifier briefly on the embedded digits, then plot which earlier layer each block reads.

    python -m tasks.nfm_attention                                  # ~5 min on 1 CPU core
    python -m tasks.nfm_attention --steps 600 --figure docs/figures/nfm_attention.png
    python -m tasks.nfm_attention --checkpoint runs/nfm_attention/erm/seed0/checkpoint.pt   # plot only

Training is the classification harness (:mod:`tasks.classify`, ERM, :func:`zoo.engine.fit`) run on
``--model`` (an ``nfm_*`` model). The plot is the NFM analogue of the thesis' attention analysis (10.4):
for every NFM block (row: pass ``p``, module ``i``) the attention weight on each memory entry (column:
pass, module; plus the null slot), summed over the entry's slots (space-to-depth windows) and averaged over
heads, query positions and ``--eval-size`` test digits; each row sums to 1, entries not yet computed when
the block runs are blank. Writes the figure and ``attention.json`` (the matrix) next to the harness results.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import timm
import torch

import zoo
from tasks import classify
from zoo.engine import arg, command_line, load_checkpoint, parse_config, run_cli, validate_config, write_json


@dataclass
class Config:
    """Train an NFM model on the embedded digits (tasks.classify) and plot its attention over layers."""

    model: str = arg("nfm_mnist_convnet", help="an nfm_* registry name",
                     check=lambda n: None if n.startswith("nfm_") and timm.is_model(n) else
                     f"an NFM model: {', '.join(zoo.list_models('nfm_*'))}")
    model_kwargs: str = arg('{"widths": [16, 32, 64], "d_k": 8, "d_v": 8}', help="JSON model kwargs")
    steps: int = arg(300, help="training steps", ge=1)
    batch_size: int = arg(32, help="batch size", ge=1)
    lr: float = arg(3e-3, help="learning rate (AdamW, cosine)", gt=0)
    seed: int = arg(0, help="seed", ge=0)
    eval_size: int = arg(500, help="test digits averaged in the plot", ge=1)
    checkpoint: str = arg("", help="plot this checkpoint.pt instead of training", path="in_any", allow_empty=True)
    out: str = arg("runs/nfm_attention", help="harness output folder", path="out_dir")
    figure: str = arg("runs/nfm_attention/nfm_attention.png", help="where to write the plot", path="out_file")
    progress: bool = arg(True, help="show progress bars", run_control=True)

    def __post_init__(self) -> None:
        validate_config(self)

    def harness(self) -> classify.Config:
        """The classification run that trains the model (ERM, Adam, clean accuracy only)."""
        return classify.Config(model=self.model, model_kwargs=self.model_kwargs, method=["erm"], steps=self.steps,
                               batch_size=self.batch_size, optimizer="adam", lr=self.lr, seed=self.seed,
                               evaluations=["clean"], out=self.out, eval_every=0, workers=1,
                               progress=self.progress)


@torch.no_grad()
def attention_matrix(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Mean attention of every block over the memory: ``{"rows": [(p, i)], "cols": ["null", (p, j), ...],
    "weights": [[...]]}``, ``weights[r][c]`` the share of block ``r``'s reads going to column ``c``
    (``None`` where that layer does not exist yet when the block runs)."""
    model.eval()
    trace = model.nfm_trace(x)
    cols = trace.memory_index
    rows, mat = [], []
    for info in trace.attention:
        share = info.per_source().mean(dim=(0, 1, 2))                 # (1 + sources,): null, then memory order
        row: List[Optional[float]] = [float(share[0])] + [None] * len(cols)
        for s, src in zip(share[1:].tolist(), info.sources):
            row[1 + cols.index(src)] = s
        rows.append((info.pass_idx, info.module_idx))
        mat.append(row)
    return {"rows": rows, "cols": ["null"] + cols, "weights": mat}


def plot(att: dict, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array([[np.nan if v is None else v for v in r] for r in att["weights"]], dtype=float)
    names = ["null"] + [f"p{p + 1}.{j}" for p, j in att["cols"][1:]]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * m.shape[1], 1.0 + 0.45 * m.shape[0]))
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=0, vmax=np.nanmax(m))
    for r in range(m.shape[0]):
        for c in range(m.shape[1]):
            if not np.isnan(m[r, c]):
                ax.text(c, r, f"{m[r, c]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[r, c] < 0.6 * np.nanmax(m) else "black")
    ax.set_xticks(range(m.shape[1]), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(m.shape[0]), [f"block p{p + 1}.{i}" for p, i in att["rows"]], fontsize=8)
    ax.set_xlabel("memory entry read (pass.module; module 0 = first conv)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, label="mean attention weight")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def run(cfg: Config) -> dict:
    hcfg = cfg.harness()
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else Path(cfg.out) / "erm" / f"seed{cfg.seed}" / "checkpoint.pt"
    acc = None
    if not cfg.checkpoint:
        acc = classify.run(hcfg, command_line(PROG, None))["erm"]["acc"]
    data = classify.load_dataset("digits")
    model = classify.build_model(hcfg, data["train"][0].shape[1], data["num_classes"])
    load_checkpoint(ckpt, model=model)
    x, y = data["test"]
    x = x[:cfg.eval_size]
    att = attention_matrix(model, x)
    if acc is None:
        with torch.no_grad():
            acc = float((model(data["test"][0]).argmax(-1) == data["test"][1]).float().mean())
    title = f"{cfg.model} {json.loads(cfg.model_kwargs)}\nembedded digits, {cfg.steps} steps, test acc {acc:.3f}"
    fig = plot(att, Path(cfg.figure), title)
    write_json(Path(cfg.out) / "attention.json", {**att, "test_acc": acc, "config": vars(cfg)})
    print(f"test accuracy {acc:.3f}; wrote {fig} and {Path(cfg.out) / 'attention.json'}")
    return {"attention": att, "acc": acc}


PROG = "python -m tasks.nfm_attention"


def main(argv: Optional[List[str]] = None) -> dict:
    return run(parse_config(Config, argv, prog=PROG))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
