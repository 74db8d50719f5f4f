"""The repository is self-contained: tests read only files inside it, found relative to themselves.

A test that reads a file through an absolute path, or climbs above the repository root with
``Path(__file__).parents[n]``, passes on the machine that has the file and fails in a fresh clone.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Directories holding code that tests and benchmarks run.
SOURCES = ["tests", "integration", "benchmarks", "evcore", "transports"]
#: System locations a test may name without reading project data from them.
SYSTEM_PREFIXES = ("/dev/", "/proc/", "/sys/", "/tmp", "/usr/", "/bin/", "/etc/", "/var/", "/run/")


def python_files() -> list[Path]:
    return sorted(
        path
        for folder in SOURCES
        for path in (ROOT / folder).rglob("*.py")
        if ".venv" not in path.parts and "build" not in path.parts
    )


def absolute_paths(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """String constants that name an absolute location outside the system directories."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = os.path.normpath(node.value) if node.value.startswith("/") else node.value
            if (
                text.startswith("/")
                and text.count("/") >= 2
                and "\n" not in text
                and " " not in text
                and not text.startswith(SYSTEM_PREFIXES)
                and text.split("/")[1]
                and Path("/" + text.split("/")[1]).is_dir()
            ):
                yield node.lineno, text


def climbs(path: Path, tree: ast.AST) -> Iterator[tuple[int, int]]:
    """``parents[n]`` subscripts that leave the repository from ``path``."""
    depth = len(path.relative_to(ROOT).parts)  # parents[depth - 1] is ROOT
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parents"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, int)
            and node.slice.value >= depth
        ):
            yield node.lineno, node.slice.value


@pytest.mark.parametrize("path", python_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_file_outside_the_repository(path: Path) -> None:
    tree = ast.parse(path.read_text("utf-8"))
    outside = [f"line {line}: {text!r}" for line, text in absolute_paths(tree)]
    outside += [f"line {line}: parents[{n}]" for line, n in climbs(path, tree)]
    assert not outside, f"{path.relative_to(ROOT)} reads outside the repository: {outside}"


def test_the_wire_samples_are_in_the_repository() -> None:
    samples = ROOT / "tests" / "data" / "wire-samples"
    assert {path.name for path in samples.iterdir()} >= {"README.md", "redis.jsonl", "amqp.jsonl"}
    assert len((samples / "redis.jsonl").read_text("utf-8").splitlines()) == 41
    assert len((samples / "amqp.jsonl").read_text("utf-8").splitlines()) == 40
