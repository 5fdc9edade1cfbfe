"""Where a trained RIM agent of ``rl.distractors --encoder cells`` looks: its input attention per kind of view
cell, on seen and on novel distractors: ``python -m rl.attention RUN_FOLDER``.

    python -m rl.attention runs/distractors_cells                 # every rim-s<seed>/ agent in the folder
    python -m rl.attention runs/distractors_cells --episodes 100

With ``--encoder cells`` each RIM unit attends over ``[null; 49 view cells]`` (thesis eq. 8.1). The thesis
explains the RIM's robustness to novel distractors by this attention: "a diminished representation of the
distractor". This measures it. Each agent plays ``--episodes`` evaluation episodes per split (the harness's
evaluation layouts, actions sampled from the policy); at every step the input-attention probabilities of
the *active* units (averaged over them and over the input heads) are split by what each cell shows: the red
ball (the target), a distractor (key, ball or box of another colour or type), wall, empty floor, unseen
(hidden behind walls), and the null row. Reported: the mean probability **per cell** of each kind over
the steps where that kind is in view (uniform attention gives ``1 / 50 = 0.02``), mean ± std over seeds.
Writes ``attention.json`` and ``attention.md`` into the folder and prints the table.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from zoo.engine import (ConfigError, arg, markdown_table, parse_config, run_cli, validate_config, write_json,
                        write_text)
from zoo.engine.results import fmt_mean_std

__all__ = ["KINDS", "cell_kinds", "attention_by_kind", "summarize_folder", "attention_markdown", "main"]

KINDS = ("target", "distractor", "wall", "empty", "unseen", "null")
"""Cell kinds, in table order: the red ball, any other key/ball/box, wall, empty floor, unseen, the null row."""


def cell_kinds(obs: np.ndarray) -> np.ndarray:
    """:class:`rl.gridworld.OneHotView` observation ``(N * 20,)`` -> ``(N,)`` index into ``KINDS[:5]``."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    from .gridworld import OneHotView

    n_obj, n_col, _ = OneHotView.SIZES
    cells = np.asarray(obs).reshape(-1, sum(OneHotView.SIZES))
    obj, col = cells[:, :n_obj].argmax(1), cells[:, n_obj:n_obj + n_col].argmax(1)
    kind = np.full(len(cells), KINDS.index("unseen"))
    kind[obj == OBJECT_TO_IDX["empty"]] = KINDS.index("empty")
    kind[obj == OBJECT_TO_IDX["wall"]] = KINDS.index("wall")
    kind[np.isin(obj, [OBJECT_TO_IDX[t] for t in ("key", "ball", "box")])] = KINDS.index("distractor")
    kind[(obj == OBJECT_TO_IDX["ball"]) & (col == COLOR_TO_IDX["red"])] = KINDS.index("target")
    return kind


def attention_by_kind(model: Any, env: Any, seeds: List[int]) -> Dict[str, Any]:
    """Play one episode per layout seed with ``model`` (a RecurrentPPO agent whose actor core is a RIM reading
    one row per cell) on ``env`` (one :func:`rl.gridworld.make_distractor_env`); return the success rate and,
    per kind, the mean input-attention probability per cell of that kind (active units, heads averaged)."""
    core = model.policy.lstm_actor
    if getattr(model.policy, "input_rows", 1) <= 1:
        raise ValueError("the agent's RIM reads one input row per step (no cells to attend over); "
                         "train it with --encoder cells")
    captured: List[Any] = []
    forward, own = core.forward, core.__dict__.get("forward")             # own: an instance-level forward

    def hooked(x, hx=None, episode_starts=None, return_info=False):
        out, state, info = forward(x, hx, episode_starts, return_info=True)
        captured.append(info)
        return out, state

    core.forward = hooked
    per_kind: Dict[str, List[float]] = {k: [] for k in KINDS}
    wins = 0
    try:
        for layout in seeds:
            obs, _ = env.reset(seed=layout)
            state, start, done, ret = None, np.ones(1, bool), False, 0.0
            while not done:
                captured.clear()
                action, state = model.predict(obs[None], state=state, episode_start=start, deterministic=False)
                info = captured[-1]
                active = info.mask[-1, 0, 0].bool()                              # (U,): last step, layer 0
                p = info.input_attention[-1, 0, 0][:, active].mean(dim=(0, 1)).numpy()   # (1 + N,)
                kind = cell_kinds(obs)
                per_kind["null"].append(float(p[0]))
                for i, name in enumerate(KINDS[:-1]):
                    if (kind == i).any():
                        per_kind[name].append(float(p[1:][kind == i].mean()))
                obs, reward, terminated, truncated, _ = env.step(int(action[0]))
                ret += float(reward)
                done, start = terminated or truncated, np.zeros(1, bool)
            wins += ret > 0
    finally:
        if own is None:
            del core.forward                                                      # the class's forward again
        else:
            core.forward = own
    return {"success": wins / len(seeds), "steps": len(per_kind["null"]),
            **{k: float(np.mean(v)) if v else float("nan") for k, v in per_kind.items()}}


