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

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch

import zoo
from zoo import methods as zoo_methods
from zoo import robustness
from zoo.data import DATASETS, dataset_missing, load_dataset
from zoo.engine import (per_run, 
    ConfigError,
    MapStream,
    RunConfig,
    ShuffledBatches,
    Stream,
    ZipStream,
    arg,
    check_finite,
    command_line,
    config_to_dict,
    fit,
    load_checkpoint,
    lr_schedule,
    markdown_table,
    parse_config,
    parse_json_object,
    run_options,
    precision_arg,
    resolve_device,
    run_cli,
    run_grid,
    seed_everything,
    summarize_seeds,
    write_json,
    write_report,
    write_text,
)

__all__ = ["Config", "run", "main", "load_dataset", "method_batches", "build_model", "test_accuracy"]

PROG = "python -m tasks.classify"
#: input channels and classes of each data set (to check a model at parse time without loading data)
_SHAPES = {"digits": (1, 10), "mnist": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100), "svhn": (3, 10)}


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
def method_batches(data: dict, batch_size: int, unlabeled_batch_size: int, needs_unlabeled: bool,
                   seed: int) -> Stream:
    """A checkpointable stream of batch dicts ``{"x", "y"}`` (+ ``"x_u"`` from the unlabeled set, or the
    train images without labels), reshuffled every epoch."""
    lab = ShuffledBatches(*data["train"], batch_size=batch_size, seed=seed)
    if not needs_unlabeled:
        return MapStream(lab, lambda b: {"x": b[0], "y": b[1]})
    pool = data["unlabeled"][0] if "unlabeled" in data else data["train"][0]
    unl = ShuffledBatches(pool, None, batch_size=unlabeled_batch_size, seed=seed + 7919)
    return ZipStream(lab, unl, combine=lambda b, u: {"x": b[0], "y": b[1], "x_u": u[0]})


# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------
def _check_methods(names: List[str]) -> Optional[str]:
    unknown = [m for m in names if m not in zoo_methods.list_methods()]
    return f"registered methods: {', '.join(zoo_methods.list_methods())}" if unknown else None


def _check_evaluations(names: List[str]) -> Optional[str]:
    if names == ["all"]:
        return None
    unknown = [e for e in names if e not in robustness.list_evaluations()]
    return f"'all' or registered evaluations: {', '.join(robustness.list_evaluations())}" if unknown else None


