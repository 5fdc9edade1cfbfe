"""Sequential MNIST at other resolutions (thesis ch. 8.4.1, Table 1 right).

Classify a digit from its pixels fed one per step (row-major), trained at 14x14 (196 steps) and tested at
16x16, 19x19 and 24x24 (256, 361, 576 steps), every size resized by nearest neighbour directly from
28x28. The longer test sequences stretch the background runs between strokes: RIMs, whose units can stay
inactive (and then keep their state exactly) over background, should lose less accuracy than an LSTM
(paper: RIM 90.0 / 73.4 / 38.1 vs LSTM 84.5 / 52.2 / 21.9 % at 16 / 19 / 24).

    python -m tasks.seq_mnist                      # embedded digits, RIM vs LSTM (hidden 96), 3 seeds: ~13 min
    python -m tasks.seq_mnist --help               # every option
    python -m tasks.seq_mnist --models rim_lstm_seq lstm_seq --dataset mnist --data-root data \
        --steps 75000 --lr 7e-4 --schedule constant --eval-every 750     # the paper's sizes and schedule

Protocol (``anirudh9119/RIMs`` ``event_based/train_mnist.py``; ``shared/docs/tasks.md``): pixels
binarized at 0.5 (two tokens, an embedding) or grey levels through a linear input (``--input pixels``);
the class is read from the last step; one fifth of the training digits is held out for validation
(48k / 12k on MNIST) and the test accuracy at every resolution is read from the weights of the best
validation accuracy *at the training resolution* (the reference picks a step per test resolution by the
validation accuracy at that resolution, which peeks at the test condition). Data and resizing:
:mod:`zoo.data.seq_mnist`.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np
import torch
import torch.nn.functional as F

import zoo
from zoo.data import dataset_missing
from zoo.data.seq_mnist import INPUTS, SEQ_DATASETS, pixel_sequences, seq_mnist_batches, seq_mnist_splits
from zoo.engine import (SCHEDULES, ConfigError, RunConfig, RunError, arg, check_per_model, command_line,
                        fit, fmt_mean_std, lr_schedule, markdown_table, parse_config, per_model_kwargs,
                        per_model_value, per_run, precision_arg, resolve_device, run_cli, run_grid, seed_everything,
                        run_options, summarize_seeds, warmup_arg, write_report)
from zoo.models.rim_seq import SequenceModel, model_family

__all__ = ["Config", "run", "main", "model_kwargs", "model_lr", "DEFAULT_LR", "build_model", "classify", "accuracy",
           "BestWeights", "unit_activity", "PAPER", "NUM_CLASSES"]

NUM_CLASSES = 10
#: thesis Table 1 (right), test accuracy after training at 14x14: RIMs (6 units, k_A = 4, hidden 600), LSTM (600)
PAPER = {"RIM (paper)": {16: 0.900, 19: 0.734, 24: 0.381}, "LSTM (paper)": {16: 0.845, 19: 0.522, 24: 0.219}}
#: digits used for the ink / background activity rates of RIM units
ACTIVITY_DIGITS = 200
#: the default model kwargs: both models at hidden 96 (RIM: 6 units of 16, k_A = 4), the size whose 3-seed
#: default finishes in 15 minutes on a 2-core CPU (the sweep in docs/seq_mnist.md)
CPU_KWARGS = {"rim_lstm_seq_small": {"hidden_size": 96}, "lstm_seq_small": {"hidden_size": 96}}


def _check_model(name: str) -> Optional[str]:
    names = zoo.list_models("*seq*")
    if name in names:
        return None
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"a registered sequence model: {', '.join(names)}" + (f" (did you mean {close[0]}?)" if close else "")


@dataclass
class Config(RunConfig):
    """Sequential MNIST (thesis ch. 8, Table 1 right): train at 14x14, test at 16, 19, 24; RIMs vs LSTM."""

    seeds: int = arg(3, help="seeds per model (seed, seed+1, ...); tables show mean ± std", ge=1)
    models: List[str] = arg(["rim_lstm_seq_small", "lstm_seq_small"],
                            unique=True, help="registered sequence models to compare (zoo.list_models('*seq*'))",
                            check=lambda names: next(filter(None, map(_check_model, names)), None))
    dataset: str = arg("digits", help="digits = 5,000 embedded MNIST digits (offline, fixed 4,000/1,000 split); "
                                      "mnist = full MNIST from --data-root (torchvision layout or MNIST/raw IDX files)",
                       choices=SEQ_DATASETS)
    data_root: str = arg("data", help="folder holding MNIST/raw/*-ubyte (--dataset mnist)")
    download: bool = arg(False, help="let torchvision download MNIST into --data-root")
    input: str = arg("tokens", help="tokens = pixels binarized at 0.5, an embedding (paper); pixels = grey levels, "
                                    "a linear input", choices=INPUTS)
    train_resolution: int = arg(14, help="train on size x size digits (paper: 14, 196 steps)", ge=2)
    test_resolutions: List[int] = arg([14, 16, 19, 24], help="sizes to test (paper: 16 19 24; any list, e.g. 10 12 28)",
                                      ge=2)
    val_fraction: float = arg(0.2, help="part of the training digits held out for validation (paper: 0.2, "
                                        "48k/12k); 0: no validation, test the last step", ge=0, lt=1)
    steps: int = arg(1000, help="optimizer steps per model and seed", ge=1)
    batch_size: int = arg(64, help="training batch size (paper: 64)", ge=1)
    lr: List[float] = arg([], help="peak Adam learning rate: one for every model, or one per --models entry in the "
                                    "same order; none (the default): 4e-3 for RIM models, 2e-3 for the others (each "
                                    "family's best in the sweep at the default size; paper: 7e-4)", gt=0,
                          allow_empty=True)
    schedule: str = arg("cosine", choices=SCHEDULES, help="learning-rate schedule: constant (paper), or cosine "
                                                  "decay to 0 at --steps (after --warmup)")
    warmup: float = warmup_arg()
    clip_grad: float = arg(1.0, help="gradient-norm clip (paper: 1.0; 0: none)", ge=0)
    precision: str = precision_arg()
    eval_every: int = arg(250, help="validation accuracy at the training size every this many steps, and at the "
                                    "end; the test uses the best step's weights (0: only at the end)", ge=0)
    val_size: int = arg(0, help="validation digits per evaluation (0: all of the validation split)", ge=0)
    test_size: int = arg(0, help="test digits per resolution (0: all; 1,000 for digits, 10,000 for mnist)", ge=0)
    compile: bool = arg(True, help="run the RIM time step through torch.compile (see benchmarks/seq_mnist_t576.py; "
                                    "the first run compiles for about a minute, later runs load the cache; eager "
                                    "where compiling fails)")
    model_kwargs: str = arg(json.dumps(CPU_KWARGS),
                            help='JSON extra model kwargs for every model, e.g. \'{"hidden_size": 120}\', or per '
                                 'model: \'{"rim_lstm_seq_small": {"k_active": 3}, "lstm_seq_small": {}}\' ("*": '
                                 "every model); the default's entries for models not in --models are ignored, and "
                                 "'{}' gives the registered sizes (hidden 192)")
    out: str = arg("runs/seq_mnist", help="output folder", path="out_dir")

    def check(self) -> None:
        super().check()
        check_per_model(self.lr, self.models, "--lr")
        for name in self.models:                   # build on the meta device: no memory, no time
            try:
                with torch.device("meta"):
                    build_model(name, self.input, model_kwargs(self, name))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"--model-kwargs {self.model_kwargs} do not fit {name}: "
                                  f"{str(e).splitlines()[0]}") from None
        if self.val_fraction == 0 and self.eval_every:
            raise ConfigError(f"--eval-every {self.eval_every} needs a validation set: with --val-fraction 0 the "
                              f"last step is tested, so also pass --eval-every 0")
        if self.dataset == "mnist" and not self.download:
            missing = dataset_missing("mnist", self.data_root)
            if missing:
                raise ConfigError(f"--dataset {missing}")


def model_kwargs(cfg: Config, name: str) -> dict:
    """The extra kwargs of model ``name``: ``compile=cfg.compile``, then ``--model-kwargs``
    (:func:`zoo.engine.per_model_kwargs`: one object for every model, or ``{"*": {...}, "<model>": {...}}``),
    which may override it."""
    return {"compile": cfg.compile,
            **per_model_kwargs(cfg.model_kwargs, cfg.models, default=json.dumps(CPU_KWARGS))[name]}


def build_model(name: str, input: str = "tokens", kwargs: Optional[dict] = None) -> SequenceModel:
    """A registered sequence model for the task: 2 tokens (``input="tokens"``) or 1 grey level per step,
    10 classes."""
    source = {"num_tokens": 2} if input == "tokens" else {"input_size": 1}
    # every registered "*seq*" model (the names --models accepts) is a SequenceModel
    return cast(SequenceModel, zoo.create_model(name, num_classes=NUM_CLASSES, **source, **(kwargs or {})))


def classify(model: SequenceModel, x: torch.Tensor) -> torch.Tensor:
    """Class logits ``(B, 10)`` from the last step of the sequence (the reference's ``output[-1]``);
    the head runs on that step only."""
    features, _ = model.forward_core(x)
    return model.forward_head(features[:, -1])


@torch.no_grad()
def accuracy(model: SequenceModel, images: torch.Tensor, labels: torch.Tensor, size: int, input: str,
             device: torch.device, chunk: int = 500) -> float:
    """Accuracy on digits ``(N, 1, 28, 28)`` fed as ``size x size`` pixel sequences (eval mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(images), chunk):
        x = pixel_sequences(images[i:i + chunk], size, input).to(device)
        correct += int((classify(model, x).argmax(-1).cpu() == labels[i:i + chunk]).sum())
    model.train(was_training)
    return correct / len(images)


class BestWeights:
    """The weights of the best validation accuracy so far, kept in the checkpoint (``fit``'s ``extra_state``)
    so that a resumed run selects the same step. ``track`` is a ``fit`` callback that tells it the step."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.now, self.step, self.acc = model, 0, 0, -1.0
        self.weights: Optional[Dict[str, torch.Tensor]] = None

    def track(self, step: int, _model: torch.nn.Module) -> None:
        self.now = step

    def offer(self, acc: float) -> float:
        """Keep the current weights if ``acc`` beats the best so far (the earliest step wins ties)."""
        if acc > self.acc:
            self.acc, self.step = acc, self.now
            self.weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return acc

    def restore(self) -> None:
        if self.weights is not None:
            self.model.load_state_dict(self.weights)

    def state_dict(self) -> dict:
        return {"now": self.now, "step": self.step, "acc": self.acc, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.now, self.step, self.acc, self.weights = state["now"], state["step"], state["acc"], state["weights"]


def _subset(split: Optional[Tuple[torch.Tensor, torch.Tensor]], n: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    if split is None or not n:
        return split
    return split[0][:n], split[1][:n]


def _run_dir(cfg: Config, model_name: str, seed: int) -> Path:
    return Path(cfg.out) / model_name / f"seed{seed}"


def _load(cfg: Config) -> dict:
    try:
        return seq_mnist_splits(cfg.dataset, cfg.data_root, cfg.download, cfg.val_fraction)
    except FileNotFoundError as e:
        raise RunError(f"{str(e).splitlines()[0]}") from None


#: the default peak learning rates (no ``--lr``): RIM models, and the LSTM / GRU baselines
DEFAULT_LR = {"rim": 4e-3, "baseline": 2e-3}


def model_lr(cfg: Config, name: str) -> float:
    """The peak learning rate of model ``name``: the single ``--lr``, the one at ``name``'s place in
    ``--models``, or without ``--lr`` :data:`DEFAULT_LR` of its family."""
    return per_model_value(cfg.lr, cfg.models, name, DEFAULT_LR[model_family(name)])


def run_meta(cfg: Config, model_name: str, seed: int) -> Dict[str, Any]:
    """The options that define run ``(model_name, seed)``, checked on ``--resume``
    (:func:`zoo.engine.run_options`): without the list of models, with this model's learning rate and kwargs resolved, so
    adding, dropping or reordering ``--models`` entries reuses the finished runs."""
    return run_options(cfg, exclude=("models",), model=model_name, seed=seed, lr=model_lr(cfg, model_name),
                       model_kwargs=model_kwargs(cfg, model_name))


def train_one(cfg: Config, model_name: str, seed: int, position: int = 0) -> dict:
    """Train one (model, seed) at ``train_resolution`` and test the best-validation weights at every
    ``test_resolutions``; runs in a worker process."""
    device = resolve_device(cfg.device)
    seed_everything(seed)
    data = _load(cfg)
    model = build_model(model_name, cfg.input, model_kwargs(cfg, model_name)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=model_lr(cfg, model_name))
    best = BestWeights(model)
    val = _subset(data["val"], cfg.val_size)

    def step_fn(m, batch):
        x, y = batch
        logits = classify(m, x)
        return F.cross_entropy(logits, y), {"acc": float((logits.argmax(-1) == y).float().mean())}

    def eval_fn(m):
        return {"val_acc": best.offer(accuracy(m, *val, cfg.train_resolution, cfg.input, device))}

    result = fit(model, optimizer, seq_mnist_batches(data["train"], cfg.train_resolution, cfg.batch_size, seed,
                                                     cfg.input), step_fn,
                 steps=cfg.steps, device=device, out_dir=_run_dir(cfg, model_name, seed), clip_grad=cfg.clip_grad,
                 precision=cfg.precision,
                 log_every=cfg.log_every,
                 scheduler=lr_schedule(optimizer, cfg.schedule, cfg.steps, int(cfg.warmup * cfg.steps)),
                 eval_fn=eval_fn if val is not None else None, eval_every=cfg.eval_every,
                 ckpt_every=cfg.checkpoint_every, resume=cfg.resume, run_meta=run_meta(cfg, model_name, seed), callbacks=(best.track,),
                 extra_state={"best": best}, desc=f"{model_name} s{seed}", progress=cfg.progress,
                 position=position)
    best.restore()
    test = _subset(data["test"], cfg.test_size)
    assert test is not None                                  # seq_mnist_splits always has a test split
    tests = {str(r): accuracy(model, *test, r, cfg.input, device) for r in cfg.test_resolutions}
    out = {"model": model_name, "seed": seed, "seconds": result.seconds, "tests": tests,
           "best_step": best.step if val is not None else cfg.steps,
           "best_val": best.acc if val is not None else None, "curve": result.eval_history}
    if isinstance(getattr(model, "core", None), zoo.RIM):
        sizes = sorted({cfg.train_resolution, max(cfg.test_resolutions)})
        out["activity"] = unit_activity(model, test[0][:ACTIVITY_DIGITS], sizes, cfg.input, device)
    return out


@torch.no_grad()
def unit_activity(model: SequenceModel, images: torch.Tensor, sizes: Sequence[int], input: str,
                  device: torch.device) -> dict:
    """Which RIM units (first layer) are active at each pixel, per size: the mask of the first digit
    ``(U, size * size)`` for the picture, and each unit's active rate on ink and on background pixels over
    all ``images`` (units that switch with ink vs background have very different rates)."""
    model.eval()
    out: dict = {"digit": {}, "ink_rate": {}, "background_rate": {}, "ink": {}}
    for size in sizes:
        x = pixel_sequences(images, size, input).to(device)
        _, _, info = model.forward_core(x, return_info=True)
        mask = info.mask[:, 0].permute(1, 2, 0).float().cpu()                # (N, U, T)
        ink = pixel_sequences(images, size, "tokens").float().unsqueeze(1)    # (N, 1, T)
        key = str(size)
        out["digit"][key] = mask[0].tolist()
        out["ink"][key] = ink[0, 0].tolist()
        out["ink_rate"][key] = ((mask * ink).sum((0, 2)) / ink.sum().clamp(min=1)).tolist()
        out["background_rate"][key] = ((mask * (1 - ink)).sum((0, 2)) / (1 - ink).sum().clamp(min=1)).tolist()
    return out


# --- results, tables and pictures -----------------------------------------------------------------------
def summarize(cfg: Config, runs: List[dict]) -> dict:
    """``{model: {"14": {"acc", "acc_std", "per_seed"}, ...}}``: test accuracy per resolution over seeds."""
    results: dict = {}
    for name in cfg.models:
        mine = [r for r in runs if r["model"] == name]
        results[name] = {}
        for size in map(str, cfg.test_resolutions):
            accs = [r["tests"][size] for r in mine]
            stats = summarize_seeds([{"acc": a} for a in accs])["acc"]
            results[name][size] = {"acc": stats["mean"], "acc_std": stats["std"], "per_seed": accs}
    return results


def _header(cfg: Config) -> List[str]:
    return ["model"] + [f"{s}x{s}" + (" (train)" if s == cfg.train_resolution else "") for s in cfg.test_resolutions]


def results_table(cfg: Config, runs: List[dict]) -> str:
    rows: List[List[Any]] = []
    for name in cfg.models:
        mine = [r for r in runs if r["model"] == name]
        cells = [fmt_mean_std(summarize_seeds([{"a": r["tests"][str(s)]} for r in mine])["a"])
                 for s in cfg.test_resolutions]
        rows.append([name] + cells + [len(mine), _best_steps(mine)])
    for label, accs in PAPER.items():
        if any(s in accs for s in cfg.test_resolutions) and cfg.train_resolution == 14:
            rows.append([label] + [f"{accs[s]:.3f}" if s in accs else "-" for s in cfg.test_resolutions] + ["3", "-"])
    return markdown_table(_header(cfg) + ["seeds", "selected steps"], rows)


def _best_steps(runs: List[dict]) -> str:
    return " ".join(str(r["best_step"]) for r in runs)


def activity_table(cfg: Config, runs: List[dict]) -> str:
    """Each RIM unit's active rate on ink and on background pixels (mean over seeds), per size."""
    rims = [r for r in runs if "activity" in r]
    if not rims:
        return ""
    lines = [f"\nRIM unit activity on {ACTIVITY_DIGITS} test digits (first layer; rate active on ink / on "
             "background pixels, mean over seeds; units that switch with the ink have very different rates):\n"]
    for name in dict.fromkeys(r["model"] for r in rims):
        mine = [r for r in rims if r["model"] == name]
        for size in mine[0]["activity"]["ink_rate"]:
            ink = np.mean([r["activity"]["ink_rate"][size] for r in mine], axis=0)
            bg = np.mean([r["activity"]["background_rate"][size] for r in mine], axis=0)
            units = " ".join(f"u{i} {a:.2f}/{b:.2f}" for i, (a, b) in enumerate(zip(ink, bg)))
            lines.append(f"- {name} at {size}x{size}: {units}")
    return "\n".join(lines) + "\n"


def plot_accuracy(cfg: Config, runs: List[dict], path: Path) -> Path:
    """Table 1 (right) as a picture: test accuracy against resolution, mean ± std band and every seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(cfg.test_resolutions)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, name in enumerate(cfg.models):
        accs = np.array([[r["tests"][str(s)] for s in sizes] for r in runs if r["model"] == name])
        mean, std = accs.mean(0), (accs.std(0, ddof=1) if len(accs) > 1 else np.zeros(len(sizes)))
        ax.plot(sizes, mean, "o-", color=f"C{i}", label=f"{name} ({len(accs)} seeds)")
        ax.fill_between(sizes, mean - std, mean + std, color=f"C{i}", alpha=0.2)
        for a in accs:
            ax.plot(sizes, a, ".", color=f"C{i}", alpha=0.5, ms=5)
    if cfg.train_resolution == 14:
        for j, (label, paper_accs) in enumerate(PAPER.items()):
            xs = [s for s in sorted(paper_accs) if s in sizes]
            if xs:
                ax.plot(xs, [paper_accs[s] for s in xs], "s--", mfc="none", color="grey" if j else "black", lw=1,
                        label=f"{label}, full MNIST")
    ax.axvline(cfg.train_resolution, color="grey", ls=":", lw=1)
    ax.axhline(0.1, color="grey", ls="--", lw=0.8)
    ax.text(cfg.train_resolution, 0.02, " train", color="grey", fontsize=8)
    ax.set_xticks(sizes, [f"{s}\n({s * s})" for s in sizes])
    ax.set_xlabel("test resolution (sequence length)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Sequential MNIST ({cfg.dataset}), trained at {cfg.train_resolution}x{cfg.train_resolution}",
                 fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_activity(cfg: Config, runs: List[dict], path: Path) -> Optional[Path]:
    """Which RIM units are active along the pixel sequence of one test digit, drawn on the digit: one panel
    per unit and size, active pixels dark, the digit's ink outlined in red."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = next((r for r in runs if "activity" in r and r["seed"] == cfg.seed), None)
    if run is None:
        return None
    act = run["activity"]
    sizes = list(act["digit"])
    units = len(act["digit"][sizes[0]])
    fig, axes = plt.subplots(len(sizes), units + 1, figsize=(1.45 * (units + 1), 1.6 * len(sizes) + 0.4),
                             squeeze=False)
    for row, size in zip(axes, sizes):
        s = int(size)
        ink = np.asarray(act["ink"][size]).reshape(s, s)
        row[0].imshow(ink, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        row[0].set_title(f"digit {s}x{s}", fontsize=8)
        for u in range(units):
            m = np.asarray(act["digit"][size][u]).reshape(s, s)
            ax = row[u + 1]
            ax.imshow(m, cmap="Greys", vmin=0, vmax=1.6, interpolation="nearest")
            ax.contour(ink, levels=[0.5], colors="red", linewidths=0.7)
            ax.set_title(f"unit {u}: ink {act['ink_rate'][size][u]:.2f}\nbg {act['background_rate'][size][u]:.2f}",
                         fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{run['model']} (seed {run['seed']}): active units (dark) at each pixel, ink outlined; rates over "
                 f"{ACTIVITY_DIGITS} test digits", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(cfg: Config, runs: List[dict], path: Path) -> Optional[Path]:
    """Validation accuracy at the training size during training, one line per (model, seed)."""
    if not any(r["curve"] for r in runs):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, name in enumerate(cfg.models):
        for r in (r for r in runs if r["model"] == name):
            ax.plot([h["step"] for h in r["curve"]], [h["val_acc"] for h in r["curve"]], color=f"C{i}", alpha=0.8,
                    label=name if r["seed"] == cfg.seed else None)
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation accuracy at {cfg.train_resolution}x{cfg.train_resolution}")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PROG = "python -m tasks.seq_mnist"


def run(cfg: Config, command: Optional[str] = None) -> dict:
    """Train and test every model x seed of ``cfg``; write the report; return ``results``."""
    command = command or command_line(PROG, [])
    if cfg.download:
        _load(cfg)                                    # download once, here, not in every worker at the same time
    runs, wall, out = run_grid(cfg, train_one, cfg.models, "seq_mnist",
                               f"; {cfg.dataset}, train {cfg.train_resolution}x{cfg.train_resolution}, test "
                               f"{cfg.test_resolutions}, {cfg.steps} steps each", command=command)
    results = summarize(cfg, runs)
    table = results_table(cfg, runs)
    figures = (plot_accuracy(cfg, runs, out / "accuracy.png"), plot_activity(cfg, runs, out / "activity.png"),
               plot_curves(cfg, runs, out / "curves.png"))
    timing = {"train_seconds": per_run(runs)}
    extra = ("\nTest accuracy (mean ± std over seeds) with the weights of the best validation accuracy at "
             f"{cfg.train_resolution}x{cfg.train_resolution}; 'selected steps' lists that step per seed. Paper rows: "
             "thesis Table 1, full MNIST, 6 units of 100 / LSTM 600.\n" + activity_table(cfg, runs))
    write_report(out, cfg, results, wall, f"Sequential MNIST: train {cfg.train_resolution}x{cfg.train_resolution}, "
                 f"test {cfg.test_resolutions}", command, table, extra=extra, figures=figures, timing=timing)
    return results


def main(argv: Optional[List[str]] = None) -> dict:
    return run(parse_config(Config, argv, prog=PROG), command_line(PROG, argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
