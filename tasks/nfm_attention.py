"""Train an NFM classifier on the embedded digits, plot which earlier layer each block reads, and run the
thesis' random-attention ablation (10.4: CIFAR-10 96.5 % -> 88.5 % when the trained model's attention is
replaced by random scores at test time).

    python -m tasks.nfm_attention                                  # 1 seed, ~5 min on 1 CPU core
    python -m tasks.nfm_attention --seeds 3 --steps 400 --figure docs/figures/nfm_attention.png
    python -m tasks.nfm_attention --checkpoint runs/nfm_attention/train/erm/seed0/checkpoint.pt   # plot only

Training is the classification harness (:mod:`tasks.classify`, ERM, :func:`zoo.engine.fit`) run on
``--model`` (an ``nfm_*`` model), into ``--out``/train. Then, per seed, the trained model is tested twice on
the test digits: as trained, and with every block's scores replaced by standard Gaussian noise
(``set_random_attention``; same top-k softmax, noise drawn from a fixed seed). The plot is the NFM analogue of
the thesis' attention analysis: for every NFM block (row: pass ``p``, module ``i``) the attention weight on
each memory entry (column: pass, module; plus the null slot), summed over the entry's slots (space-to-depth
windows) and averaged over heads, query positions and ``--eval-size`` test digits; each row sums to 1,
entries not yet computed when the block runs are blank.

Writes ``results.json`` (``acc`` and ``acc_random_attention``: mean over seeds, ``_std``, ``per_seed``),
``results.md``, ``attention.json`` (the first seed's matrix) and the figure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, cast

import timm
import torch

import zoo
from tasks import classify
from zoo.models.staged import StagedNet
from zoo.engine import (RunConfig, RunLock, arg, command_line, fmt_mean_std, load_checkpoint, markdown_table, parse_config,
                        run_cli, summarize_seeds, write_json, write_report)

PROG = "python -m tasks.nfm_attention"


@dataclass
class Config(RunConfig):
    """Train an NFM model on the embedded digits (tasks.classify), plot its attention over layers, and test it
    with random attention (the thesis' ablation)."""

    model: str = arg("nfm_mnist_convnet", help="an nfm_* registry name",
                     check=lambda n: None if n.startswith("nfm_") and timm.is_model(n) else
                     f"an NFM model: {', '.join(zoo.list_models('nfm_*'))}")
    model_kwargs: str = arg('{"widths": [16, 32, 64], "d_k": 8, "d_v": 8}', help="JSON model kwargs")
    steps: int = arg(300, help="training steps", ge=1)
    batch_size: int = arg(32, help="batch size", ge=1)
    lr: float = arg(3e-3, help="learning rate (AdamW, cosine)", gt=0)
    eval_size: int = arg(500, help="test digits averaged in the attention plot", ge=1)
    checkpoint: str = arg("", help="plot this checkpoint.pt instead of training", path="in_any", allow_empty=True)
    out: str = arg("runs/nfm_attention", help="output folder", path="out_dir")
    figure: str = arg("", help="where to write the plot (default: <out>/nfm_attention.png)", path="out_file",
                      allow_empty=True)

    def harness(self) -> classify.Config:
        """The classification runs that train the model (ERM, Adam, clean accuracy only)."""
        return classify.Config(model=self.model, model_kwargs=self.model_kwargs, method=["erm"], steps=self.steps,
                               batch_size=self.batch_size, optimizer="adam", lr=self.lr, seed=self.seed,
                               seeds=self.seeds, evaluations=["clean"], out=str(Path(self.out) / "train"),
                               eval_every=0, workers=self.workers, threads=self.threads, device=self.device,
                               progress=self.progress, resume=self.resume, checkpoint_every=self.checkpoint_every)


@torch.no_grad()
def attention_matrix(model: StagedNet, x: torch.Tensor) -> dict:
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


@torch.no_grad()
def accuracies(model: StagedNet, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """Test accuracy as trained and with random attention (noise drawn from ``seed``; the global RNG is restored)."""
    model.eval()
    acc = float((model(x).argmax(-1) == y).float().mean())
    state = torch.get_rng_state()
    torch.manual_seed(10_000 + seed)
    model.set_random_attention(True)
    try:
        rand = float((model(x).argmax(-1) == y).float().mean())
    finally:
        model.set_random_attention(False)
        torch.set_rng_state(state)
    return {"acc": acc, "acc_random_attention": rand}


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


def run(cfg: Config, command: Optional[str] = None) -> dict:
    command = command or command_line(PROG, [])
    out = Path(cfg.out)
    RunLock(out, command).acquire()                     # released by write_report
    hcfg = cfg.harness()
    data = classify.load_dataset("digits")
    x, y = data["test"]
    seeds = [cfg.seed + s for s in range(cfg.seeds)]
    wall = 0.0
    if cfg.checkpoint:
        ckpts = [Path(cfg.checkpoint)]
    else:
        classify.run(hcfg, command)
        timing = json.loads((Path(hcfg.out) / "timing.json").read_text())
        wall = float(timing["wall_seconds"])
        ckpts = [Path(hcfg.out) / "erm" / f"seed{s}" / "checkpoint.pt" for s in seeds]
    per_seed = []
    att: Optional[dict] = None
    for seed, ckpt in zip(seeds, ckpts):
        # --model is an nfm_* name (Config checks it): every one is a StagedNet
        model = cast(StagedNet, classify.build_model(hcfg, x.shape[1], data["num_classes"]))
        load_checkpoint(ckpt, model=model)
        per_seed.append(accuracies(model, x, y, seed))
        if att is None:
            att = attention_matrix(model, x[:cfg.eval_size])
    assert att is not None                              # seeds >= 1: at least one checkpoint was read
    stats = summarize_seeds(per_seed)
    results: dict = {}
    for k, v in stats.items():
        results.update({k: v["mean"], f"{k}_std": v["std"], f"{k}_per_seed": [p[k] for p in per_seed]})
    title = (f"{cfg.model} {json.loads(cfg.model_kwargs)}\nembedded digits, {cfg.steps} steps, "
             f"test acc {stats['acc']['mean']:.3f}")
    fig = plot(att, Path(cfg.figure) if cfg.figure else out / "nfm_attention.png", title)
    write_json(out / "attention.json", att)
    table = markdown_table(["attention at test time", "test accuracy", "seeds"],
                           [["as trained", fmt_mean_std(stats["acc"]), len(per_seed)],
                            ["random scores (ablation)", fmt_mean_std(stats["acc_random_attention"]), len(per_seed)]])
    write_report(out, cfg, results, wall, f"NFM attention and the random-attention ablation: {cfg.model} on the "
                 "embedded digits", command, table, figures=(fig,))
    return results


def main(argv: Optional[List[str]] = None) -> dict:
    return run(parse_config(Config, argv, prog=PROG), command_line(PROG, argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