def summarize_folder(folder: Path, episodes: int = 50) -> Dict[str, Any]:
    """Measure every ``rim-s<seed>/agent.zip`` of an ``rl.distractors`` output folder on both splits; write
    ``attention.json`` and ``attention.md``; return the summary (per split and kind: mean, std, per seed)."""
    from sb3_contrib import RecurrentPPO

    from .distractors import EVAL_SEED, Config, env_kwargs
    from .gridworld import SPLITS, make_distractor_env

    raw = json.loads((folder / "config.json").read_text())
    cfg = Config(**{k: v for k, v in raw.items() if k in Config.__dataclass_fields__})
    runs = sorted(folder.glob("rim-s*/agent.zip"), key=_seed_of)
    torch.set_num_threads(1)
    per_seed: Dict[str, List[Dict[str, Any]]] = {s: [] for s in SPLITS}
    for agent in runs:
        model, seed = RecurrentPPO.load(agent, device="cpu"), _seed_of(agent)
        for split in SPLITS:
            env = make_distractor_env(split, **env_kwargs(cfg))
            res = attention_by_kind(model, env, [EVAL_SEED[split] + i for i in range(episodes)])
            per_seed[split].append({"seed": seed, **res})
            env.close()
    summary: Dict[str, Any] = {"episodes": episodes, "folder": str(folder)}
    for split in SPLITS:
        rows = per_seed[split]
        summary[split] = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows])),
                              "n": len(rows), "per_seed": [r[k] for r in rows]} for k in ("success", *KINDS)}
    write_json(folder / "attention.json", summary)
    write_text(folder / "attention.md", f"# RIM input attention per view cell ({folder})\n\nCommand: `python -m "
                                        f"rl.attention {folder} --episodes {episodes}`\n\n" + attention_markdown(summary))
    return summary


def attention_markdown(summary: Dict[str, Any]) -> str:
    """What the numbers are, and the table (one row per split), from a :func:`summarize_folder` summary."""
    from .gridworld import SPLITS

    header = ["split", "seeds", "success", *(f"{k} (per cell)" if k != "null" else "null row" for k in KINDS)]
    table = [[split, str(summary[split]["success"]["n"]), *(fmt_mean_std(summary[split][k]) for k in ("success", *KINDS))]
             for split in SPLITS]
    return (f"Mean input-attention probability per cell of each kind (active units; uniform = 1/50 = 0.020), "
            f"{summary['episodes']} evaluation episodes per split and seed, mean ± std over seeds:\n\n"
            + markdown_table(header, table) + "\n")


def _seed_of(agent: Path) -> int:
    """``<folder>/rim-s<seed>/agent.zip`` -> ``seed``."""
    return int(agent.parent.name.split("-s")[-1])


def _is_folder(path: str) -> Optional[str]:
    p = Path(path)
    if not (p / "config.json").is_file() or not any(p.glob("rim-s*/agent.zip")):
        return "an rl.distractors output folder with trained RIM agents (rim-s<seed>/agent.zip)"
    return None


@dataclass
class AttentionConfig:
    """Measure where trained RIM agents of rl.distractors --encoder cells put their input attention."""

    folder: str = arg("", help="an rl.distractors output folder (may be given as the first positional argument)")
    episodes: int = arg(50, help="evaluation episodes per split and seed", ge=1)

    def __post_init__(self) -> None:
        validate_config(self)
        why = _is_folder(self.folder)
        if why:
            raise ConfigError(f"--folder {self.folder!r} is not {why}")


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):                       # positional folder
        argv = ["--folder", *argv]
    cfg = parse_config(AttentionConfig, argv, prog="python -m rl.attention")
    summary = summarize_folder(Path(cfg.folder), cfg.episodes)
    print((Path(cfg.folder) / "attention.md").read_text())
    return summary


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
