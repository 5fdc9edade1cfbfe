"""Multi-digit MNIST: train on some digit counts, test on others (thesis 10.4.2, Table 5).

    python -m tasks.multi_digit                                   # train on {1, 3} digits per image, test on {1..5}
    python -m tasks.multi_digit --train-counts 1 5 --test-counts 2 3 4
    python -m tasks.multi_digit --data mnist --data-root data     # full MNIST (the IDX files under data/MNIST/raw)

Data: :mod:`zoo.data.multi_digit`: 64x64 canvases holding ``k`` digits of distinct classes at random
positions, overlaps combined by the pixel-wise max; training canvases are drawn fresh every step, only from
the training digits (the embedded split's 4,000, or MNIST's 60,000), test canvases (``--test-size`` per count,
the same for every model and seed) only from the test digits. One sigmoid per class, binary cross-entropy.

Metric (the paper did not publish its own): **exact-set accuracy**, the share of test canvases whose
predicted set ``{c : sigmoid_c > 0.5}`` equals the set of digits on the canvas; also ``topk_acc`` (the
``k`` highest scores are the ``k`` digits, with ``k`` given), macro ``f1`` over the 10 labels, and per-label F1.
Writes ``results.json`` (per model and count: ``exact_acc``, ``exact_acc_std``, ``exact_acc_per_seed``, the
same for ``topk_acc``, ``f1`` and the miscount shares ``fewer`` / ``more``, and ``f1_per_label``), ``results.md``, ``accuracy_vs_count.png`` (seen
counts marked), ``samples.png`` and, for NFM models, ``attention_<model>.png``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, TypedDict, cast

import numpy as np
import torch
import torch.nn.functional as F

import zoo
from tasks.sort_of_clevr import check_models, plot_attention_runs, seed_summary
from zoo.data.multi_digit import (
    NUM_CLASSES,
    MultiDigitDataset,
    digit_sources,
    multi_digit_batch,
)
from zoo.engine import (per_run, 
    SCHEDULES,
    ConfigError,
    RunConfig,
    RunError,
    SeededStream,
    arg,
    command_line,
    run_options,
    fit,
    lr_schedule,
    markdown_table,
    parse_config,
    per_model_kwargs,
    precision_arg,
    resolve_device,
    run_cli,
    run_grid,
    seed_everything,
    summarize_seeds,
    write_report,
)
from zoo.engine.results import fmt_mean_std, plot_seed_curves

#: the default model kwargs: both nets get 4 stride-2 conv modules (64x64 -> 4x4; the registry default
#: starts at stride 1, which leaves a 9-pixel receptive field on a 64x64 canvas), as the thesis' 4 modules x 2
#: passes = 8 NFM blocks; the NFM blocks are kept before the last two modules only, ``d_k = d_v = 8``
_BODY = {"widths": [16, 32, 64, 64], "strides": [2, 2, 2, 2]}
CPU_KWARGS = {"mnist_convnet": _BODY, "nfm_mnist_convnet": {**_BODY, "nfm_attend": [2, 3], "d_k": 8, "d_v": 8}}


@dataclass
class Config(RunConfig):
    """Multi-digit MNIST (thesis 10.4.2): train on some digit counts, test exact-set accuracy on others."""

    models: List[str] = arg(["mnist_convnet", "nfm_mnist_convnet"],
                            unique=True, help="registered image models (in_chans=1, num_classes=10): mnist_convnet, "
                                 "nfm_mnist_convnet, or any timm model")
    model_kwargs: str = arg(json.dumps(CPU_KWARGS),
                            help='JSON: keyword arguments per model name ("*": every model); entries of models '
                                 'not in --models are ignored. The default: 4 stride-2 convs (16-32-64-64) for both, '
                                 'NFM blocks before the last two only (CPU scale); add "nfm_attend": [0, 1, 2, 3] '
                                 'for the thesis placement')
    seeds: int = arg(3, help="seeds per model (seed, seed+1, ...); tables show mean ± std", ge=1)
    train_counts: List[int] = arg([1, 3], help="digits per training canvas (each canvas draws one)", ge=1,
                                  le=NUM_CLASSES)
    test_counts: List[int] = arg([2, 4, 5], help="unseen digit counts to test (the training counts are "
                                                 "tested too)", ge=1, le=NUM_CLASSES)
    steps: int = arg(1200, help="optimizer steps per model and seed", ge=1)
    batch_size: int = arg(32, help="canvases per step", ge=1)
    lr: float = arg(3e-3, help="Adam learning rate", gt=0)
    schedule: str = arg("cosine", help="learning-rate schedule: cosine decay to 0 (batch-norm statistics then "
                                       "match the final weights), or constant", choices=list(SCHEDULES))
    clip_grad: float = arg(0.0, help="gradient-norm clip (0: off)", ge=0)
    precision: str = precision_arg()
    canvas: int = arg(64, help="canvas side in pixels", ge=28, le=256)
    data: str = arg("embedded", help="digit source: the embedded 5,000 digits, or full MNIST from --data-root",
                    choices=["embedded", "mnist"])
    data_root: str = arg("data", help="folder holding MNIST/raw/*-ubyte (with --data mnist)")
    download: bool = arg(False, help="download MNIST into --data-root if missing (needs internet)")
    test_size: int = arg(1000, help="test canvases per digit count", ge=1)
    threshold: float = arg(0.5, help="a class is predicted when its sigmoid exceeds this", gt=0, lt=1)
    eval_every: int = arg(0, help="evaluate the trained counts' test canvases every this many steps and plot the "
                                  "curves (curves.png; 0: only at the end)", ge=0)
    samples: int = arg(8, help="test canvases in samples.png", ge=0, le=64)
    attention_images: int = arg(200, help="test canvases averaged in the NFM attention maps", ge=1)
    out: str = arg("runs/multi_digit", help="output folder", path="out_dir")

    def check(self) -> None:
        super().check()
        kwargs = {m: {"num_classes": NUM_CLASSES, "in_chans": 1, **kw}
                  for m, kw in per_model_kwargs(self.model_kwargs, self.models, default=json.dumps(CPU_KWARGS)).items()}
        check_models(self.models, kwargs, lambda m: None)
        if self.data == "mnist" and not self.download and not (Path(self.data_root) / "MNIST" / "raw").is_dir():
            raise ConfigError(f"--data mnist needs the IDX files in {Path(self.data_root) / 'MNIST' / 'raw'}; "
                              "add --download (internet) or use --data embedded")

    @property
    def counts(self) -> List[int]:
        """Every count evaluated: the training counts and the test counts."""
        return sorted(set(self.train_counts) | set(self.test_counts))


class SetMetrics(TypedDict):
    """What :func:`exact_set_metrics` returns (a plain dict)."""

    exact_acc: float
    topk_acc: float
    f1: float
    fewer: float
    more: float
    f1_per_label: List[float]


#: The per-count scalars of :class:`SetMetrics` that :func:`summarize` averages over seeds, with the caption
#: of each one's table in ``results.md`` (``exact_acc`` is the main table, without a caption).
SCALARS: Dict[str, str] = {
    "exact_acc": "",
    "topk_acc": "Top-k set accuracy (the k highest scores are the k digits; k given):",
    "f1": "Macro F1 over the 10 labels:",
    "fewer": "Miscounts: share of canvases whose predicted set has fewer digits than the canvas:",
    "more": "... and more digits than the canvas:",
}


def exact_set_metrics(logits: torch.Tensor, y: torch.Tensor, threshold: float = 0.5) -> SetMetrics:
    """``exact_acc`` (thresholded set == true set), ``topk_acc`` (the ``|y|`` top scores == true set), macro
    ``f1`` and ``f1_per_label`` (labels absent from both truth and prediction count as F1 = 1); ``fewer`` and
    ``more``: the share of canvases whose thresholded set holds fewer / more digits than the canvas (a
    miscount, as opposed to naming the wrong digits)."""
    pred = torch.sigmoid(logits) > threshold
    truth = y > 0.5
    exact = (pred == truth).all(1).float().mean()
    k = truth.sum(1)
    ranks = torch.argsort(torch.argsort(logits, dim=1, descending=True), dim=1)        # 0 = highest score
    topk = ((ranks < k[:, None]) == truth).all(1).float().mean()
    tp = (pred & truth).sum(0).float()
    denom = pred.sum(0).float() + truth.sum(0).float()
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(tp))
    size = pred.sum(1)
    return {"exact_acc": float(exact), "topk_acc": float(topk), "f1": float(f1.mean()),
            "fewer": float((size < k).float().mean()), "more": float((size > k).float().mean()),
            "f1_per_label": f1.tolist()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, tests: Dict[int, MultiDigitDataset], device: torch.device,
             threshold: float, chunk: int = 250) -> Dict[str, SetMetrics]:
    """:func:`exact_set_metrics` for every test count: ``{"1": {...}, "2": {...}}``."""
    model.eval()
    out: Dict[str, SetMetrics] = {}
    for k, ds in tests.items():
        logits = torch.cat([model(ds.x[i:i + chunk].to(device)).float().cpu() for i in range(0, len(ds), chunk)])
        out[str(k)] = exact_set_metrics(logits, ds.y, threshold)
    return out


def build_model(name: str, kwargs: dict) -> torch.nn.Module:
    return zoo.create_model(name, num_classes=NUM_CLASSES, in_chans=1, **kwargs)


def _run_dir(cfg: Config, name: str, seed: int) -> Path:
    return Path(cfg.out) / name / f"seed{seed}"


def test_sets(cfg: Config, pools) -> Dict[int, MultiDigitDataset]:
    """The fixed test canvases: ``--test-size`` per count, from the test digits (seed 10,000 + count)."""
    return {k: MultiDigitDataset(pools["test"], k, cfg.test_size, seed=10_000 + k, canvas=cfg.canvas)
            for k in cfg.counts}


def load_pools(cfg: Config):
    try:
        return digit_sources(cfg.data, cfg.data_root, cfg.download)
    except (FileNotFoundError, RuntimeError) as e:
        raise RunError(f"{str(e).splitlines()[0]}") from None


def model_kwargs(cfg: Config, name: str) -> Dict[str, Any]:
    """The kwargs of model ``name``: ``--model-kwargs`` (:func:`zoo.engine.per_model_kwargs`; default
    :data:`CPU_KWARGS`)."""
    return per_model_kwargs(cfg.model_kwargs, cfg.models, default=json.dumps(CPU_KWARGS))[name]


def run_meta(cfg: Config, name: str, seed: int) -> Dict[str, Any]:
    """The options that define run ``(name, seed)``, checked on ``--resume``
    (:func:`zoo.engine.run_options`): without the list of models, with this model's kwargs resolved, so
    adding, dropping or reordering ``--models`` entries reuses the finished runs."""
    return run_options(cfg, exclude=("models",), model=name, seed=seed, model_kwargs=model_kwargs(cfg, name))


def train_one(cfg: Config, name: str, seed: int, position: int = 0) -> dict:
    """Train one (model, seed) and test it at every count; runs in a worker process."""
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)                # run_jobs sets it in worker processes only, not with 1 worker
    seed_everything(seed)
    pools = load_pools(cfg)
    tests = test_sets(cfg, pools)
    model = build_model(name, model_kwargs(cfg, name)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = SeededStream(lambda g: multi_digit_batch(pools["train"], cfg.train_counts, cfg.batch_size,
                                                       cfg.canvas, g)[:2], seed)

    def step_fn(m, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(m(x), y), {}

    seen = {k: tests[k] for k in cfg.train_counts}
    fitted = fit(model, optimizer, batches, step_fn, steps=cfg.steps, device=device,
                 out_dir=_run_dir(cfg, name, seed), clip_grad=cfg.clip_grad or None, log_every=cfg.log_every,
                 precision=cfg.precision,
                 scheduler=lr_schedule(optimizer, cfg.schedule, cfg.steps),
                 eval_fn=(lambda m: {f"exact_acc_{k}": v["exact_acc"] for k, v in
                                     evaluate(m, seen, device, cfg.threshold).items()}) if cfg.eval_every else None,
                 eval_every=cfg.eval_every, ckpt_every=cfg.checkpoint_every, resume=cfg.resume,
                 desc=f"{name} s{seed}",
                 run_meta=run_meta(cfg, name, seed), progress=cfg.progress, position=position)
    result = evaluate(model, tests, device, cfg.threshold)
    out = {"model": name, "seed": seed, "tests": result, "seconds": fitted.seconds, "curve": fitted.eval_history}
    if seed == cfg.seed and cfg.samples:
        x = torch.stack([tests[k].x[i] for k, i in sample_picks(cfg)])
        with torch.no_grad():
            out["samples"] = (torch.sigmoid(model(x.to(device))) > cfg.threshold).cpu().tolist()
    if getattr(model, "nfm", None) is not None and seed == cfg.seed:
        from tasks.nfm_attention import attention_matrix
        from zoo.models.staged import StagedNet               # the registry's NFM models are StagedNets
        per = max(1, cfg.attention_images // len(cfg.counts))
        x = torch.cat([tests[k].x[:per] for k in cfg.counts])
        out["attention"] = attention_matrix(cast(StagedNet, model), x.to(device))
    return out


def summarize(cfg: Config, runs: List[dict]) -> dict:
    results: dict = {}
    for name in cfg.models:
        mine = [r for r in runs if r["model"] == name]
        results[name] = {}
        for k in map(str, cfg.counts):
            scalars = [{m: r["tests"][k][m] for m in SCALARS} for r in mine]
            entry = seed_summary(scalars)
            entry["f1_per_label"] = np.mean([r["tests"][k]["f1_per_label"] for r in mine], axis=0).tolist()
            entry["seen"] = int(k) in cfg.train_counts
            results[name][k] = entry
    return results


def results_table(cfg: Config, runs: List[dict], metric: str = "exact_acc") -> str:
    header = ["model"] + [f"{k}{' (train)' if k in cfg.train_counts else ''}" for k in cfg.counts] + ["seeds"]
    rows = []
    for name in cfg.models:
        mine = [r for r in runs if r["model"] == name]
        cells = [fmt_mean_std(summarize_seeds([{metric: r["tests"][str(k)][metric]} for r in mine])[metric])
                 for k in cfg.counts]
        rows.append([name] + cells + [len(mine)])
    return markdown_table(header, rows)


def plot_counts(cfg: Config, results: dict, path: Path) -> Path:
    """Exact-set accuracy against digit count, one line per model (mean ± std), training counts shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ks = cfg.counts
    for k in cfg.train_counts:
        ax.axvspan(k - 0.3, k + 0.3, color="0.88", zorder=0)
    for i, name in enumerate(cfg.models):
        m = np.array([results[name][str(k)]["exact_acc"] for k in ks])
        s = np.array([results[name][str(k)]["exact_acc_std"] for k in ks])
        ax.errorbar(ks, m, yerr=s, color=f"C{i}", marker="o", capsize=3, label=name)
        seen = [j for j, k in enumerate(ks) if k in cfg.train_counts]
        ax.scatter(np.array(ks)[seen], m[seen], s=90, facecolors="none", edgecolors=f"C{i}", zorder=3)
    ax.set_xticks(ks, [f"{k}\n(train)" if k in cfg.train_counts else str(k) for k in ks])
    ax.set_xlabel("digits per test canvas (grey: counts seen in training)")
    ax.set_ylabel("exact-set accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"multi-digit MNIST: trained on {cfg.train_counts} digits, {cfg.steps} steps, "
                 f"{cfg.seeds} seed(s)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sample_picks(cfg: Config) -> List[tuple]:
    """``(count, index)`` of the canvases in samples.png: the counts in turn."""
    n = len(cfg.counts)
    return [(cfg.counts[i % n], i // n) for i in range(min(cfg.samples, n * cfg.test_size))]


def plot_samples(cfg: Config, runs: List[dict], tests: Dict[int, MultiDigitDataset], path: Path) -> Optional[Path]:
    """Test canvases (one per count) with their digits and each model's predicted set (first seed)."""
    first: Dict[str, Any] = {r["model"]: r.get("samples") for r in runs if r["seed"] == cfg.seed}
    if not cfg.samples or not all(first.values()):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [(tests[k].x[i, 0], tests[k].y[i]) for k, i in sample_picks(cfg)]
    cols = min(5, len(xs))
    rows = -(-len(xs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    digits = lambda v: "{" + ",".join(str(i) for i, b in enumerate(v) if b) + "}"  # noqa: E731
    for j, (ax, (x, y)) in enumerate(zip(axes.flat, xs)):
        ax.imshow(x, cmap="gray", interpolation="nearest")
        lines = [f"digits {digits(y.tolist())}"]
        for name in cfg.models:
            p = first[name][j]
            lines.append(f"{name.replace('mnist_convnet', 'cnn')}: {digits(p)} {'✓' if p == (y > 0.5).tolist() else '✗'}")
        ax.set_title("\n".join(lines), fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PROG = "python -m tasks.multi_digit"


def run(cfg: Config, command: Optional[str] = None) -> dict:
    """Train and test every model x seed of ``cfg``; write the report; return ``results``."""
    command = command or command_line(PROG, [])
    pools = load_pools(cfg)                               # fail early (missing MNIST) before the workers start
    runs, wall, out = run_grid(cfg, train_one, cfg.models, "multi_digit",
                               f"; train counts {cfg.train_counts}, test counts {cfg.counts}, {cfg.steps} steps each", command=command)
    results = summarize(cfg, runs)
    table = results_table(cfg, runs)
    extra = ("".join(f"\n{caption}\n\n{results_table(cfg, runs, m)}" for m, caption in SCALARS.items() if caption)
             + "\nTraining time per run (s, this machine): "
             + ", ".join(f"{n} {np.mean([r['seconds'] for r in runs if r['model'] == n]):.0f}" for n in cfg.models)
             + "\n")
    fig = plot_counts(cfg, results, out / "accuracy_vs_count.png")
    samples = plot_samples(cfg, runs, test_sets(cfg, pools) if cfg.samples else {}, out / "samples.png")
    att = plot_attention_runs(runs, out, lambda r: (
        f"{r['model']} (seed {r['seed']}), multi-digit, {cfg.steps} steps\nexact-set accuracy "
        + ", ".join(f"{k} digits {r['tests'][str(k)]['exact_acc']:.3f}" for k in cfg.counts)))
    curves = plot_seed_curves(runs, cfg.models, [(f"exact_acc_{k}", f"exact-set accuracy, {k} digits (trained)")
                                                 for k in cfg.train_counts], out / "curves.png",
                              "Multi-digit MNIST during training (test canvases, mean ± std over seeds)")
    title = f"Multi-digit MNIST: train on {cfg.train_counts} digits, exact-set accuracy per digit count"
    write_report(out, cfg, results, wall, title, command, table,
                 timing={"train_seconds": per_run(runs)}, extra=extra, figures=(fig, samples, curves, *att))
    return results


def main(argv: Optional[List[str]] = None) -> dict:
    return run(parse_config(Config, argv, prog=PROG), command_line(PROG, argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
