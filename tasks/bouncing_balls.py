"""Bouncing balls: RIMs on objects (thesis ch. 8.4.2, Fig. 3).

Train next-frame prediction on 4 balls (teacher forcing, per-pixel binary cross-entropy, gradient clip 1.0),
then feed 15 true frames and roll out 35 more, feeding back the model's own probabilities; compare the
per-frame cross-entropy on 4 balls, on 6-8 balls (never seen) and on 3 balls behind a curtain (never seen).

    python -m tasks.bouncing_balls                  # RIM vs LSTM at 32x32, seeds; see docs/bouncing_balls.md
    python -m tasks.bouncing_balls --generate-only --balls 6 8 --sequences 1000 --out data/balls
    python -m tasks.bouncing_balls --help

Data come from :mod:`zoo.data.bouncing_balls` (physics, rendering, curtain), models from
:mod:`zoo.models.balls` (encoder -> RIM / LSTM / GRU core -> decoder).

Metrics, for each test set: ``per_frame[k]`` is the cross-entropy of the prediction of frame ``k + 1``
summed over the frame's pixels (nats per frame), averaged over the test sequences; entries ``0..14`` are
teacher-forced (true input frames 0..14), entries ``15..49`` are the rollout (inputs 15..49 are the model's
own probabilities). ``rollout_bce`` is the mean of the 35 rollout entries.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, cast

import numpy as np
import torch
import torch.nn.functional as F

import zoo
from zoo.data.bouncing_balls import BOX, BouncingBalls, describe, generate
from zoo.models.balls import BallsVideoModel
from zoo.engine import (per_run, 
    ConfigError,
    MapStream,
    RunConfig,
    ShuffledBatches,
    arg,
    command_line,
    run_options,
    fit,
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
from zoo.engine.results import fmt_mean_std

PROG = "python -m tasks.bouncing_balls"


# --------------------------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------------------------

def to_frames(batch: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, T, H, W)`` or ``(B, T, 1, H, W)`` in {0, 1} -> float ``(B, T, 1, H, W)``."""
    x = batch.float()
    return x.unsqueeze(2) if x.dim() == 4 else x


