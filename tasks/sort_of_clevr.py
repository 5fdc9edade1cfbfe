"""Sort-of-CLEVR: relational reasoning from pixels, CNN+MLP vs its NFM version (thesis 10.4.3, Tables 6-7).

    python -m tasks.sort_of_clevr                     # generate (cached), train CNN+MLP and NFM-CNN, rel / non-rel
    python -m tasks.sort_of_clevr --holdout 4         # Table 7: 4 colour-shape pairs never in training images
    python -m tasks.sort_of_clevr --generate-only --out data/sort_of_clevr     # write the data set and stop
    python -m tasks.sort_of_clevr --models sortclevr_cnn nfm_sortclevr_cnn sortclevr_rn --seeds 3 --steps 20000

Data: :mod:`zoo.data.sort_of_clevr` (75x75, 6 objects, 10 non-relational + 10 relational questions per
image, 9,800 train / 200 test images, cached as ``.npz`` under ``--data-dir``). Training: Adam on the
cross-entropy of the 10 answer classes, batches of (image, question) pairs drawn from all 20 questions of
the training images (the reference alternates relational and non-relational batches; the expected gradient
is the same). Dropout, where a model has it, is on in training only (the reference leaves it on at test).

Reported per model (mean ± std over seeds): accuracy on relational and non-relational test questions, per
question subtype, and with ``--holdout N`` separately on questions whose answer depends on a held-out
colour-shape pair (``*_heldout``) and on the others (``*_seen``). Writes ``results.json``, ``results.md``,
``samples.png`` (test images with a question, the answer and each model's prediction) and, for NFM models,
``attention_<model>.png`` (which earlier layer each NFM block reads).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, cast

import numpy as np
import timm
import torch
import torch.nn.functional as F

import zoo
from zoo.data import sort_of_clevr as soc
from zoo.engine import (per_run, 
    SCHEDULES,
    ConfigError,
    MapStream,
    RunConfig,
    ShuffledBatches,
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

#: the default model kwargs: the reference's dropout 0.5 (train only), and the NFM blocks of
#: ``nfm_sortclevr_cnn`` before the last two convs (of 4) with ``d_k = d_v = 8`` and one key/value projection
#: per stored layer, which make its training step about 11x the CNN's instead of about 140x (CPU, 1 thread)
CPU_KWARGS = {"*": {"drop_rate": 0.5},
              "nfm_sortclevr_cnn": {"nfm_attend": [2, 3], "nfm_share_kv": True, "d_k": 8, "d_v": 8}}
SUBTYPES = [f"nonrel_{s}" for s in soc.NONREL_SUBTYPES] + [f"rel_{s}" for s in soc.REL_SUBTYPES]


# -- shared by the NFM harnesses (multi-digit imports these) ----------------------------------------------
def check_models(models: Sequence[str], kwargs: Dict[str, dict], probe) -> None:
    """Build every model once (cheap) so unknown names and bad kwargs are a :class:`ConfigError` before any
    work; ``probe(model)`` returns ``None`` or why the model does not fit the task."""
    for name in models:
        if not timm.is_model(name):
            raise ConfigError(f"--models {name!r} is not a registered model; zoo models: "
                              f"{', '.join(zoo.list_models())} (or any timm model)")
        try:
            with torch.device("meta"):
                m = zoo.create_model(name, **kwargs[name])
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"--models {name} cannot be built with --model-kwargs {kwargs[name]}: "
                              f"{str(e).splitlines()[0]}") from None
        why = probe(m)
        if why:
            raise ConfigError(f"--models {name}: {why}")


def seed_summary(per_seed: Sequence[Dict[str, float]]) -> Dict[str, object]:
    """``[{metric: value}]`` per seed -> ``{metric: mean, metric_std: std, metric_per_seed: [...]}``."""
    stats = summarize_seeds(per_seed)
    out: Dict[str, object] = {}
    for k, s in stats.items():
        out[k], out[f"{k}_std"], out[f"{k}_per_seed"] = s["mean"], s["std"], [float(r[k]) for r in per_seed]
    return out


# -- config ---------------------------------------------------------------------------------------------
@dataclass
class Config(RunConfig):
    """Sort-of-CLEVR (thesis 10.4.3): CNN+MLP vs NFM(CNN) on relational and non-relational questions."""

    models: List[str] = arg(["sortclevr_cnn", "nfm_sortclevr_cnn"],
                            unique=True, help="registered models taking (image, question): sortclevr_cnn, nfm_sortclevr_cnn, "
                                 "sortclevr_rn")
    model_kwargs: str = arg(json.dumps(CPU_KWARGS),
                            help='JSON: keyword arguments per model name ("*": every model); entries of models '
                                 "not in --models are ignored. The default puts NFM blocks before the last two "
                                 "convs only (CPU scale); '{\"*\": {\"drop_rate\": 0.5}}' is the thesis placement "
                                 "(a block before every conv)")
    seeds: int = arg(3, help="seeds per model (seed, seed+1, ...); tables show mean ± std", ge=1)
    steps: int = arg(900, help="optimizer steps per model and seed (reference: 20 epochs of 196,000 "
                               "questions in batches of 64, about 61,000 steps)", ge=1)
    batch_size: int = arg(32, help="(image, question) pairs per step (reference: 64)", ge=1)
    lr: float = arg(1e-3, help="Adam learning rate (reference: 1e-4)", gt=0)
    schedule: str = arg("cosine", help="learning-rate schedule: cosine decay to 0 (batch-norm statistics then "
                                       "match the final weights), or constant (the reference)",
                        choices=list(SCHEDULES))
    clip_grad: float = arg(0.0, help="gradient-norm clip (0: off)", ge=0)
    precision: str = precision_arg()
    holdout: int = arg(0, help="colour-shape pairs held out of the training images (thesis Table 7: 1-3)",
                       ge=0, le=soc.NUM_OBJECTS)
    holdout_seed: int = arg(0, help="which pairs are held out", ge=0)
    train_images: int = arg(9800, help="training images", ge=1)
    test_images: int = arg(200, help="test images", ge=1)
    questions: int = arg(10, help="questions of each kind (non-relational, relational) per image", ge=1)
    data_seed: int = arg(0, help="seed of the generated data set", ge=0)
    data_dir: str = arg("data/sort_of_clevr", help="cache folder for the generated .npz ('' : no cache)",
                        path="out_dir", allow_empty=True)
    generate_only: bool = arg(False, help="write the data set (.npz and a preview) to --out and stop")
    eval_every: int = arg(0, help="evaluate on the test questions every this many steps and plot the curves "
                                  "(curves.png; 0: only at the end)", ge=0)
    samples: int = arg(8, help="test images in samples.png", ge=0, le=64)
    attention_images: int = arg(100, help="test images averaged in the NFM attention maps", ge=1)
    out: str = arg("runs/sort_of_clevr", help="output folder", path="out_dir")

    def check(self) -> None:
        super().check()
        kwargs = per_model_kwargs(self.model_kwargs, self.models, default=json.dumps(CPU_KWARGS))
        check_models(self.models, kwargs, lambda m: None if hasattr(m, "question_dim") else
                     "takes no question; use a Sort-of-CLEVR model (sortclevr_cnn, nfm_sortclevr_cnn, sortclevr_rn)")


# -- data -----------------------------------------------------------------------------------------------
def load_data(cfg: Config) -> Dict[str, soc.SortOfClevr]:
    """Train (with the held-out pairs removed) and test splits, from the cache when present."""
    return soc.load_or_generate(cfg.data_dir or None, num_train=cfg.train_images, num_test=cfg.test_images,
                                questions=cfg.questions, holdout=soc.holdout_combinations(cfg.holdout, cfg.holdout_seed),
                                seed=cfg.data_seed)


def question_groups(data: soc.SortOfClevr, holdout: Sequence) -> Dict[str, np.ndarray]:
    """Boolean masks ``(N, Q)`` of the question groups reported: rel / nonrel, each subtype, and with a holdout
    each of these split into ``<group>_heldout`` / ``<group>_seen``. The subtypes' split matters: a ``count``
    question depends on every object, so with 3 held-out pairs 7 in 8 of them are held-out, against about 45 %
    of ``closest`` / ``furthest`` questions, and ``rel_heldout`` / ``rel_seen`` mix the subtypes unequally."""
    rel = data.q_rel == 1
    groups = {"rel": rel, "nonrel": ~rel}
    for i, s in enumerate(soc.NONREL_SUBTYPES):
        groups[f"nonrel_{s}"] = ~rel & (data.q_sub == i)
    for i, s in enumerate(soc.REL_SUBTYPES):
        groups[f"rel_{s}"] = rel & (data.q_sub == i)
    if len(holdout):
        held = soc.question_involves_holdout(data, holdout)
        for k in list(groups):                        # rel, nonrel and each subtype: held-out / seen
            groups[f"{k}_heldout"], groups[f"{k}_seen"] = groups[k] & held, groups[k] & ~held
    return groups


def majority_rates(train: soc.SortOfClevr, test: soc.SortOfClevr, holdout: Sequence) -> Dict[str, float]:
    """Accuracy of answering every question with its subtype's most common training answer."""
    pred = np.zeros_like(test.answers)
    for rel in (0, 1):
        for sub in range(3):
            tr = train.answers[(train.q_rel == rel) & (train.q_sub == sub)]
            pred[(test.q_rel == rel) & (test.q_sub == sub)] = np.bincount(tr, minlength=10).argmax()
    correct = pred == test.answers
    return {k: float(correct[m].mean()) for k, m in question_groups(test, holdout).items() if m.any()}


