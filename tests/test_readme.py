"""Every Python snippet of README.md runs as written.

A snippet is a fenced block whose info string starts with ``python``; each runs
in a fresh interpreter (a README reader starts from nothing), in an empty
directory, with UserWarnings as errors (the documented usage must not earn
one, e.g. torch's lr-scheduler order warning); one that imports torchrec
carries the ``torchrec`` marker.
``python torchrun=N`` runs it in N processes with
``torch.distributed.run --standalone`` (for snippets that need a process
group; marked ``multiproc``). Processes start through tests._procs, so a
timeout ends torchrun's ranks too. Python left in an unfenced or indented block fails the test, so no
snippet escapes it.
"""
import os
import re
import sys
from pathlib import Path

import pytest

from tests._procs import run

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(.*)$")
_PY_LINE = re.compile(r"^\s*(import \w|from [\w.]+ import )")


def _blocks(text):
    """[(first line number, info string, code)] of the fenced blocks, and the
    line numbers of Python-looking lines outside ```python blocks."""
    blocks, stray, info, start, body = [], [], None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line.strip()) if line.strip().startswith("```") else None
        if info is None and m:
            info, start, body = m.group(1).strip(), n + 1, []
        elif info is not None and line.strip() == "```":
            blocks.append((start, info, "\n".join(body) + "\n"))
            info = None
        elif info is not None:
            body.append(line)
            if not info.startswith("python") and _PY_LINE.match(line):
                stray.append(n)
        elif _PY_LINE.match(line):
            stray.append(n)
    assert info is None, f"README.md: the block opened at line {start - 1} is never closed"
    return blocks, stray


BLOCKS, STRAY = _blocks(README.read_text())
def _marks(info, code):
    marks = [pytest.mark.torchrec] if re.search(r"^\s*(import|from) torchrec", code, re.M) else []
    return marks + ([pytest.mark.multiproc] if "torchrun=" in info else [])


SNIPPETS = [pytest.param(n, info, code, id=f"line{n}", marks=_marks(info, code))
            for n, info, code in BLOCKS if info.split()[:1] == ["python"]]


def test_python_is_only_in_python_blocks():
    assert SNIPPETS, "README.md has no ```python snippet"
    assert not STRAY, (f"README.md lines {STRAY} look like Python outside a ```python block: "
                       "fence them so that this test runs them")


@pytest.mark.parametrize("line,info,code", SNIPPETS)
def test_snippet_runs_as_written(line, info, code, tmp_path):
    script = tmp_path / f"readme_line{line}.py"
    script.write_text(code)
    opts = dict(kv.split("=", 1) for kv in info.split()[1:])
    cmd = [sys.executable, str(script)]
    if "torchrun" in opts:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={opts['torchrun']}"]
    env = dict(os.environ, PYTHONWARNINGS="error::UserWarning", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = run(cmd, timeout=500, env=env, cwd=tmp_path)
    assert r.returncode == 0, (f"README.md snippet at line {line} failed:\n{code}\n"
                               f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-5000:]}")