def teacher_forced_loss(model: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy of predicting frame ``t + 1`` from true frames ``0..t``, every ``t``."""
    logits = model(frames[:, :-1])
    return F.binary_cross_entropy_with_logits(logits, frames[:, 1:])


def frame_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per frame, summed over its pixels: ``(B, T, C, H, W)`` -> ``(B, T)``."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).sum(-1)


@torch.no_grad()
def evaluate_rollout(model: BallsVideoModel, frames: torch.Tensor, context: int = 15,
                     batch_size: int = 100, device: torch.device = torch.device("cpu")) -> Dict[str, object]:
    """Feed ``context`` true frames, roll out to the end of the sequences, score every predicted frame.

    Args:
        frames: ``(N, T, 1, H, W)`` (or uint8 ``(N, T, H, W)``); the rollout is ``T - 1 - context`` steps.

    Returns:
        ``per_frame`` (``T - 1`` floats: nats per frame, mean over sequences; entry ``k`` predicts frame
        ``k + 1``), ``rollout_bce`` (mean of the entries from ``context`` on), ``context_bce`` (mean of the
        teacher-forced entries before ``context``) and ``teacher_forced_bce`` (mean over all ``T - 1``
        frames when every input is true, the training criterion in nats per frame).
    """
    was = model.training
    model.eval()
    T = frames.shape[1]
    steps = T - 1 - context
    if steps < 1:
        raise ValueError(f"sequences of {T} frames leave no rollout after {context} context frames")
    roll_sum = torch.zeros(T - 1, dtype=torch.float64)
    tf_sum = torch.zeros(T - 1, dtype=torch.float64)
    for s in range(0, len(frames), batch_size):
        x = to_frames(frames[s:s + batch_size]).to(device)
        logits = model.rollout(x, context, steps)                            # (B, T-1, ...)
        roll_sum += frame_bce(logits, x[:, 1:]).sum(0).double().cpu()
        tf_sum += frame_bce(model(x[:, :-1]), x[:, 1:]).sum(0).double().cpu()
    model.train(was)
    per_frame = (roll_sum / len(frames)).tolist()
    return {"per_frame": per_frame, "rollout_bce": float(np.mean(per_frame[context:])),
            "context_bce": float(np.mean(per_frame[:context])),
            "teacher_forced_bce": float((tf_sum / len(frames)).mean())}


@torch.no_grad()
def rollout_example(model: BallsVideoModel, frames: torch.Tensor, context: int, device: torch.device
                    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """One sequence's predicted frames (probabilities, uint8 0..255, ``(T - 1, H, W)``) and, for RIM cores,
    its active-unit mask ``(T - 1, num_units)``."""
    model.eval()
    x = to_frames(frames[:1]).to(device)
    logits, mask = model.rollout(x, context, x.shape[1] - 1 - context, return_info=True)
    probs = (torch.sigmoid(logits[0, :, 0]) * 255).round().byte().cpu().numpy()
    return probs, (None if mask is None else mask[:, 0].cpu().numpy().astype(np.uint8))


# --------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------

def _balls_check(v: List[int]) -> Optional[str]:
    if len(v) not in (1, 2) or v[0] < 1 or v[0] > v[-1]:
        return "one count N >= 1, or a range LOW HIGH with 1 <= LOW <= HIGH"
    return None


def parse_test_set(spec: str) -> Tuple[Tuple[int, int], bool]:
    """``"4"`` -> ``((4, 4), False)``, ``"6-8"`` -> ``((6, 8), False)``, ``"curtain"`` -> ``(None, True)``."""
    if spec == "curtain":
        return (0, 0), True
    parts = spec.split("-")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise ValueError(spec)
    lo, hi = int(parts[0]), int(parts[-1])
    if lo < 1 or lo > hi:
        raise ValueError(spec)
    return (lo, hi), False


def _test_sets_check(v: List[str]) -> Optional[str]:
    try:
        for s in v:
            parse_test_set(s)
    except ValueError:
        return "ball counts N, ranges LOW-HIGH (e.g. 6-8) and 'curtain'"
    if len(set(v)) != len(v):
        return "distinct test sets"
    return None


def _radii_check(v: List[float]) -> Optional[str]:
    if len(v) not in (1, 2) or v[0] <= 0 or v[0] > v[-1] or 2 * v[-1] >= BOX:
        return f"one radius or LOW HIGH with 0 < LOW <= HIGH < {BOX / 2:g} (box units; the box side is {BOX:g})"
    return None


def _rect_check(v: List[float]) -> Optional[str]:
    if len(v) != 4 or not (v[0] < v[2] and v[1] < v[3]):
        return f"X0 Y0 X1 Y1 with X0 < X1 and Y0 < Y1 (box units, 0..{BOX:g}; x columns, y rows)"
    return None


def balls_models() -> List[str]:
    return zoo.list_models("*balls*")


@dataclass
class Config(RunConfig):
    """Bouncing balls (thesis ch. 8.4.2, Fig. 3): train on 4 balls, roll out on 4, 6-8 balls and behind a curtain."""

    models: List[str] = arg(["rim_lstm_balls_small", "lstm_balls_small"],
                            unique=True, help="registered bouncing-balls models to compare (zoo.list_models('*balls*'))")
    generate_only: bool = arg(False, help="only write one data set (--balls, --sequences, --curtain, ...) to "
                                          "--out as .npz, then stop")
    balls: List[int] = arg([4], help="balls per training sequence, or a range LOW HIGH (with --generate-only: "
                                     "the data set's balls)", check=_balls_check)
    sequences: Optional[int] = arg(None, help="--generate-only: sequences in the data set (default 1000)", ge=1)
    curtain: bool = arg(False, help="--generate-only: hide the balls behind --curtain-rect")
    test_sets: List[str] = arg(["4", "6-8", "curtain"], help="test sets: ball counts N, ranges LOW-HIGH, and "
                               "'curtain' (--curtain-balls behind --curtain-rect)", check=_test_sets_check)
    curtain_balls: int = arg(3, help="balls in the curtain test set", ge=1)
    curtain_rect: List[float] = arg([3.5, 0.0, 6.5, 10.0], help="the curtain X0 Y0 X1 Y1 in box units "
                                    "(box side 10; x columns, y rows)", check=_rect_check)
    radii: List[float] = arg([0.8, 1.2], help="ball radius, or LOW HIGH drawn per ball (box units); masses are "
                                              "proportional to radii", check=_radii_check)
    resolution: int = arg(32, help="frame side in pixels (64: the standard data; 32: the CPU default)", ge=8,
                          le=512)
    frames: int = arg(51, help="frames per sequence (51, the standard)", ge=3, le=1000)
    context: int = arg(15, help="true frames fed before the rollout (thesis: 15, then 35 rolled out)", ge=1)
    train_sequences: int = arg(2000, help="training sequences (a fixed set, the same for every model and seed)",
                               ge=1)
    test_sequences: int = arg(200, help="sequences per test set", ge=1)
    data_seed: int = arg(0, help="seed of the data sets (training, test and --generate-only)", ge=0)
    steps: int = arg(800, help="optimizer steps per model and seed", ge=1)
    batch_size: int = arg(16, help="training batch size (sequences)", ge=1)
    lr: float = arg(2e-3, help="Adam learning rate", gt=0)
    clip_grad: float = arg(1.0, help="gradient-norm clip (thesis protocol: 1.0; 0 disables)", ge=0)
    precision: str = precision_arg()
    eval_every: int = arg(200, help="log teacher-forced and rollout BCE on 32 test sequences every this many "
                                    "steps (0: only at the end)", ge=0)
    model_kwargs: str = arg("{}", help='JSON object of extra model kwargs, shared (\'{"k_active": 3}\') or per '
                                       'model (\'{"*": {...}, "rim_lstm_balls_small": {"k_active": 3}}\')')
    seeds: int = arg(3, help="seeds per model (seed, seed+1, ...); tables show mean ± std", ge=1)
    out: str = arg("runs/bouncing_balls", help="output folder", path="out_dir")

    def check(self) -> None:
        super().check()
        if self.generate_only:
            return
        if self.curtain:
            raise ConfigError("--curtain applies to --generate-only; in training the curtain set is "
                              "'--test-sets ... curtain'")
        if self.sequences is not None:
            raise ConfigError("--sequences applies to --generate-only; in training use --train-sequences "
                              "and --test-sequences")
        if self.resolution % 8:
            raise ConfigError(f"--resolution {self.resolution} is not allowed; the models need a multiple of 8 "
                              "(32 or 64)")
        if self.context >= self.frames - 1:
            raise ConfigError(f"--context {self.context} leaves no rollout in {self.frames} frames; allowed: "
                              f"--context <= {self.frames - 2}")
        known = balls_models()
        for name in self.models:
            if name not in known:
                raise ConfigError(f"--models {name!r} is not a bouncing-balls model; allowed: {', '.join(known)}")
        kwargs = per_model_kwargs(self.model_kwargs, self.models)
        for name in self.models:                   # build on the meta device: no memory, no time
            try:
                with torch.device("meta"):
                    zoo.create_model(name, img_size=self.resolution, **kwargs[name])
            except (TypeError, ValueError) as e:
                raise ConfigError(f"--model-kwargs {self.model_kwargs} do not fit {name}: "
                                  f"{str(e).splitlines()[0]}") from None


# --------------------------------------------------------------------------------------------------------
# data sets of a run
# --------------------------------------------------------------------------------------------------------

def _gen_kwargs(cfg: Config) -> dict:
    return dict(frames=cfg.frames, resolution=cfg.resolution, radii=tuple(cfg.radii))


def set_spec(cfg: Config, name: str) -> Dict[str, Any]:
    """The generator arguments of test set ``name`` (seeded apart from the training set and each other)."""
    rng, curtain = parse_test_set(name)
    offset = 1 + cfg.test_sets.index(name)
    if curtain:
        return dict(balls=cfg.curtain_balls, curtain=tuple(cfg.curtain_rect), seed=cfg.data_seed * 1000 + offset)
    return dict(balls=rng, curtain=None, seed=cfg.data_seed * 1000 + offset)


def make_data(cfg: Config, folder: Path) -> Dict[str, Path]:
    """Generate the training set and every test set into ``folder`` (reused when already there and equal)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    specs: Dict[str, Dict[str, Any]] = {
        "train": dict(balls=tuple(cfg.balls), curtain=None, seed=cfg.data_seed * 1000, n=cfg.train_sequences)}
    for name in cfg.test_sets:
        specs[name] = {**set_spec(cfg, name), "n": cfg.test_sequences}
    for name, spec in specs.items():
        path = folder / f"{name}.npz"
        key = json.dumps({**spec, **_gen_kwargs(cfg)}, sort_keys=True, default=list)
        stamp = path.with_suffix(".json")
        if not (path.exists() and stamp.exists() and stamp.read_text() == key):
            data = generate(spec["n"], spec["balls"], curtain=spec["curtain"], seed=spec["seed"], **_gen_kwargs(cfg))
            data.save(path)
            stamp.write_text(key)
        paths[name] = path
    return paths


# --------------------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------------------

def _run_dir(cfg: Config, model_name: str, seed: int) -> Path:
    return Path(cfg.out) / model_name / f"seed{seed}"


def run_meta(cfg: Config, model_name: str, seed: int) -> Dict[str, Any]:
    """The options that define run ``(model_name, seed)``, checked on ``--resume``
    (:func:`zoo.engine.run_options`): without the list of models, with this model's kwargs resolved, so
    adding, dropping or reordering ``--models`` entries reuses the finished runs."""
    return run_options(cfg, exclude=("models",), model=model_name, seed=seed,
                       model_kwargs=per_model_kwargs(cfg.model_kwargs, cfg.models)[model_name])


def train_one(cfg: Config, model_name: str, seed: int, position: int = 0) -> dict:
    """Train one (model, seed) with teacher forcing, then roll out on every test set; runs in a worker."""
    torch.set_num_threads(cfg.threads)
    cpu0 = time.process_time()
    device = resolve_device(cfg.device)
    paths = {name: Path(cfg.out) / "data" / f"{name}.npz" for name in ["train", *cfg.test_sets]}
    train = torch.from_numpy(BouncingBalls.load(paths["train"]).frames)               # (N, T, H, W) uint8
    tests = {name: torch.from_numpy(BouncingBalls.load(paths[name]).frames) for name in cfg.test_sets}
    seed_everything(seed)
    # every registered "*balls*" model (the names Config accepts) is a BallsVideoModel
    model = cast(BallsVideoModel, zoo.create_model(model_name, img_size=cfg.resolution,
                                                   **per_model_kwargs(cfg.model_kwargs, cfg.models)[model_name])
                 ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = MapStream(ShuffledBatches(train, batch_size=cfg.batch_size, seed=seed), to_frames)

    def step_fn(m, frames):
        return teacher_forced_loss(m, frames), {}

    probe = tests[cfg.test_sets[0]][:32]

    def eval_fn(m):
        r = evaluate_rollout(m, probe, cfg.context, device=device)
        return {"rollout_bce": r["rollout_bce"], "teacher_forced_bce": r["teacher_forced_bce"]}

    result = fit(model, optimizer, batches, step_fn, steps=cfg.steps, device=device,
                 out_dir=_run_dir(cfg, model_name, seed), precision=cfg.precision, clip_grad=cfg.clip_grad or None,
                 log_every=cfg.log_every, eval_fn=eval_fn, eval_every=cfg.eval_every,
                 ckpt_every=cfg.checkpoint_every, resume=cfg.resume, desc=f"{model_name} s{seed}",
                 run_meta=run_meta(cfg, model_name, seed),
                 progress=cfg.progress, position=position)
    scores = {name: evaluate_rollout(model, frames, cfg.context, device=device) for name, frames in tests.items()}
    cpu = time.process_time() - cpu0
    out = {"model": model_name, "seed": seed, "seconds": result.seconds, "cpu_seconds": cpu, "tests": scores,
           "curve": result.eval_history}
    print(f"{model_name} s{seed}: trained in {result.seconds:.0f} s, train + test {cpu:.0f} s of CPU; rollout BCE "
          + ", ".join(f"{k} {v['rollout_bce']:.1f}" for k, v in scores.items()))
    if seed == cfg.seed:                                     # pictures: the first seed's rollouts
        out["examples"] = {name: rollout_example(model, frames, cfg.context, device)
                           for name, frames in tests.items()}
    return out


# --------------------------------------------------------------------------------------------------------
# results, table, figures
# --------------------------------------------------------------------------------------------------------

def summarize(cfg: Config, runs: List[dict]) -> dict:
    """``results[model][test set]``: ``rollout_bce`` (mean over seeds), ``rollout_bce_std``, ``per_frame``
    (mean over seeds), and per-seed values."""
    results: dict = {}
    for name in cfg.models:
        mine = [r for r in runs if r["model"] == name]
        results[name] = {}
        for test in cfg.test_sets:
            per_seed = [r["tests"][test] for r in mine]
            stats = summarize_seeds([{k: s[k] for k in ("rollout_bce", "context_bce", "teacher_forced_bce")}
                                     for s in per_seed])
            results[name][test] = {
                "rollout_bce": stats["rollout_bce"]["mean"], "rollout_bce_std": stats["rollout_bce"]["std"],
                "per_frame": np.mean([s["per_frame"] for s in per_seed], axis=0).tolist(),
                "context_bce": stats["context_bce"]["mean"],
                "teacher_forced_bce": stats["teacher_forced_bce"]["mean"],
                "per_seed": [{"seed": r["seed"], "rollout_bce": r["tests"][test]["rollout_bce"]} for r in mine]}
    return results


def results_table(cfg: Config, runs: List[dict]) -> str:
    header = ["model", *[f"rollout BCE {t}" for t in cfg.test_sets], "teacher-forced BCE (train dist.)", "seeds"]
    rows = []
    for name in cfg.models:
        mine = [r for r in runs if r["model"] == name]
        cells = [fmt_mean_std(summarize_seeds([{"v": r["tests"][t]["rollout_bce"]} for r in mine])["v"], 2)
                 for t in cfg.test_sets]
        tf = summarize_seeds([{"v": r["tests"][cfg.test_sets[0]]["teacher_forced_bce"]} for r in mine])["v"]
        rows.append([name, *cells, fmt_mean_std(tf, 2), len(mine)])
    return markdown_table(header, rows)


def comparison(cfg: Config, runs: List[dict]) -> str:
    """One line per RIM model and baseline: which wins each test set, and on how many seeds."""
    rims = [m for m in cfg.models if m.startswith("rim")]
    base = [m for m in cfg.models if not m.startswith("rim")]
    lines = []
    for a in rims:
        for b in base:
            parts = []
            for t in cfg.test_sets:
                ra = {r["seed"]: r["tests"][t]["rollout_bce"] for r in runs if r["model"] == a}
                rb = {r["seed"]: r["tests"][t]["rollout_bce"] for r in runs if r["model"] == b}
                seeds = sorted(set(ra) & set(rb))
                wins = sum(ra[s] < rb[s] for s in seeds)
                ma, mb = np.mean([ra[s] for s in seeds]), np.mean([rb[s] for s in seeds])
                parts.append(f"{t}: {ma:.2f} vs {mb:.2f} ({'lower' if ma < mb else 'higher'}; "
                             f"lower on {wins}/{len(seeds)} seeds)")
            lines.append(f"- {a} vs {b}, rollout BCE: " + "; ".join(parts))
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def _mpl():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(cfg: Config, results: dict, path: Path) -> Path:
    """Thesis Fig. 3: per-frame cross-entropy against time, one panel per test set, context shaded."""
    plt = _mpl()
    sets = cfg.test_sets
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.4), squeeze=False, sharey=False)
    for ax, t in zip(axes[0], sets):
        for i, name in enumerate(cfg.models):
            y = np.asarray(results[name][t]["per_frame"])
            ax.plot(np.arange(1, len(y) + 1), y, color=f"C{i}", label=name)
        ax.axvspan(0.5, cfg.context + 0.5, color="gold", alpha=0.2, label=f"from true inputs (frames 0..{cfg.context - 1})")
        ax.set_title(f"test set {t}")
        ax.set_xlabel("predicted frame")
        ax.set_ylabel("BCE (nats / frame)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _examples(cfg: Config, runs: List[dict]) -> Tuple[Dict[str, np.ndarray], Dict[str, Dict[str, tuple]]]:
    truth = {}
    for name in cfg.test_sets:
        data = BouncingBalls.load(Path(cfg.out) / "data" / f"{name}.npz")
        truth[name] = data.frames[0, 1:].astype(np.uint8) * 255                    # frames 1..T-1
    preds = {r["model"]: r["examples"] for r in runs if "examples" in r}
    return truth, preds


def plot_filmstrip(cfg: Config, runs: List[dict], path: Path, every: int = 5) -> Path:
    """Ground truth and each model's rollout of the first sequence of every test set, every ``every`` frames
    (the curtain's rectangle outlined in red)."""
    plt = _mpl()
    from matplotlib.patches import Rectangle

    truth, preds = _examples(cfg, runs)
    models = [m for m in cfg.models if m in preds]
    cols = list(range(every - 1, cfg.frames - 1, every))                           # predicted frames every..50
    nrows = len(cfg.test_sets) * (1 + len(models))
    fig, axes = plt.subplots(nrows, len(cols), figsize=(0.9 * len(cols) + 1.6, 0.9 * nrows + 0.6), squeeze=False)
    px = cfg.resolution / BOX
    row = 0
    for t in cfg.test_sets:
        curtain = parse_test_set(t)[1]
        for label, seq in [("truth", truth[t])] + [(m, preds[m][t][0]) for m in models]:
            for ax, k in zip(axes[row], cols):
                ax.imshow(seq[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if curtain:
                    x0, y0, x1, y1 = (v * px - 0.5 for v in cfg.curtain_rect)
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="tab:red", lw=0.6))
                if row == 0:
                    ax.set_title(f"{k + 1}", fontsize=7, color="black" if k + 1 <= cfg.context else "tab:blue")
            axes[row, 0].set_ylabel(f"{t}: {label}", fontsize=6, rotation=0, ha="right", va="center")
            row += 1
    fig.suptitle(f"predicted frame (black: from true inputs; blue: rollout, the model's own frames fed back "
                 f"after frame {cfg.context})", fontsize=7)
    fig.subplots_adjust(left=1.5 / fig.get_figwidth(), right=0.99, top=1 - 0.6 / fig.get_figheight(),
                        bottom=0.01, wspace=0.05, hspace=0.08)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_gif(cfg: Config, runs: List[dict], path: Path, scale: int = 2) -> Path:
    """Animated ground truth (top row) vs each model's prediction (rows below; from frame ``context + 1`` on
    a rollout), one column per test set; 16 grey levels keep the file small."""
    from PIL import Image, ImageDraw

    truth, preds = _examples(cfg, runs)
    models = [m for m in cfg.models if m in preds]
    labels = ["truth", *models]
    H = W = cfg.resolution
    gap, top = 2 * scale, 24
    left = 6 * max(map(len, labels)) + 8
    width = left + len(cfg.test_sets) * (W * scale + gap)
    height = top + len(labels) * (H * scale + gap)
    images = []
    for k in range(cfg.frames - 1):
        canvas = Image.new("L", (width, height), 40)
        draw = ImageDraw.Draw(canvas)
        phase = "from true inputs" if k + 1 <= cfg.context else "rollout"
        draw.text((2, 0), f"predicted frame {k + 1} ({phase})", fill=255)
        for r, label in enumerate(labels):
            draw.text((2, top + r * (H * scale + gap) + H * scale // 2 - 5), label, fill=200)
        for c, t in enumerate(cfg.test_sets):
            x0 = left + c * (W * scale + gap)
            draw.text((x0 + 2, 12), f"test set {t}", fill=200)
            for r, seq in enumerate([truth[t]] + [preds[m][t][0] for m in models]):
                tile = Image.fromarray((seq[k] // 16) * 17).resize((W * scale, H * scale), Image.Resampling.NEAREST)
                canvas.paste(tile, (x0, top + r * (H * scale + gap)))
        images.append(canvas)
    images[0].save(path, save_all=True, append_images=images[1:], duration=120, loop=0, optimize=True)
    return path


def plot_activity(cfg: Config, runs: List[dict], path: Path) -> Optional[Path]:
    """RIM units' activity against time during the rollout of the first sequence of every test set."""
    plt = _mpl()
    _, preds = _examples(cfg, runs)
    rims = [(m, preds[m]) for m in cfg.models if m in preds and preds[m][cfg.test_sets[0]][1] is not None]
    if not rims:
        return None
    fig, axes = plt.subplots(len(rims), len(cfg.test_sets), figsize=(4.2 * len(cfg.test_sets), 1.9 * len(rims)),
                             squeeze=False)
    for i, (m, ex) in enumerate(rims):
        for ax, t in zip(axes[i], cfg.test_sets):
            mask = ex[t][1].T                                                       # (U, T-1)
            ax.imshow(mask, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest",
                      extent=(0.5, mask.shape[1] + 0.5, mask.shape[0] - 0.5, -0.5))
            ax.axvline(cfg.context + 0.5, color="tab:red", lw=1)
            ax.set_title(f"{m}, test set {t} (black: active)", fontsize=8)
            ax.set_xlabel("step (red line: rollout starts)", fontsize=7)
            ax.set_ylabel("unit", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------------

def generate_only(cfg: Config) -> Path:
    """Write one data set (``--balls``, ``--sequences``, ``--curtain``, ...) to ``--out``."""
    n = cfg.sequences or 1000
    balls = tuple(cfg.balls)
    curtain = tuple(cfg.curtain_rect) if cfg.curtain else None
    name = f"balls{describe(balls)}{'_curtain' if curtain else ''}_{cfg.resolution}px_{cfg.frames}f_seed{cfg.data_seed}"
    t0 = time.perf_counter()
    data = generate(n, balls, curtain=curtain, seed=cfg.data_seed, **_gen_kwargs(cfg))
    seconds = time.perf_counter() - t0
    path = data.save(Path(cfg.out) / f"{name}.npz")
    size = path.stat().st_size / 2 ** 20
    print(f"wrote {path}: {n} sequences x {cfg.frames} frames at {cfg.resolution}x{cfg.resolution}, "
          f"{describe(balls)} balls{', curtain ' + str(list(curtain)) if curtain else ''}; generated in "
          f"{seconds:.1f} s, {size:.1f} MiB; load with zoo.data.bouncing_balls.BouncingBallsDataset({str(path)!r})")
    return path


def run(cfg: Config, command: Optional[str] = None) -> dict:
    """Generate the data, train and roll out every model x seed of ``cfg``; write the report; return ``results``."""
    command = command or command_line(PROG, [])
    if cfg.generate_only:
        return {"path": str(generate_only(cfg))}
    out = Path(cfg.out)
    t0 = time.perf_counter()
    make_data(cfg, out / "data")
    print(f"data: {cfg.train_sequences} training sequences ({describe(tuple(cfg.balls))} balls), "
          f"{cfg.test_sequences} per test set {cfg.test_sets}, {cfg.resolution}x{cfg.resolution}, "
          f"{time.perf_counter() - t0:.1f} s -> {out / 'data'}")
    runs, wall, out = run_grid(cfg, train_one, cfg.models, "bouncing balls",
                               f"; {cfg.steps} steps each, rollout {cfg.context} + {cfg.frames - 1 - cfg.context}",
                               command=command)
    results = summarize(cfg, runs)
    table = results_table(cfg, runs)
    extra = (f"\nRollout BCE: nats per frame ({cfg.resolution}x{cfg.resolution} pixels), mean over the "
             f"{cfg.frames - 1 - cfg.context} frames after {cfg.context} true ones; mean ± std over seeds.\n"
             + comparison(cfg, runs))
    figures = [plot_curves(cfg, results, out / "curves.png"), plot_filmstrip(cfg, runs, out / "filmstrip.png"),
               write_gif(cfg, runs, out / "rollout.gif"), plot_activity(cfg, runs, out / "activity.png")]
    timing = {"train_seconds": per_run(runs),
              "cpu_seconds": per_run(runs, "cpu_seconds")}
    write_report(out, cfg, results, wall, f"Bouncing balls: train {describe(tuple(cfg.balls))} balls, "
                 f"roll out on {', '.join(cfg.test_sets)}", command, table, extra=extra,
                 figures=figures, timing=timing)
    return results


def main(argv: Optional[List[str]] = None) -> dict:
    return run(parse_config(Config, argv, prog=PROG), command_line(PROG, argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