@dataclass
class Config(RunConfig):
    """Train classifiers with registered methods (ERM, mixup family, ICT, ...) and evaluate robustness."""

    method: List[str] = arg(["erm"], help="registered methods to train, one run each "
                                          "(zoo.methods.list_methods())", check=_check_methods)
    method_kwargs: str = arg("{}", help='JSON hyperparameters for every method, e.g. \'{"alpha": 2.0}\', or per '
                                        'method: \'{"manifold_mixup": {"alpha": 2.0}, "ict": {"w_max": 10}}\'')
    model: str = arg("test_resnet", help="registry name (zoo or timm), built with in_chans/num_classes")
    model_kwargs: str = arg("{}", help='JSON extra model kwargs, e.g. \'{"img_size": 28}\' for a ViT')
    dataset: str = arg("digits", help="digits = 5,000 embedded MNIST digits (offline); others via torchvision",
                       choices=DATASETS)
    data_root: str = arg("data", help="torchvision dataset folder")
    download: bool = arg(False, help="let torchvision download the dataset")
    labels_per_class: int = arg(0, help="keep this many labels per class, the rest is unlabeled (0: all labeled)",
                                ge=0)
    steps: int = arg(1000, help="optimizer steps per run", ge=1)
    batch_size: int = arg(64, help="labeled batch size", ge=1)
    unlabeled_batch_size: int = arg(64, help="unlabeled batch size (methods that need unlabeled data)", ge=1)
    optimizer: str = arg("sgd", help="sgd (nesterov momentum 0.9, the papers) or adam", choices=("sgd", "adam"))
    lr: float = arg(0.05, help="peak learning rate (cosine-annealed to 0)", gt=0)
    weight_decay: float = arg(1e-4, help="L2 weight decay (papers: 1e-4)", ge=0)
    clip_grad: float = arg(0.0, help="gradient-norm clip (0: none)", ge=0)
    precision: str = precision_arg()
    evaluations: List[str] = arg(["all"], help="robustness evaluations (zoo.robustness.list_evaluations()); all",
                                 check=_check_evaluations)
    eval_size: int = arg(1000, help="test images used by the robustness evaluations (0: all)", ge=0)
    fgsm_eps: List[float] = arg([0.05, 0.1, 0.2, 0.3], help="FGSM epsilons (inputs in [0, 1])", ge=0, le=1)
    noise_std: List[float] = arg([0.1, 0.2, 0.3, 0.5, 0.8], help="Gaussian noise standard deviations", ge=0)
    occlusion: int = arg(16, help="occlusion box side in pixels", ge=1)
    eval_every: int = arg(250, help="test accuracy every this many steps (0: only at the end)", ge=0)
    eval_only: str = arg("", help="evaluate this checkpoint.pt (or run folder) instead of training; "
                                  "--model/--method name it", path="in_any", allow_empty=True)
    out: str = arg("runs/classify", help="output folder", path="out_dir")

    def check(self) -> None:
        super().check()
        for name in self.method:
            method_hparams(self, name)                     # raises ConfigError for unknown names/values
        if not timm.is_model(self.model):
            close = difflib.get_close_matches(self.model, timm.list_models(), n=6, cutoff=0.6)
            raise ConfigError(f"--model {self.model!r} is not a registered model"
                              + (f"; close names: {', '.join(close)}" if close else "; see zoo.list_models() "
                                 "and timm.list_models()"))
        kwargs = parse_json_object(self.model_kwargs, "--model-kwargs")
        in_chans, num_classes = _SHAPES[self.dataset]
        try:
            with torch.device("meta"):                     # no memory, no time: just the constructor's checks
                zoo.create_model(self.model, in_chans=in_chans, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError, AssertionError) as e:
            raise ConfigError(f"--model {self.model} does not accept --model-kwargs {self.model_kwargs}: "
                              f"{str(e).splitlines()[0]}") from None
        if not self.download and not self.eval_only:
            missing = dataset_missing(self.dataset, self.data_root)
            if missing:
                raise ConfigError(f"--dataset {missing}")


def method_hparams(cfg: Config, name: str) -> dict:
    """The hyperparameters of method ``name`` from ``--method-kwargs`` (one JSON object shared by every
    ``--method``, or one object per method name; :func:`zoo.methods.resolve_method_kwargs`). Unknown
    names and hyperparameters are a :class:`ConfigError`."""
    kw = parse_json_object(cfg.method_kwargs, "--method-kwargs")
    try:
        return zoo_methods.resolve_method_kwargs(kw, list(cfg.method))[name]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--method-kwargs: {str(e).splitlines()[0]}") from None


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


