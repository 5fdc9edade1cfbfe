"""Image classification with any registered training method on any backbone, plus robustness evaluation.

    python -m tasks.classify                                  # ERM on the embedded digits (offline)
    python -m tasks.classify --method erm input_mixup manifold_mixup --steps 1500
    python -m tasks.classify --method manifold_mixup --method-kwargs '{"alpha": 2.0, "loss": "bce"}'
    python -m tasks.classify --method ict --labels-per-class 10  # semi-supervised: the rest is unlabeled
    python -m tasks.classify --dataset cifar10 --data-root data --download --model resnet18
    python -m tasks.classify --eval-only runs/classify/erm/seed0/checkpoint.pt
    python -m tasks.classify --help

Methods come from :mod:`zoo.methods` (``zoo.methods.list_methods()``), evaluations from
:mod:`zoo.robustness` (``list_evaluations()``): methods and evaluations registered by other modules
appear here without editing this file. Every (method, seed) run trains with :func:`zoo.engine.fit`
(progress, ``metrics.csv``, atomic ``checkpoint.pt``, ``--resume``), then is evaluated on the test set.
Writes ``results.md``, ``results.json`` and ``robustness.png`` to ``--out``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

import zoo
from zoo import methods as zoo_methods
from zoo import robustness
from zoo.data import embedded_mnist_split, load_mnist
from zoo.engine import (arg, command_line, fit, load_checkpoint, markdown_table, parse_config, resolve_device,
                        run_grid, seed_everything, summarize_seeds, write_json, write_report, write_text)

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "svhn")


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
def _torchvision(name: str, root: str, download: bool) -> dict:
    import numpy as np
    import torchvision.datasets as tvd

    def wrap(make):
        try:
            return make()
        except RuntimeError as e:
            raise FileNotFoundError(f"{name} not found under {root!r}; add --download (needs internet) or point "
                                    f"--data-root at a folder holding it. Offline: --dataset digits.") from e

    if name == "mnist":
        return {"train": wrap(lambda: load_mnist(root, True, download)),
                "test": wrap(lambda: load_mnist(root, False, download))}
    out = {}
    for split in ("train", "test"):
        if name == "svhn":
            ds = wrap(lambda: tvd.SVHN(root, split=split, download=download))
            x, y = torch.from_numpy(ds.data).float() / 255.0, torch.from_numpy(np.asarray(ds.labels)).long()
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = wrap(lambda: cls(root, train=split == "train", download=download))
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0
            y = torch.as_tensor(ds.targets).long()
        out[split] = (x, y)
    return out


def _few_labels(train: Tuple[torch.Tensor, torch.Tensor], per_class: int, seed: int) -> dict:
    x, y = train
    g = torch.Generator().manual_seed(seed)
    lab, unl = [], []
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if per_class > len(idx):
            raise ValueError(f"labels_per_class={per_class} exceeds the {len(idx)} training images of class {int(c)}")
        lab.append(idx[:per_class])
        unl.append(idx[per_class:])
    lab, unl = torch.cat(lab), torch.cat(unl)
    return {"train": (x[lab], y[lab]), "unlabeled": (x[unl], y[unl])}


def load_dataset(name: str, root: str = "data", download: bool = False, labels_per_class: int = 0,
                 seed: int = 0) -> dict:
    """``{"train": (x, y), "test": (x, y), ["unlabeled": (x, y)], "num_classes": K}``, images in ``[0, 1]``.

    ``digits`` is the 5,000 embedded MNIST digits with the fixed 4,000 / 1,000 split; the others come
    through torchvision. ``labels_per_class > 0`` keeps that many labels per class and returns the rest of
    the training images as ``unlabeled`` (semi-supervised mode).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if name == "digits":
        data = embedded_mnist_split(labels_per_class=labels_per_class or None)
    else:
        data = _torchvision(name, root, download)
        if labels_per_class:
            data.update(_few_labels(data["train"], labels_per_class, seed))
    data["num_classes"] = 100 if name == "cifar100" else 10
    return data


