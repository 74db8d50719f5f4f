"""Without the ``cli`` extra, the installed ``evcore`` command says what to install, in one line.

The command runs in a child process in which the library cannot be imported: a
``sitecustomize`` module on ``PYTHONPATH`` sets ``sys.modules[name] = None``, which is how
Python itself marks a module as unimportable (``import`` then raises ``ImportError``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EVCORE = Path(sys.executable).parent / "evcore"


def run_without(library: str, tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{library!r}] = None\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("library", ["click", "rich"])
def test_the_command_names_the_extra_in_one_line(library: str, tmp_path: Path) -> None:
    result = run_without(library, tmp_path, str(EVCORE), "top", "memory://x")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"evcore: the command line needs {library}: pip install 'evcore[cli]'"
    ]


def test_python_dash_m_evcore_says_the_same(tmp_path: Path) -> None:
    result = run_without("click", tmp_path, sys.executable, "-m", "evcore", "--help")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("pip install 'evcore[cli]'")


def test_the_command_runs_when_the_extra_is_installed(tmp_path: Path) -> None:
    result = run_without("nothing_blocked", tmp_path, str(EVCORE), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("evcore, version")


def test_an_unrelated_import_error_is_not_disguised(tmp_path: Path) -> None:
    result = run_without("evcore.cli.top", tmp_path, str(EVCORE), "--help")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "evcore[cli]" not in result.stderr
