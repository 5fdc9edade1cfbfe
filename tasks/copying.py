"""The copying task of the RIMs paper (thesis ch. 8.4.1, Table 1, Fig. 2).

Train at dormant length ``T = 50``, test at ``T = 200``: RIMs keep recalling, an LSTM does not.

    python -m tasks.copying                      # the embedded default: RIM vs LSTM, ~10 min on 2 CPU cores
    python -m tasks.copying --help               # every option
    python -m tasks.copying --models rim_lstm_seq lstm_seq --steps 20000 --seeds 3 \
        --lr 1e-3 --schedule constant --warmup 0                                      # the paper's sizes and rate

The default: ``rim_gru_seq_small`` (6 GRU units of 64, the gated residual) against ``lstm_seq_small``, 2,000
steps, each family at its own best rate and schedule in ``docs/copying.md``'s sweep (:data:`DEFAULT_LR`,
:data:`DEFAULT_SCHEDULE`), the RIM compiled.

Data format (``anirudh9119/RIMs`` ``event_based/copying_data.py``; ``shared/docs/tasks.md``): symbols
1..8, blank 0, marker 9. Input: 10 random symbols, ``T-1`` blanks, the marker, 10 blanks (``T+20``
steps). Target: blank for ``T+10`` steps, then the 10 symbols. Loss: cross-entropy over all ``T+20``
positions (the paper's number); we also report cross-entropy and per-symbol accuracy on the 10 recalled
positions, which the all-position number dilutes with blanks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import zoo
from zoo.engine import (SCHEDULES, ConfigError, RunConfig, SeededStream, arg, check_per_model, command_line,
                        fit, fmt_mean_std, lr_schedule, markdown_table, parse_config, per_model_kwargs,
                        per_model_value, per_run, precision_arg, resolve_device, run_cli, run_grid, seed_everything,
                        run_options, summarize_seeds, warmup_arg, write_report)
from zoo.models.rim_seq import model_family

BLANK, MARKER, NUM_TOKENS = 0, 9, 10
NUM_RECALL = 10
CHANCE_CE = math.log(8)       # 8 data symbols


def copying_batch(T: int, batch_size: int, generator: Optional[torch.Generator] = None,
                  n_sequence: int = NUM_RECALL) -> Tuple[torch.Tensor, torch.Tensor]:
    """One batch of the copying task.

    Returns:
        x, y: ``(batch_size, T + 20)`` int64 (``T + 2 * n_sequence`` in general). ``x`` is the symbols,
        ``T-1`` blanks, the marker and ``n_sequence`` blanks; ``y`` is blank for ``T + n_sequence`` steps,
        then the symbols.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    seq = torch.randint(1, 9, (batch_size, n_sequence), generator=generator)
    blanks = lambda n: torch.zeros(batch_size, n, dtype=torch.long)  # noqa: E731
    marker = torch.full((batch_size, 1), MARKER, dtype=torch.long)
    x = torch.cat([seq, blanks(T - 1), marker, blanks(n_sequence)], dim=1)
    y = torch.cat([blanks(T + n_sequence), seq], dim=1)
    return x, y


def curriculum_length(T: int, step: int, curriculum: Sequence[int] = ()) -> int:
    """The dormant length of training batch ``step`` (0-based) under ``curriculum = (T0, K)``: it grows
    linearly from ``T0`` to ``T`` over the first ``K`` batches, ``round(T0 + (T - T0) * step / K)``, then
    stays at ``T``. An empty curriculum gives ``T`` throughout."""
    if not curriculum:
        return T
    t0, k = curriculum
    return T if step >= k else max(1, round(t0 + (T - t0) * step / k))


def copying_batches(T: int, batch_size: int, seed: int, n_sequence: int = NUM_RECALL,
                    curriculum: Sequence[int] = ()) -> SeededStream:
    """An endless stream of fresh training batches (the paper samples new sequences every step); its
    position is saved in checkpoints, so a resumed run sees the same batches. With ``curriculum = (T0, K)``
    the dormant length of batch ``s`` is :func:`curriculum_length` ``(T, s, curriculum)``."""
    # SeededStream counts a batch before drawing it, so batch s is drawn with count == s + 1; the count is
    # part of the stream's checkpointed state, which makes a resumed curriculum exact.
    stream = SeededStream(lambda g: copying_batch(curriculum_length(T, stream.count - 1, curriculum),
                                                  batch_size, g, n_sequence), seed)
    return stream