def batches(x: torch.Tensor, y: Optional[torch.Tensor], batch_size: int, seed: int) -> Iterator:
    """Endless shuffled epochs of ``(x, y)`` minibatches (``y=None``: images only)."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = perm[i:i + batch_size]
            yield (x[idx], None if y is None else y[idx])


def method_batches(data: dict, batch_size: int, unlabeled_batch_size: int, needs_unlabeled: bool,
                   seed: int) -> Iterator[dict]:
    """Batch dicts ``{"x", "y"}`` (+ ``"x_u"`` from the unlabeled set, or the train images without labels)."""
    lab = batches(*data["train"], batch_size, seed)
    if not needs_unlabeled:
        for x, y in lab:
            yield {"x": x, "y": y}
    pool = data["unlabeled"][0] if "unlabeled" in data else data["train"][0]
    unl = batches(pool, None, unlabeled_batch_size, seed + 7919)
    for (x, y), (u, _) in zip(lab, unl):
        yield {"x": x, "y": y, "x_u": u}


# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Config:
    """Train classifiers with registered methods (ERM, mixup family, ICT, ...) and evaluate robustness."""

    method: List[str] = arg(["erm"], help="registered methods to train, one run each "
                                          "(zoo.methods.list_methods())")
    method_kwargs: str = arg("{}", help='JSON hyperparameters for every method, e.g. \'{"alpha": 2.0}\', or per '
                                        'method: \'{"manifold_mixup": {"alpha": 2.0}, "ict": {"w_max": 10}}\'')
    model: str = arg("test_resnet", help="registry name (zoo or timm), built with in_chans/num_classes")
    model_kwargs: str = arg("{}", help='JSON extra model kwargs, e.g. \'{"img_size": 28}\' for a ViT')
    dataset: str = arg("digits", help="digits = 5,000 embedded MNIST digits (offline); others via torchvision",
                       choices=DATASETS)
    data_root: str = arg("data", help="torchvision dataset folder")
    download: bool = arg(False, help="let torchvision download the dataset")
    labels_per_class: int = arg(0, help="keep this many labels per class, the rest is unlabeled (0: all labeled)")
    steps: int = arg(1000, help="optimizer steps per run")
    batch_size: int = arg(64, help="labeled batch size")
    unlabeled_batch_size: int = arg(64, help="unlabeled batch size (methods that need unlabeled data)")
    optimizer: str = arg("sgd", help="sgd (nesterov momentum 0.9, the papers) or adam", choices=("sgd", "adam"))
    lr: float = arg(0.05, help="peak learning rate (cosine-annealed to 0)")
    weight_decay: float = arg(1e-4, help="L2 weight decay (papers: 1e-4)")
    clip_grad: float = arg(0.0, help="gradient-norm clip (0: none)")
    seeds: int = arg(1, help="seeds per method (seed, seed+1, ...); the table shows mean ± std")
    seed: int = arg(0, help="first seed")
    evaluations: List[str] = arg(["all"], help="robustness evaluations (zoo.robustness.list_evaluations()); all")
    eval_size: int = arg(1000, help="test images used by the robustness evaluations (0: all)")
    fgsm_eps: List[float] = arg([0.05, 0.1, 0.2, 0.3], help="FGSM epsilons (inputs in [0, 1])")
    noise_std: List[float] = arg([0.1, 0.2, 0.3, 0.5, 0.8], help="Gaussian noise standard deviations")
    occlusion: int = arg(16, help="occlusion box side in pixels")
    eval_every: int = arg(250, help="test accuracy every this many steps (0: only at the end)")
    log_every: int = arg(50, help="log training metrics every this many steps")
    eval_only: str = arg("", help="evaluate this checkpoint.pt (or run folder) instead of training; "
                                  "--model/--method name it")
    out: str = arg("runs/classify", help="output folder")
    device: str = arg("auto", help="'auto' (CUDA if present), 'cpu', 'cuda', ...")
    workers: int = arg(0, help="parallel training processes (0: one per CPU core, one on a GPU)")
    threads: int = arg(1, help="torch threads per worker process")
    resume: bool = arg(False, help="continue runs from their checkpoints")
    progress: bool = arg(True, help="show progress bars")


def method_hparams(cfg: Config, name: str) -> dict:
    """The hyperparameters of method ``name`` from ``--method-kwargs`` (shared or per-method JSON)."""
    kw = json.loads(cfg.method_kwargs)
    if not isinstance(kw, dict):
        raise ValueError(f"--method-kwargs must be a JSON object, got {cfg.method_kwargs!r}")
    known = set(zoo_methods.list_methods())
    if kw and all(k in known and isinstance(v, dict) for k, v in kw.items()):
        return dict(kw.get(name, {}))
    return kw


def build_model(cfg: Config, in_chans: int, num_classes: int) -> torch.nn.Module:
    return zoo.create_model(cfg.model, in_chans=in_chans, num_classes=num_classes, **json.loads(cfg.model_kwargs))


def eval_context(cfg: Config, device: torch.device, seed: int) -> robustness.EvalContext:
    return robustness.EvalContext(
        device=device, batch_size=250, seed=10_000 + seed,
        options={"fgsm": {"eps": cfg.fgsm_eps}, "noise": {"std": cfg.noise_std},
                 "occlusion": {"size": cfg.occlusion}})


def evaluation_names(cfg: Config) -> List[str]:
    return robustness.list_evaluations() if cfg.evaluations == ["all"] else list(cfg.evaluations)


def _test_subset(cfg: Config, data: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    x, y = data["test"]
    if cfg.eval_size and cfg.eval_size < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(123))[:cfg.eval_size]
        x, y = x[idx], y[idx]
    return x, y


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Dict[str, float]:
    logits = robustness.predict(model, x, 500, device)
    return {"acc": float((logits.argmax(-1) == y).float().mean())}


def _run_dir(cfg: Config, method: str, seed: int) -> Path:
    return Path(cfg.out) / method / f"seed{seed}"


def train_one(cfg: Config, method_name: str, seed: int, position: int = 0) -> dict:
    """Train one (method, seed) run and evaluate it; runs in a worker process."""
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.labels_per_class, seed=0)
    in_chans = data["train"][0].shape[1]
    seed_everything(seed)
    model = build_model(cfg, in_chans, data["num_classes"]).to(device)
    method = zoo_methods.create_method(method_name, **method_hparams(cfg, method_name))
    method.setup(model, total_steps=cfg.steps)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    x_test, y_test = data["test"]
    stream = method_batches(data, cfg.batch_size, cfg.unlabeled_batch_size, method.needs_unlabeled, seed)
    result = fit(model, opt, stream, steps=cfg.steps, device=device, out_dir=_run_dir(cfg, method_name, seed),
                 clip_grad=cfg.clip_grad or None, scheduler=sched, log_every=cfg.log_every,
                 eval_fn=lambda m: test_accuracy(method.eval_model(m), x_test, y_test, device),
                 eval_every=cfg.eval_every, ckpt_every=max(cfg.eval_every, 500), resume=cfg.resume,
                 desc=f"{method_name} s{seed}", progress=cfg.progress, position=position, **method.fit_kwargs())
    method.remove()                                        # taps off: evaluate the plain network
    net = method.eval_model(model)
    xe, ye = _test_subset(cfg, data)
    rob = robustness.evaluate_robustness(net, xe, ye, evaluation_names(cfg), eval_context(cfg, device, seed))
    rob["acc"] = test_accuracy(net, x_test, y_test, device)["acc"]           # clean accuracy on the full test set
    return {"method": method_name, "seed": seed, "hparams": method.hparams, "seconds": result.seconds,
            "robustness": rob, "curve": result.eval_history}


def eval_only(cfg: Config) -> dict:
    """Evaluate a saved checkpoint (``fit``'s ``checkpoint.pt``; ICT's teacher when present)."""
    path = Path(cfg.eval_only)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise SystemExit(f"no checkpoint at {path}")
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
    model = build_model(cfg, data["train"][0].shape[1], data["num_classes"])
    payload = load_checkpoint(path, map_location="cpu")
    key = "ict_teacher" if "ict_teacher" in payload else "model"
    model.load_state_dict(payload[key])
    model.to(device).eval()
    xe, ye = _test_subset(cfg, data)
    rob = robustness.evaluate_robustness(model, xe, ye, evaluation_names(cfg), eval_context(cfg, device, cfg.seed))
    rob["acc"] = test_accuracy(model, *data["test"], device)["acc"]
    label = f"{cfg.model} ({path})"
    table = robustness.robustness_table({label: rob}, label="checkpoint")
    out = Path(cfg.out)
    results = {label: rob, "_meta": {"checkpoint": str(path), "weights": key, "config": dataclasses.asdict(cfg)}}
    write_json(out / "results.json", results)
    write_text(out / "results.md", f"# Robustness of {path} ({key})\n\n{table}")
    print("\n" + table)
    return results


def summarize(cfg: Config, runs: List[dict]) -> Dict[str, Dict[str, float]]:
    """Per method: mean of every robustness column over seeds (``std`` and per-seed values alongside)."""
    out = {}
    for name in cfg.method:
        mine = [r["robustness"] for r in runs if r["method"] == name]
        stats = summarize_seeds(mine)
        out[name] = {k: v["mean"] for k, v in stats.items()}
        out[name]["_std"] = {k: v["std"] for k, v in stats.items()}
        out[name]["_per_seed"] = mine
        out[name]["_hparams"] = next(r["hparams"] for r in runs if r["method"] == name)
        out[name]["_train_seconds"] = sum(r["seconds"] for r in runs if r["method"] == name) / len(mine)
    return out


def main(argv: Optional[List[str]] = None) -> dict:
    cfg = parse_config(Config, argv)
    unknown = [m for m in cfg.method if m not in zoo_methods.list_methods()]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; registered: {', '.join(zoo_methods.list_methods())}")
    bad_eval = [e for e in evaluation_names(cfg) if e not in robustness.list_evaluations()]
    if bad_eval:
        raise SystemExit(f"unknown evaluation(s) {bad_eval}; registered: {robustness.list_evaluations()}")
    if cfg.eval_only:
        return eval_only(cfg)
    runs, wall, out = run_grid(cfg, train_one, cfg.method, "classify",
                               f"; {cfg.model} on {cfg.dataset}, {cfg.steps} steps each")
    results = summarize(cfg, runs)
    means = {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in results.items()}
    table = robustness.robustness_table(means, label="method")
    curves = robustness.plot_curves(means, out / "robustness.png",
                                    title=f"{cfg.model} on {cfg.dataset}, {cfg.steps} steps")
    hp = markdown_table(["method", "hyperparameters", "train s"],
                        [[n, json.dumps(r["_hparams"]), f"{r['_train_seconds']:.0f}"] for n, r in results.items()
                         if not n.startswith("_")])
    write_report(out, cfg, results, wall, f"Classification and robustness: {cfg.model} on {cfg.dataset}, {cfg.seeds} seed(s), mean shown",
                 command_line("python -m tasks.classify", argv), table, extra=f"\n{hp}", figures=(curves,))
    return results


if __name__ == "__main__":
    main()