@torch.no_grad()
def predict(model: torch.nn.Module, ds: soc.SortOfClevrDataset, device: torch.device, chunk: int = 500) -> np.ndarray:
    """Predicted answer of every question of ``ds`` (in ``ds`` order)."""
    model.eval()
    out = []
    for start in range(0, len(ds), chunk):
        x, q, _ = ds.batch(torch.arange(start, min(start + chunk, len(ds))))
        out.append(model(x.to(device), q.to(device)).argmax(-1).cpu())
    return torch.cat(out).numpy()


def evaluate(model: torch.nn.Module, data: soc.SortOfClevr, holdout: Sequence, device: torch.device
             ) -> Dict[str, float]:
    """Accuracy on each question group of :func:`question_groups`."""
    ds = soc.SortOfClevrDataset(data)
    pred = np.zeros_like(data.answers)
    pred[ds.img_idx.numpy(), ds.q_idx.numpy()] = predict(model, ds, device)
    correct = pred == data.answers
    return {k: float(correct[m].mean()) for k, m in question_groups(data, holdout).items() if m.any()}


def build_model(name: str, kwargs: dict) -> torch.nn.Module:
    return zoo.create_model(name, num_classes=len(soc.ANSWERS), question_dim=soc.QUESTION_DIM, **kwargs)


