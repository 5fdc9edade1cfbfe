"""Every snippet and command in the README (and the engine page's example) runs after the README's set-up.

Python blocks are executed in a fresh interpreter; each ``python -m tasks.*`` command's options are parsed
and validated exactly as the command would (without training); every command's ``--help`` runs. Every
``python -m tasks.* / rl.*`` command printed in ``docs/`` is parsed and validated too (docs must not drift
from the CLIs they document).
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


def commands(page: Path = ROOT / "README.md") -> List[Tuple[str, List[str]]]:
    """``(module or script, args)`` of every ``python -m ...`` / ``python x.py`` command in a page's bash blocks
    (line continuations joined, comments and ``/usr/bin/time`` dropped; lines with shell variables skipped)."""
    out = []
    for block in blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("#") or "$" in line:
                continue
            for part in line.split("&&"):
                words = shlex.split(part.strip())
                if words[:1] == ["/usr/bin/time"]:
                    words = words[1:]
                if len(words) >= 3 and words[:2] == ["python", "-m"] and words[2] not in ("pytest", "pip"):
                    out.append((words[2], words[3:]))
                elif len(words) >= 2 and words[0] == "python" and words[1].endswith(".py"):
                    out.append((words[1], words[2:]))
    return out


class _Parsed(Exception):
    """Raised in place of running the command once its options have been parsed and validated."""


def parse_error(module: str, args: List[str], monkeypatch, capsys) -> str:
    """Run ``python -m module args`` up to its options: the command's ``main`` parses and validates them (its
    positional arguments mapped as the CLI maps them), then stops before any work. Returns the one-line error
    it exits with, ``""`` when the options are valid (or for ``--help``)."""
    mod = importlib.import_module(module)
    real = mod.parse_config                                           # each CLI's main parses first

    def parse_only(*a, **kw):
        real(*a, **kw)
        raise _Parsed

    monkeypatch.setattr(mod, "parse_config", parse_only)
    try:
        mod.main(list(args))
    except _Parsed:
        return ""
    except SystemExit as e:
        return "" if e.code == 0 and "--help" in args else capsys.readouterr().err or f"exit {e.code}"
    raise AssertionError(f"python -m {module} ran without parsing its options through parse_config")


def test_the_readme_has_its_setup_and_tour():
    cmds = commands()
    assert ("tasks.copying", []) in cmds                              # the first command runs the main job
    assert len(blocks(ROOT / "README.md", "python")) >= 1 and len(cmds) >= 8


@pytest.mark.parametrize("module,args", [c for c in commands() if c[0].startswith("tasks.")],
                         ids=[" ".join([m, *a]) for m, a in commands() if m.startswith("tasks.")])
def test_task_commands_parse_and_validate(module, args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                                       # relative paths as on a fresh clone
    assert parse_error(module, args, monkeypatch, capsys) == ""      # any invalid option fails


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


# The only reasons a documented command may fail to validate here: it names an earlier run's output, the
# full MNIST files, or a GPU, none of which a fresh CPU checkout has. Anything else (an unknown or renamed
# option, a bad value or combination) fails the test.
ENVIRONMENT_ERRORS = ("does not exist", "output folder", "needs the IDX files", "no CUDA device")


def docs_commands() -> List[Tuple[str, str, List[str]]]:
    """``(page, module, args)`` of every ``python -m tasks.* / rl.*`` command in ``docs/*.md``."""
    return [(page.name, m, a) for page in sorted((ROOT / "docs").glob("*.md")) for m, a in commands(page)
            if m.split(".")[0] in ("tasks", "rl")]


DOCS_COMMANDS = docs_commands()


def test_docs_print_cli_commands():
    assert len(DOCS_COMMANDS) >= 100 and {m for _, m, _ in DOCS_COMMANDS} >= {"tasks.copying", "rl.train"}


@pytest.mark.parametrize("page,module,args", DOCS_COMMANDS,
                         ids=[f"{p}: {' '.join([m, *a])}"[:150] for p, m, a in DOCS_COMMANDS])
def test_docs_commands_parse_and_validate(page, module, args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = parse_error(module, args, monkeypatch, capsys)
    assert not err or any(r in err for r in ENVIRONMENT_ERRORS), f"{page}: python -m {module} {' '.join(args)}: {err}"