def copying_metrics(logits: torch.Tensor, y: torch.Tensor, n_sequence: int = NUM_RECALL) -> Dict[str, float]:
    """``ce_all`` over all positions, ``ce_recall`` and ``acc_recall`` over the last ``n_sequence`` (the recall)."""
    ce_all = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    rl, ry = logits[:, -n_sequence:], y[:, -n_sequence:]
    ce_recall = F.cross_entropy(rl.flatten(0, 1), ry.flatten())
    acc = (rl.argmax(-1) == ry).float().mean()
    return {"ce_all": float(ce_all), "ce_recall": float(ce_recall), "acc_recall": float(acc)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, T: int, num: int, seed: int, device: torch.device,
             n_sequence: int = NUM_RECALL, chunk: int = 250) -> Dict[str, float]:
    """Metrics on ``num`` fixed test sequences of dormant length ``T`` (same sequences for every model)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    sums = {"ce_all": 0.0, "ce_recall": 0.0, "acc_recall": 0.0}
    done = 0
    while done < num:
        n = min(chunk, num - done)
        x, y = copying_batch(T, n, g, n_sequence)
        m = copying_metrics(model(x.to(device)).float().cpu(), y, n_sequence)
        for k in sums:
            sums[k] += m[k] * n
        done += n
    model.train(was_training)
    return {k: v / num for k, v in sums.items()}


def _check_model(name: str) -> Optional[str]:
    if zoo.is_zoo_model(name) and name in zoo.list_models("*seq*"):
        return None
    return f"a registered sequence model: {', '.join(zoo.list_models('*seq*'))}"


@dataclass
class Config(RunConfig):
    """Copying task (thesis ch. 8, Table 1): train at dormant length T, test at longer T, RIMs vs LSTM."""

    models: List[str] = arg(["rim_gru_seq_small", "lstm_seq_small"],
                            unique=True, help="registered sequence models to compare (zoo.list_models('*seq*'))",
                            check=lambda names: next(filter(None, map(_check_model, names)), None))
    train_len: int = arg(50, help="dormant length T in training (sequence length T+20)", ge=1)
    test_lens: List[int] = arg([50, 200], help="dormant lengths to test", ge=1)
    symbols: int = arg(NUM_RECALL, help="symbols to copy per sequence (paper: 10)", ge=1)
    steps: int = arg(2000, help="optimizer steps per model and seed", ge=1)
    batch_size: int = arg(64, help="training batch size", ge=1)
    lr: List[float] = arg([], help="peak Adam learning rate: one for every model, or one per --models entry in the "
                                   "same order; none (the default): 2e-3 for RIM models, 3e-3 for the others (each "
                                   "family's best in docs/copying.md's sweep; paper: 1e-3)", gt=0, allow_empty=True)
    schedule: List[str] = arg([], choices=SCHEDULES, help="learning-rate schedule, cosine (decay to 0 at --steps "
                                                          "after --warmup) or constant (paper): one for every model or "
                                                          "one per --models entry; none (the default): cosine for RIM "
                                                          "models, constant for the others", allow_empty=True)
    warmup: float = warmup_arg(0.05)
    curriculum: List[int] = arg([], help="T0 K: the training dormant length grows linearly from T0 to --train-len "
                                         "over the first K steps (empty: none, --train-len from the start)",
                                allow_empty=True, ge=1)
    clip_grad: float = arg(1.0, help="gradient-norm clip (paper: 1.0; 0: none)", ge=0)
    precision: str = precision_arg()
    skip_spikes: float = arg(0.0, help="skip an optimizer step whose gradient norm exceeds this many times the median "
                                       "of the last 100 steps' (0: never; docs/engine.md)", ge=0)
    compile: bool = arg(True, help="run the RIM time step through torch.compile (--no-compile: eager; the first run "
                                   "compiles for about a minute, later runs load the cache; eager where compiling "
                                   "fails)")
    eval_size: int = arg(1000, help="test sequences per dormant length", ge=1)
    eval_every: int = arg(250, help="evaluate at train_len every this many steps (0: only at the end)", ge=0)
    model_kwargs: str = arg("{}", help='JSON object of extra model kwargs, shared (\'{"k_active": 3}\') or per '
                                       'model (\'{"*": {...}, "rim_lstm_seq": {"k_active": 3}}\')')
    out: str = arg("runs/copying", help="output folder", path="out_dir")

    def check(self) -> None:
        check_per_model(self.lr, self.models, "--lr")
        check_per_model(self.schedule, self.models, "--schedule")
        if self.curriculum and len(self.curriculum) != 2:
            raise ConfigError(f"--curriculum takes two numbers, T0 K (start length, steps), got "
                              f"{' '.join(map(str, self.curriculum))}")
        for name in self.models:                   # build on the meta device: no memory, no time
            try:
                with torch.device("meta"):
                    zoo.create_model(name, num_tokens=NUM_TOKENS, num_classes=NUM_TOKENS,
                                     **model_kwargs(self, name))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"--model-kwargs {self.model_kwargs} do not fit {name}: {e}") from None


def model_kwargs(cfg: Config, name: str) -> dict:
    """The kwargs of model ``name``: ``compile=cfg.compile``, then ``--model-kwargs`` (which may override it)."""
    return {"compile": cfg.compile, **per_model_kwargs(cfg.model_kwargs, cfg.models)[name]}


#: the defaults without ``--lr`` / ``--schedule``, by family (RIM models, and the LSTM / GRU baselines): each
#: family's best at the default budget in ``docs/copying.md``'s sweep (the LSTM falls behind under cosine decay)
DEFAULT_LR = {"rim": 2e-3, "baseline": 3e-3}
DEFAULT_SCHEDULE = {"rim": "cosine", "baseline": "constant"}


def model_lr(cfg: Config, name: str) -> float:
    """The peak learning rate of model ``name``: the single ``--lr``, the one at ``name``'s place in
    ``--models``, or without ``--lr`` :data:`DEFAULT_LR` of its family."""
    return per_model_value(cfg.lr, cfg.models, name, DEFAULT_LR[model_family(name)])


def model_schedule(cfg: Config, name: str) -> str:
    """The learning-rate schedule of model ``name``, as :func:`model_lr` (:data:`DEFAULT_SCHEDULE`)."""
    return per_model_value(cfg.schedule, cfg.models, name, DEFAULT_SCHEDULE[model_family(name)])


def run_meta(cfg: Config, model_name: str, seed: int) -> Dict[str, Any]:
    """The options that define run ``(model_name, seed)``, checked on ``--resume``
    (:func:`zoo.engine.run_options`): without the list of models, with this model's learning rate, schedule
    and kwargs resolved, so adding, dropping or reordering ``--models`` entries reuses the finished runs."""
    return run_options(cfg, exclude=("models",), model=model_name, seed=seed, lr=model_lr(cfg, model_name),
                       schedule=model_schedule(cfg, model_name), model_kwargs=model_kwargs(cfg, model_name))


def _run_dir(cfg: Config, model_name: str, seed: int) -> Path:
    return Path(cfg.out) / model_name / f"seed{seed}"


def train_one(cfg: Config, model_name: str, seed: int, position: int = 0) -> dict:
    """Train one (model, seed) and test it at every ``test_lens``; runs in a worker process."""
    device = resolve_device(cfg.device)
    seed_everything(seed)
    model = zoo.create_model(model_name, num_tokens=NUM_TOKENS, num_classes=NUM_TOKENS,
                             **model_kwargs(cfg, model_name)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=model_lr(cfg, model_name))

    def step_fn(m, batch):
        x, y = batch
        logits = m(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        return loss, {}

    eval_seed = 10_000 + seed
    result = fit(model, optimizer, copying_batches(cfg.train_len, cfg.batch_size, seed, cfg.symbols, cfg.curriculum),
                 step_fn, steps=cfg.steps, device=device, out_dir=_run_dir(cfg, model_name, seed),
                 clip_grad=cfg.clip_grad, skip_spikes=cfg.skip_spikes or None, log_every=cfg.log_every,
                 precision=cfg.precision,
                 scheduler=lr_schedule(optimizer, model_schedule(cfg, model_name), cfg.steps,
                                       int(cfg.warmup * cfg.steps)),
                 eval_fn=lambda m: evaluate(m, cfg.train_len, min(cfg.eval_size, 500), eval_seed, device,
                                            cfg.symbols),
                 eval_every=cfg.eval_every, ckpt_every=cfg.checkpoint_every, resume=cfg.resume,
                 run_meta=run_meta(cfg, model_name, seed),
                 desc=f"{model_name} s{seed}", progress=cfg.progress, position=position)
    tests = {str(T): evaluate(model, T, cfg.eval_size, eval_seed + T, device, cfg.symbols) for T in cfg.test_lens}
    out = {"model": model_name, "seed": seed, "seconds": result.seconds, "tests": tests,
           "curve": result.eval_history}
    inner = getattr(model, "core", None)
    if isinstance(inner, zoo.RIM):
        out["activation"] = activation_pattern(model, max(cfg.test_lens), eval_seed, device, cfg.symbols)
    return out


@torch.no_grad()
def activation_pattern(model, T: int, seed: int, device: torch.device, n_sequence: int = NUM_RECALL
                       ) -> List[List[float]]:
    """The active-unit mask of the first layer over one test sequence: ``U`` lists of ``T+20`` bits."""
    model.eval()
    x, _ = copying_batch(T, 1, torch.Generator().manual_seed(seed), n_sequence)
    _, _, info = model.forward_core(x.to(device), return_info=True)
    return info.mask[:, 0, 0].T.cpu().tolist()                          # (U, T+20)


def summarize(cfg: Config, runs: List[dict]) -> dict:
    """Per model and tested T: mean of each metric over seeds, with std and per-seed values."""
    results: dict = {}
    for name in cfg.models:
        mine = [r for r in runs if r["model"] == name]
        results[name] = {}
        for T in map(str, cfg.test_lens):
            stats = summarize_seeds([r["tests"][T] for r in mine])
            results[name][T] = {k: v["mean"] for k, v in stats.items()}
            results[name][T]["std"] = {k: v["std"] for k, v in stats.items()}
            results[name][T]["per_seed"] = [r["tests"][T] for r in mine]
    return results


def results_table(cfg: Config, runs: List[dict]) -> str:
    header = ["model", "T", "CE all", "CE recall", "acc recall", "seeds"]
    rows = []
    for name in cfg.models:
        mine = [r for r in runs if r["model"] == name]
        for T in map(str, cfg.test_lens):
            stats = summarize_seeds([r["tests"][T] for r in mine])
            tag = " (train)" if int(T) == cfg.train_len else ""
            rows.append([name, T + tag, fmt_mean_std(stats["ce_all"]), fmt_mean_std(stats["ce_recall"]),
                         fmt_mean_std(stats["acc_recall"]), len(mine)])
    rows.append(["chance", "any", "-", f"{CHANCE_CE:.3f}", f"{1 / 8:.3f}", "-"])
    return markdown_table(header, rows)


def plot_activations(runs: List[dict], cfg: Config, path: Path) -> Optional[Path]:
    """Thesis Fig. 2: which units are active at each step (black active, white inactive)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rim_runs = [r for r in runs if "activation" in r and r["seed"] == cfg.seed]
    if not rim_runs:
        return None
    T = max(cfg.test_lens)
    units = len(rim_runs[0]["activation"])
    fig, axes = plt.subplots(len(rim_runs), 1, figsize=(12, len(rim_runs) * (1.8 + 0.4 * units)), squeeze=False)
    for ax, r in zip(axes[:, 0], rim_runs):
        mask = np.asarray(r["activation"])
        ax.imshow(mask, aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        n = cfg.symbols
        ax.axvspan(-0.5, n - 0.5, color="tab:blue", alpha=0.15, label="symbols")
        ax.axvline(n + T - 1, color="tab:red", lw=1, label="marker")
        ax.axvspan(n + T - 0.5, 2 * n + T - 0.5, color="tab:green", alpha=0.15, label="recall")
        ax.set_yticks(range(mask.shape[0]), [f"unit {i}" for i in range(mask.shape[0])])
        ax.set_title(f"{r['model']}: active units on a T={T} test sequence (trained at T={cfg.train_len})")
        ax.set_xlabel("time step")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), fontsize=8, ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(runs: List[dict], cfg: Config, path: Path) -> Path:
    """Recall accuracy at the training length over training, one line per (model, seed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(cfg.models):
        for r in (r for r in runs if r["model"] == name):
            steps = [h["step"] for h in r["curve"]]
            ax.plot(steps, [h["acc_recall"] for h in r["curve"]], color=f"C{i}", alpha=0.8,
                    label=name if r["seed"] == cfg.seed else None)
    ax.axhline(1 / 8, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("step")
    ax.set_ylabel(f"recall accuracy at T={cfg.train_len}")
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


PROG = "python -m tasks.copying"


def run(cfg: Config, command: Optional[str] = None) -> dict:
    """Train and test every model x seed of ``cfg``; write the report; return ``results``."""
    command = command or command_line(PROG, [])
    runs, wall, out = run_grid(cfg, train_one, cfg.models, "copying",
                               f"; train T={cfg.train_len}, test T={cfg.test_lens}, {cfg.steps} steps each",
                               command=command)

    table = results_table(cfg, runs)
    results = summarize(cfg, runs)
    act = plot_activations(runs, cfg, out / "activations.png")
    curves = plot_curves(runs, cfg, out / "curves.png")
    timing = {"train_seconds": per_run(runs)}
    write_report(out, cfg, results, wall, f"Copying: train T={cfg.train_len}, test T={cfg.test_lens}",
                 command, table, figures=(curves, act), timing=timing)
    return results


def main(argv: Optional[List[str]] = None) -> dict:
    return run(parse_config(Config, argv, prog=PROG), command_line(PROG, argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