def run_meta(cfg: Config, method_name: str, seed: int) -> Dict[str, Any]:
    """The options that define run ``(method_name, seed)``, checked on ``--resume``
    (:func:`zoo.engine.run_options`): without the list of methods, with this method's hyperparameters resolved,
    so adding, dropping or reordering ``--method`` entries reuses the finished runs."""
    return run_options(cfg, exclude=("method",), method=method_name, seed=seed,
                       method_kwargs=method_hparams(cfg, method_name))


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
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = lr_schedule(opt, "cosine", cfg.steps)
    x_test, y_test = data["test"]
    stream = method_batches(data, cfg.batch_size, cfg.unlabeled_batch_size, method.needs_unlabeled, seed)
    result = fit(model, opt, stream, steps=cfg.steps, device=device, out_dir=_run_dir(cfg, method_name, seed),
                 precision=cfg.precision, clip_grad=cfg.clip_grad or None, scheduler=sched, log_every=cfg.log_every,
                 eval_fn=lambda m: test_accuracy(method.eval_model(m), x_test, y_test, device),
                 eval_every=cfg.eval_every, ckpt_every=cfg.checkpoint_every, resume=cfg.resume,
                 run_meta=run_meta(cfg, method_name, seed),
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
    if path.is_dir() and (path / "checkpoint.pt").exists():
        path = path / "checkpoint.pt"
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
    model = build_model(cfg, data["train"][0].shape[1], data["num_classes"])
    payload = load_checkpoint(path, map_location="cpu")
    extra = payload.get("extra") or {}
    key = "ict_teacher" if "ict_teacher" in extra else "model"
    load_checkpoint(path, map_location="cpu", **({"model": model} if key == "model" else {}))
    if key != "model":
        model.load_state_dict(extra[key])
    model.to(device).eval()
    xe, ye = _test_subset(cfg, data)
    rob = robustness.evaluate_robustness(model, xe, ye, evaluation_names(cfg), eval_context(cfg, device, cfg.seed))
    x_test, y_test = data["test"]
    rob["acc"] = test_accuracy(model, x_test, y_test, device)["acc"]
    label = f"{cfg.model} ({path})"
    table = robustness.robustness_table({label: rob}, label="checkpoint")
    out = Path(cfg.out)
    check_finite(rob, "evaluation")
    results = {label: rob, "_meta": {"checkpoint": str(path), "weights": key,
                                     "config": config_to_dict(cfg, include_run_control=False)}}
    write_json(out / "results.json", results)
    write_text(out / "results.md", f"# Robustness of {path} ({key})\n\n{table}")
    print("\n" + table)
    return results


def summarize(cfg: Config, runs: List[dict]) -> Dict[str, Dict[str, Any]]:
    """Per method: mean of every robustness column over seeds (``std`` and per-seed values alongside)."""
    out: Dict[str, Dict[str, Any]] = {}
    for name in cfg.method:
        mine = [r["robustness"] for r in runs if r["method"] == name]
        stats = summarize_seeds(mine)
        out[name] = {k: v["mean"] for k, v in stats.items()}
        out[name]["_std"] = {k: v["std"] for k, v in stats.items()}
        out[name]["_per_seed"] = mine
        out[name]["_hparams"] = next(r["hparams"] for r in runs if r["method"] == name)
    return out


def run(cfg: Config, command: Optional[str] = None) -> dict:
    """Train every method x seed of ``cfg`` (or evaluate ``cfg.eval_only``); write the report; return results."""
    command = command or command_line(PROG, [])
    if cfg.eval_only:
        return eval_only(cfg)
    runs, wall, out = run_grid(cfg, train_one, cfg.method, "classify",
                               f"; {cfg.model} on {cfg.dataset}, {cfg.steps} steps each", command=command)
    results = summarize(cfg, runs)
    means = {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in results.items()}
    stds = {name: r["_std"] for name, r in results.items()} if cfg.seeds > 1 else None
    table = robustness.robustness_table(means, label="method", stds=stds)
    curves = robustness.plot_curves(means, out / "robustness.png",
                                    title=f"{cfg.model} on {cfg.dataset}, {cfg.steps} steps")
    seconds = {name: sum(r["seconds"] for r in runs if r["method"] == name) / cfg.seeds for name in cfg.method}
    hp = markdown_table(["method", "hyperparameters", "train s"],
                        [[n, json.dumps(r["_hparams"]), f"{seconds[n]:.0f}"] for n, r in results.items()
                         if not n.startswith("_")])
    timing = {"train_seconds": per_run(runs, key="method")}
    write_report(out, cfg, results, wall,
                 f"Classification and robustness: {cfg.model} on {cfg.dataset}, "
                 + (f"mean ± std over {cfg.seeds} seeds" if cfg.seeds > 1 else "1 seed"),
                 command, table, extra=f"\n{hp}", figures=(curves,), timing=timing)
    return results


def main(argv: Optional[List[str]] = None) -> dict:
    return run(parse_config(Config, argv, prog=PROG), command_line(PROG, argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