def sample_questions(test: soc.SortOfClevr, n: int) -> List[tuple]:
    """``n`` (image, question) pairs for the sample grid: images 0..n-1, subtypes in turn."""
    picks = []
    for i in range(min(n, len(test))):
        rel, sub = (i // 3) % 2, i % 3
        qs = np.nonzero((test.q_rel[i] == rel) & (test.q_sub[i] == sub))[0]
        picks.append((i, int(qs[0]) if len(qs) else 0))
    return picks


# -- one run --------------------------------------------------------------------------------------------
def _run_dir(cfg: Config, name: str, seed: int) -> Path:
    return Path(cfg.out) / name / f"seed{seed}"


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
    """Train one (model, seed) and evaluate it; runs in a worker process."""
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)                # run_jobs sets it in worker processes only, not with 1 worker
    seed_everything(seed)
    data = load_data(cfg)
    holdout = soc.holdout_combinations(cfg.holdout, cfg.holdout_seed)
    train = soc.SortOfClevrDataset(data["train"])
    model = build_model(name, model_kwargs(cfg, name)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = MapStream(ShuffledBatches(torch.arange(len(train)), batch_size=cfg.batch_size, seed=seed), train.batch)

    def step_fn(m, batch):
        x, q, a = batch
        logits = m(x, q)
        return F.cross_entropy(logits, a), {"acc": float((logits.argmax(-1) == a).float().mean())}

    fitted = fit(model, optimizer, batches, step_fn, steps=cfg.steps, device=device,
                 out_dir=_run_dir(cfg, name, seed), clip_grad=cfg.clip_grad or None, log_every=cfg.log_every,
                 precision=cfg.precision,
                 scheduler=lr_schedule(optimizer, cfg.schedule, cfg.steps),
                 eval_fn=lambda m: evaluate(m, data["test"], holdout, device), eval_every=cfg.eval_every,
                 ckpt_every=cfg.checkpoint_every, resume=cfg.resume, desc=f"{name} s{seed}",
                 run_meta=run_meta(cfg, name, seed),
                 progress=cfg.progress, position=position)
    model.eval()
    test = {k[len("eval/"):]: v for k, v in fitted.last_metrics.items() if k.startswith("eval/")}   # fit's final eval
    if fitted.resumed_from >= cfg.steps:
        # a finished run reused by --resume: test it with this code, so the report has every current group
        test = evaluate(model, data["test"], holdout, device)
    picks = sample_questions(data["test"], cfg.samples)
    preds = []
    if picks:
        t = data["test"]
        x = torch.from_numpy(t.images[[i for i, _ in picks]]).permute(0, 3, 1, 2).float() / 255
        q = soc.question_vectors(*(np.array([getattr(t, f)[i, j] for i, j in picks]) for f in ("q_color", "q_rel", "q_sub")))
        with torch.no_grad():
            preds = model(x.to(device), q.to(device)).argmax(-1).cpu().tolist()
    out = {"model": name, "seed": seed, "test": test, "samples": preds, "seconds": fitted.seconds,
           "curve": fitted.eval_history}
    if getattr(model, "nfm", None) is not None and seed == cfg.seed:
        from tasks.nfm_attention import attention_matrix
        from zoo.models.staged import StagedNet               # the registry's NFM models are StagedNets
        x = torch.from_numpy(data["test"].images[:cfg.attention_images]).permute(0, 3, 1, 2).float() / 255
        out["attention"] = attention_matrix(cast(StagedNet, model), x.to(device))
    return out


# -- report ---------------------------------------------------------------------------------------------
def summarize(cfg: Config, runs: List[dict]) -> dict:
    return {name: seed_summary([r["test"] for r in runs if r["model"] == name]) for name in cfg.models}


def model_stats(cfg: Config, runs: List[dict]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """For each model: every reported group's mean / std / n over its seeds (``summarize_seeds``)."""
    return {name: summarize_seeds([r["test"] for r in runs if r["model"] == name]) for name in cfg.models}


def results_table(cfg: Config, runs: List[dict], chance: Dict[str, float]) -> str:
    cols = ["rel", "nonrel"] + (["rel_heldout", "rel_seen", "nonrel_heldout", "nonrel_seen"] if cfg.holdout else [])
    rows: List[List[Any]] = []
    for name, stats in model_stats(cfg, runs).items():
        rows.append([name] + [fmt_mean_std(stats[c]) if c in stats else "-" for c in cols] + [stats["rel"]["n"]])
    rows.append(["majority answer"] + [f"{chance[c]:.3f}" if c in chance else "-" for c in cols] + ["-"])
    return markdown_table(["model"] + cols + ["seeds"], rows)


def subtype_table(cfg: Config, runs: List[dict], chance: Dict[str, float]) -> str:
    rows = []
    for name, stats in model_stats(cfg, runs).items():
        rows.append([name] + [fmt_mean_std(stats[c]) for c in SUBTYPES])
    rows.append(["majority answer"] + [f"{chance[c]:.3f}" for c in SUBTYPES])
    return markdown_table(["model"] + SUBTYPES, rows)


def heldout_subtype_table(cfg: Config, runs: List[dict], chance: Dict[str, float]) -> str:
    """With a holdout: each subtype's accuracy on held-out and on seen questions, one row per subtype and model."""
    stats = model_stats(cfg, runs)
    rows = []
    for sub in SUBTYPES:
        for name in cfg.models:
            rows.append([sub, name] + [fmt_mean_std(stats[name][k]) if k in stats[name] else "-"
                                       for k in (f"{sub}_heldout", f"{sub}_seen")])
        rows.append([sub, "majority answer"] + [f"{chance[k]:.3f}" if k in chance else "-"
                                                for k in (f"{sub}_heldout", f"{sub}_seen")])
    return markdown_table(["subtype", "model", "held-out", "seen"], rows)


def plot_samples(test: soc.SortOfClevr, picks: List[tuple], runs: List[dict], cfg: Config, path: Path) -> Optional[Path]:
    """A grid of test images, each with its question, the answer and every model's prediction (first seed)."""
    if not picks:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {r["model"]: r["samples"] for r in runs if r["seed"] == cfg.seed}
    cols = min(4, len(picks))
    rows = -(-len(picks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (i, j) in enumerate(picks):
        ax = axes.flat[k]
        ax.imshow(test.images[i], interpolation="nearest")
        q = soc.describe_question(int(test.q_color[i, j]), int(test.q_rel[i, j]), int(test.q_sub[i, j]))
        truth = soc.ANSWERS[int(test.answers[i, j])]
        lines = [q, f"answer: {truth}"]
        for name in cfg.models:
            p = soc.ANSWERS[first[name][k]]
            lines.append(f"{name}: {p} {'✓' if p == truth else '✗'}")
        ax.set_title("\n".join(lines), fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_attention_runs(runs: List[dict], out: Path, title) -> List[Path]:
    """``attention_<model>.png`` for every run holding an NFM attention matrix; ``title(run)`` is its title."""
    from tasks.nfm_attention import plot

    return [plot(r["attention"], out / f"attention_{r['model']}.png", title(r)) for r in runs if "attention" in r]


def plot_preview(data: soc.SortOfClevr, path: Path, n: int = 8) -> Path:
    """A few generated images with their objects (for --generate-only)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(data))
    fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.3), squeeze=False)
    for k, ax in enumerate(axes[0]):
        ax.imshow(data.images[k], interpolation="nearest")
        ax.set_title(" ".join(f"{c[0]}{'□' if s == 0 else '○'}" for c, s in zip(soc.COLORS, data.shapes[k])), fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PROG = "python -m tasks.sort_of_clevr"


def run(cfg: Config, command: Optional[str] = None) -> dict:
    """Train and test every model x seed of ``cfg``; write the report; return ``results``."""
    command = command or command_line(PROG, [])
    holdout = soc.holdout_combinations(cfg.holdout, cfg.holdout_seed)
    if cfg.generate_only:
        data = soc.load_or_generate(cfg.out, num_train=cfg.train_images, num_test=cfg.test_images,
                                    questions=cfg.questions, holdout=holdout, seed=cfg.data_seed)
        preview = plot_preview(data["train"], Path(cfg.out) / "preview.png")
        files = ", ".join(str(p) for p in sorted(Path(cfg.out).glob("*.npz")))
        print(f"{len(data['train'])} train / {len(data['test'])} test images, {2 * cfg.questions} questions each; "
              f"wrote {files} and {preview}")
        return {"train": len(data["train"]), "test": len(data["test"])}
    data = load_data(cfg)                              # generate and cache once, before the workers start
    held = ", ".join(f"{soc.COLORS[c]} {soc.SHAPES[s]}" for c, s in holdout)
    runs, wall, out = run_grid(cfg, train_one, cfg.models, "sort_of_clevr",
                               f"; {cfg.steps} steps each" + (f"; held out: {held}" if held else ""), command=command)
    chance = majority_rates(data["train"], data["test"], holdout)
    table, sub = results_table(cfg, runs, chance), subtype_table(cfg, runs, chance)
    results = summarize(cfg, runs)
    results["majority_answer"] = chance
    if holdout:
        results["holdout_pairs"] = [[soc.COLORS[c], soc.SHAPES[s]] for c, s in holdout]
    samples = plot_samples(data["test"], sample_questions(data["test"], cfg.samples), runs, cfg, out / "samples.png")
    att = plot_attention_runs(runs, out, lambda r: (f"{r['model']} (seed {r['seed']}), Sort-of-CLEVR, {cfg.steps} steps\n"
                                                    f"test rel {r['test']['rel']:.3f}, non-rel {r['test']['nonrel']:.3f}"))
    groups = ["rel", "nonrel"] + (["rel_heldout", "nonrel_heldout"] if holdout else [])
    curves = plot_seed_curves(runs, cfg.models, [(g, f"test accuracy, {g.replace('_', ' ')}") for g in groups],
                              out / "curves.png", "Sort-of-CLEVR during training (mean ± std over seeds)",
                              reference=chance, reference_label="majority answer")
    seconds = {n: np.mean([r["seconds"] for r in runs if r["model"] == n]) for n in cfg.models}
    extra = (f"\nAccuracy per question subtype:\n\n{sub}\n"
             + (f"Held-out colour-shape pairs (never in a training image): {held}. A question is *held-out* when its "
                "answer depends on an object with such a pair (X; X and the closest/furthest object; every object "
                "for count). Per subtype (the subtypes' shares of held-out questions differ: most count questions "
                f"are held-out):\n\n{heldout_subtype_table(cfg, runs, chance)}\n" if held else "")
             + "Training time per run (s, this machine): "
             + ", ".join(f"{n} {s:.0f}" for n, s in seconds.items()) + "\n")
    title = f"Sort-of-CLEVR: {cfg.steps} steps" + (f", {cfg.holdout} held-out pairs" if cfg.holdout else "")
    write_report(out, cfg, results, wall, title, command, table,
                 timing={"train_seconds": per_run(runs)}, extra=extra, figures=(samples, curves, *att))
    return results


def main(argv: Optional[List[str]] = None) -> dict:
    return run(parse_config(Config, argv, prog=PROG), command_line(PROG, argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
