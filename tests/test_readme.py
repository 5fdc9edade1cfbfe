"""Every snippet and command in the README (and the engine page's example) runs after the README's set-up.

Python blocks are executed in a fresh interpreter; each ``python -m tasks.*`` command's options are parsed
and validated exactly as the command would (without training); every command's ``--help`` runs.
"""
from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def blocks(path: Path, lang: str) -> List[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def commands() -> List[Tuple[str, List[str]]]:
    """``(module or script, args)`` of every ``python ...`` command in the README's bash blocks."""
    out = []
    for block in blocks(ROOT / "README.md", "bash"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.strip())
                if len(words) >= 2 and words[0] == "python" and words[1] == "-m" and words[2] not in ("pytest", "pip"):
                    out.append((words[2], words[3:]))
                elif len(words) >= 2 and words[0] == "python" and words[1].endswith(".py"):
                    out.append((words[1], words[2:]))
    return out


def test_the_readme_has_its_setup_and_tour():
    cmds = commands()
    assert ("tasks.copying", []) in cmds                              # the first command runs the main job
    assert len(blocks(ROOT / "README.md", "python")) >= 1 and len(cmds) >= 8


@pytest.mark.parametrize("module,args", [c for c in commands() if c[0].startswith("tasks.")],
                         ids=[" ".join([m, *a]) for m, a in commands() if m.startswith("tasks.")])
def test_task_commands_parse_and_validate(module, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                       # relative paths as on a fresh clone
    mod = importlib.import_module(module)
    from zoo.engine import parse_config

    parse_config(mod.Config, args)                                    # exits 2 on any invalid option


@pytest.mark.slow
@pytest.mark.parametrize("module,args", commands(), ids=[" ".join([m, *a]) for m, a in commands()])
def test_every_command_has_help(module, args):
    cmd = [sys.executable, module, "--help"] if module.endswith(".py") else [sys.executable, "-m", module, "--help"]
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "usage" in res.stdout.lower(), res.stderr[-2000:]


SNIPPETS = [(p, i, code) for p in (ROOT / "README.md", ROOT / "docs" / "engine.md")
            for i, code in enumerate(blocks(p, "python"))]


@pytest.mark.slow
@pytest.mark.parametrize("path,index,code", SNIPPETS, ids=[f"{p.name}-{i}" for p, i, _ in SNIPPETS])
def test_python_snippets_run(path, index, code, tmp_path):
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, f"{path.name} block {index} failed:\n{res.stderr[-3000:]}"
